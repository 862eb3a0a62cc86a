"""What every runner session shares: the optional parts of the session interface, with their defaults.

A session (see ``runners/__init__.py``) must define ``input_shape``, ``run``, ``time_once`` and ``close``; it inherits
from `Session` the parts a runtime may not offer.
"""

from __future__ import annotations


class Session:
    def planned_memory_bytes(self) -> int | None:
        """Memory the runtime planned for activations, when it says (ExecuTorch's Python bindings do not)."""
        return None

    def write_etdump(self) -> None:
        """Write the per-op trace requested at open time; only ExecuTorch sessions trace (ETDump)."""
