"""Errors a user can act on. The CLI prints them as one line and exits non-zero; anything else is a bug.

Lives in runtime/ (no torch) so that the device-side code and the toolkit share one base class.
"""


class UserError(Exception):
    """Bad input, a missing optional component, or a refused action (e.g. overwriting a file)."""
