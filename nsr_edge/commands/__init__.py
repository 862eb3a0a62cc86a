"""One module per `nsr-edge` sub-command group (see cli.py)."""
