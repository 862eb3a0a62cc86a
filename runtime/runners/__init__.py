"""Artifact runners: each runs one target's artifact with that target's own runtime, from numpy arrays.

A runner module defines a `session.Session` subclass with its runtime's own calls (``_load``: open the artifact's
method and read its fixed input/output shapes; ``_execute``: one call on one fixed-shape input) and exposes it as
``open_session(artifact_path, method, threads, etdump=None, debug_buffer=None, debug_buffer_size=0)``. The base
owns the rest: ``run(batch)`` (any number of tiles, split into the method's fixed batch), ``time_once(x)``,
``close()`` / context manager, ``planned_memory_bytes()`` and the per-op trace (ETDump) refusal where the runtime has
none. Runner modules import their runtime lazily inside ``_load``, so this package imports without torch; the runtime
itself always runs in a child process (`child.RunnerProcess`) so that a native abort becomes a one-line error.

Adding a target's runner: one module here (a `Session` subclass, ``open_session = ThatSession``) and one line in
`RUNNERS`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import UserError

RUNNERS: dict[str, str] = {
    "executorch": "nsr_edge.runtime.runners.executorch_runner",
    "coreml": "nsr_edge.runtime.runners.coreml_runner",
    "dispatch": "nsr_edge.runtime.runners.dispatch_runner",
    "onnxruntime": "nsr_edge.runtime.runners.onnxruntime_runner",
    "litert": "nsr_edge.runtime.runners.litert_runner",
}


def get_runner(name: str) -> ModuleType:
    if name not in RUNNERS:
        raise UserError(f"no runner for {name!r} artifacts; known: {', '.join(RUNNERS)}")
    return importlib.import_module(RUNNERS[name])


__all__ = ["RUNNERS", "get_runner"]
