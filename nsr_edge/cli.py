"""`nsr-edge` command line.

Each sub-command lives in its own module under `nsr_edge/commands/` with an ``add_parsers(sub)`` function that
registers its parser(s) and handler(s); adding a command is one new module and one line in COMMAND_MODULES. Heavy
libraries are imported inside handlers so that `nsr-edge --help` stays fast. A `UserError` becomes one line on
stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .errors import UserError

COMMAND_MODULES = (
    "catalog",  # models, info
    "import_checkpoint",
    "train",
    "evaluate",  # eval, zoo, upscale, denoise, deblock
    "visualize",  # visualize-routing
    "artifacts",  # convert, validate, profile
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nsr-edge",
        description="Neural Sparse Representation restoration models: train, convert, quantize, validate, profile.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"nsr_edge.commands.{name}").add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"nsr-edge {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nsr-edge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
