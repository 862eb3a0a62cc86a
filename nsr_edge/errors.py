"""The one error type the CLI turns into a one-line message (no traceback) and a non-zero exit."""

from nsr_edge.runtime.errors import UserError

__all__ = ["UserError"]
