"""`nsr-edge` command line.

Each sub-command lives in its own module under `nsr_edge/commands/` with an ``add_parsers(sub)`` function that
registers its parser(s) and handler(s); adding a command is one new module and one line in COMMAND_MODULES. Heavy
libraries are imported inside handlers so that `nsr-edge --help` stays fast. A `UserError` becomes one line on
stderr and exit code 2; anything else is a bug and keeps its traceback. A bad option is the same: one line
(``nsr-edge <command>: error: <message>``, no usage block) and exit code 2, returned by `main` (not raised).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import sys
import threading
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
    "app_assets",  # export-app-assets
)


class ArgumentError(Exception):
    """A command line argparse refused; `main` prints it as one line and returns 2."""


class NsrArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``nsr-edge convert: error: --tile must be an integer in 24..4096, got 0``
    instead of a usage block plus ``argument --tile: ...``. Sub-parsers inherit the class."""

    def error(self, message: str):  # type: ignore[override]
        m = re.match(r"argument (\S+?)(?:/\S+)?: (must .*)$", message)
        if m:  # our range-checked types (commands/_common.py) say "must be ...": "--tile must be ..."
            message = f"{m.group(1)} {m.group(2)}"
        elif message.startswith("argument "):
            message = message[len("argument "):]
        raise ArgumentError(f"{self.prog}: error: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = NsrArgumentParser(
        prog="nsr-edge",
        description="Neural Sparse Representation restoration models: train, convert, quantize, validate, profile.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"nsr_edge.commands.{name}").add_parsers(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill PID`), handled as Ctrl-C is: checkpoints saved, partial outputs and remote folders removed. A
    command started in the background by a non-interactive shell ignores SIGINT (POSIX), so SIGTERM is how such a
    run (a long `train`) is stopped cleanly."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except ArgumentError as e:
        print(str(e).replace("\n", " "), file=sys.stderr)
        return 2
    in_main_thread = threading.current_thread() is threading.main_thread()  # where signal handlers can be set
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"nsr-edge {args.command}: error: {e}", file=sys.stderr)
        return 143 if isinstance(e.__context__, Terminated) else 2
    except KeyboardInterrupt as e:
        print(f"nsr-edge {args.command}: {'terminated' if isinstance(e, Terminated) else 'interrupted'}",
              file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except BrokenPipeError:  # `nsr-edge zoo --json | head`: the reader left; nothing to report
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
