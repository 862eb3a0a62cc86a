"""The base of every runner session: what does not depend on the runtime.

A runner is its runtime's own calls and little else. A subclass implements

- ``_load(path, method)``: open the artifact's ``method`` and set ``input_shape`` (the method's fixed NCHW input,
  batch included) and ``output_shape`` (may also set ``threads`` to what the runtime reports);
- ``_execute(x)``: one call of the method on one input of exactly ``input_shape``, already converted by
  ``_prepare``; returns the runtime's output;

and may override ``_prepare(x)`` (numpy float32 -> the runtime's input type, done outside the timed call),
``_finish(out)`` (the runtime's output -> numpy float32; also outside the timed call), ``_release()`` (drop the
runtime's objects), ``planned_memory_bytes()``, and, for a runtime with per-op tracing, set ``per_op_trace = True``
and implement ``write_etdump()``.

`Session` owns the rest: batching (``run`` splits any number of tiles into the method's fixed batch, padding the
last batch with copies of its last tile, and concatenates), timing (``time_once``: ``perf_counter`` around one
``_execute``), refusing a per-op trace where the runtime has none, ``close`` (idempotent) and the context manager.
A runner module exposes the class itself as its factory, ``open_session = TheSession`` (the signature
``(path, method="forward", threads=1, etdump=None, debug_buffer=None, debug_buffer_size=0)`` that
`child.RunnerProcess` calls); a session whose loading fails is closed before the error propagates.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError


class Session:
    kind = "this"  # the artifact kind, in messages ("ExecuTorch", "ONNX Runtime", ...)
    per_op_trace = False  # True where the runtime writes a per-op trace (ExecuTorch's ETDump)
    timing_refusal: str | None = None  # set (to the reason) where time_once cannot measure anything meaningful

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]

    def __init__(self, path: str, method: str = "forward", threads: int = 1, etdump: str | None = None,
                 debug_buffer: str | None = None, debug_buffer_size: int = 0) -> None:
        if etdump and not self.per_op_trace:
            raise UserError(f"per-op tracing (ETDump) is not available for {self.kind} artifacts; "
                            "profile without --per-op")
        self.path = Path(path)
        self.method_name = method
        self.threads = int(threads or 0)
        self.etdump, self.debug_buffer, self.debug_buffer_size = etdump, debug_buffer, int(debug_buffer_size or 0)
        self._closed = False
        try:
            self._load(str(path), method)
        except BaseException:
            self.close()  # nothing half-open is left behind (temporary folders, runtime objects)
            raise

    # -- what a runtime implements
    def _load(self, path: str, method: str) -> None:
        raise NotImplementedError

    def _execute(self, x: Any) -> Any:
        raise NotImplementedError

    def _prepare(self, x: np.ndarray) -> Any:
        return x

    def _finish(self, out: Any) -> np.ndarray:
        return np.asarray(out, dtype=np.float32)

    def _release(self) -> None:
        """Drop the runtime's objects (called once, by `close`)."""

    # -- shared
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Outputs for any number of input tiles: one call per fixed-size batch, the last one padded."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != len(self.input_shape) or tuple(batch.shape[1:]) != tuple(self.input_shape[1:]):
            raise UserError(f"input tiles {tuple(batch.shape[1:])} do not match the {self.kind} artifact's "
                            f"{tuple(self.input_shape[1:])} (method {self.method_name})")
        b = int(self.input_shape[0])
        outs = []
        for i in range(0, len(batch), b):
            chunk = batch[i : i + b]
            n = len(chunk)
            if n < b:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - n, axis=0)])
            outs.append(self._finish(self._execute(self._prepare(chunk)))[:n])
        return np.concatenate(outs)

    def time_once(self, x: np.ndarray) -> float:
        """Seconds of one call on ``x`` (one input of ``input_shape``; converted before the clock starts)."""
        if self.timing_refusal:
            raise UserError(self.timing_refusal)
        prepared = self._prepare(np.ascontiguousarray(x, dtype=np.float32))
        start = time.perf_counter()
        self._execute(prepared)
        return time.perf_counter() - start

    def planned_memory_bytes(self) -> int | None:
        """Memory the runtime planned for activations, when it says (none of our runtimes' Python APIs do)."""
        return None

    def write_etdump(self) -> None:
        """Write the per-op trace requested at open time (runtimes with ``per_op_trace`` override this)."""
        raise UserError(f"per-op tracing (ETDump) is not available for {self.kind} artifacts")

    def close(self) -> None:
        if not getattr(self, "_closed", True):
            self._closed = True
            self._release()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["Session"]
