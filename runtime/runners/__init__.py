"""Artifact runners: each runs one target's artifact with that target's own runtime, from numpy arrays.

A runner module defines ``open_session(artifact_path, method, threads, etdump=None) -> Session`` where a session has
``input_shape`` (the method's fixed NCHW input), ``run(batch) -> batch`` (numpy float32 in and out, one call per tile
when the method has batch 1), ``time_once(x) -> seconds``, ``close()``, and ``planned_memory_bytes()`` /
``write_etdump()`` (defaults in `session.Session`, which every session subclasses). Runner modules
import their runtime lazily inside functions, so this package imports without torch; the runtime itself always runs in
a child process (`child.RunnerProcess`) so that a native abort becomes a one-line error.

Adding a target's runner: one module here and one line in `RUNNERS`.
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
}


def get_runner(name: str) -> ModuleType:
    if name not in RUNNERS:
        raise UserError(f"no runner for {name!r} artifacts; known: {', '.join(RUNNERS)}")
    return importlib.import_module(RUNNERS[name])


__all__ = ["RUNNERS", "get_runner"]
