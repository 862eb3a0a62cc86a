"""Run a ``.pte`` with the ExecuTorch Python runtime (XNNPACK + portable + quantized kernels).

The pybindings link libtorch and take torch tensors, so torch is imported here, lazily, inside `open_session`: the
module itself imports without torch. Use it through `child.RunnerProcess`, never in the main process: a malformed
program or a kernel assertion aborts the whole process.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import UserError
from .session import Session


class ExecuTorchSession(Session):
    def __init__(self, path: str, method: str, threads: int, etdump: str | None = None,
                 debug_buffer: str | None = None, debug_buffer_size: int = 0) -> None:
        import torch  # noqa: F401  (the pybindings need libtorch loaded first)
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        try:
            import executorch.kernels.quantized  # noqa: F401  (int8 ops outside the delegate)
        except ImportError:
            pass
        if threads and threads > 0:
            portable_lib._unsafe_reset_threadpool(int(threads))
        self.threads = int(portable_lib._threadpool_get_thread_count())
        self._torch = torch
        self.etdump, self.debug_buffer = etdump, debug_buffer
        data = Path(path).read_bytes()
        try:
            self.program = Runtime.get().load_program(
                data, enable_etdump=etdump is not None, debug_buffer_size=debug_buffer_size
            )
        except Exception as e:  # noqa: BLE001
            raise UserError(f"{path}: not a loadable ExecuTorch program ({str(e).splitlines()[0][:160]})") from None
        if method not in self.program.method_names:
            raise UserError(f"{path}: has no method {method!r} (it has {', '.join(sorted(self.program.method_names))})")
        self.method = self.program.load_method(method)
        meta = self.program.metadata(method)
        if meta.num_inputs() != 1 or meta.num_outputs() != 1:
            raise UserError(f"{path}: method {method} has {meta.num_inputs()} inputs / {meta.num_outputs()} outputs, "
                            "expected one image in and one out")
        self.input_shape = tuple(int(s) for s in meta.input_tensor_meta(0).sizes())
        self.output_shape = tuple(int(s) for s in meta.output_tensor_meta(0).sizes())
        self._meta = meta

    def _execute(self, x: np.ndarray) -> np.ndarray:
        out = self.method.execute([self._torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))])
        return out[0].numpy().copy()

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        b = self.input_shape[0]
        if tuple(batch.shape[1:]) != self.input_shape[1:]:
            raise UserError(f"input tiles {batch.shape[1:]} do not match the program's {self.input_shape[1:]}")
        outs = [self._execute(batch[i : i + b]) for i in range(0, len(batch), b)]
        return np.concatenate(outs)

    def time_once(self, x: np.ndarray) -> float:
        t = self._torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        start = time.perf_counter()
        self.method.execute([t])
        return time.perf_counter() - start

    def write_etdump(self) -> None:
        if self.etdump:
            self.program.write_etdump_result_to_file(self.etdump, self.debug_buffer)

    def close(self) -> None:
        self.method = None
        self.program = None


def open_session(path: str, method: str = "forward", threads: int = 1, etdump: str | None = None,
                 debug_buffer: str | None = None, debug_buffer_size: int = 0) -> ExecuTorchSession:
    return ExecuTorchSession(path, method, threads, etdump, debug_buffer, debug_buffer_size)
