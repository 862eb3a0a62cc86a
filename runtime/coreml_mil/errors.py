"""The errors of the MIL reference evaluator: one base class for every package it cannot read or run, and one for
an op it has no kernel for (so callers can tell "unsupported" from "broken")."""

from __future__ import annotations

from ..errors import UserError


class MilError(UserError):
    """A package this evaluator cannot read or run (malformed, unsupported feature, wrong inputs)."""


class MilUnsupportedOpError(MilError):
    """An op type the evaluator has no kernel for."""
