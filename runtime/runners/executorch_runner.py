"""Run a ``.pte`` with the ExecuTorch Python runtime (XNNPACK + portable + quantized kernels).

The pybindings link libtorch and take torch tensors, so torch is imported here, lazily, inside `load_program`: the
module itself imports without torch. Use it through `child.RunnerProcess`, never in the main process: a malformed
program or a kernel assertion aborts the whole process.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import UserError
from .session import Session


def load_program(path: str, threads: int, etdump: bool = False, debug_buffer_size: int = 0) -> tuple[Any, Any, int]:
    """``(torch, program, threads)``: the ExecuTorch runtime set up (kernels registered, thread pool sized) and the
    ``.pte`` at ``path`` loaded; `UserError` when it does not load. Shared by every ExecuTorch-based runner."""
    import torch  # the pybindings need libtorch loaded first
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    try:
        import executorch.kernels.quantized  # noqa: F401  (int8 ops outside the delegate)
    except ImportError:
        pass
    if threads and threads > 0:
        portable_lib._unsafe_reset_threadpool(int(threads))
    with open(path, "rb") as f:
        data = f.read()
    try:
        program = Runtime.get().load_program(data, enable_etdump=etdump, debug_buffer_size=debug_buffer_size)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path}: not a loadable ExecuTorch program ({str(e).splitlines()[0][:160]})") from None
    return torch, program, int(portable_lib._threadpool_get_thread_count())


def load_method(program: Any, path: str, method: str) -> Any:
    """``program``'s method ``method``; `UserError` naming the runtime's error code when it does not load."""
    try:
        return program.load_method(method)
    except Exception as e:  # noqa: BLE001 - the pybindings raise RuntimeError("Failed to load method ..., error 0x..")
        raise UserError(f"{path}: method {method!r} does not load in this ExecuTorch runtime "
                        f"({str(e).splitlines()[0][:160]})") from None


class ExecuTorchSession(Session):
    kind = "ExecuTorch"
    per_op_trace = True
    program: Any = None
    _method: Any = None

    def _load(self, path: str, method: str) -> None:
        self._torch, self.program, self.threads = load_program(path, self.threads, self.etdump is not None,
                                                               self.debug_buffer_size)
        if method not in self.program.method_names:
            raise UserError(f"{path}: has no method {method!r} (it has {', '.join(sorted(self.program.method_names))})")
        self._method = load_method(self.program, path, method)
        meta = self.program.metadata(method)
        if meta.num_inputs() != 1 or meta.num_outputs() != 1:
            raise UserError(f"{path}: method {method} has {meta.num_inputs()} inputs / {meta.num_outputs()} outputs, "
                            "expected one image in and one out")
        self.input_shape = tuple(int(s) for s in meta.input_tensor_meta(0).sizes())
        self.output_shape = tuple(int(s) for s in meta.output_tensor_meta(0).sizes())

    def _prepare(self, x: np.ndarray) -> Any:
        return self._torch.from_numpy(x)

    def _execute(self, x: Any) -> Any:
        return self._method.execute([x])[0]

    def _finish(self, out: Any) -> np.ndarray:
        return out.numpy().copy()

    def write_etdump(self) -> None:
        if self.etdump:
            self.program.write_etdump_result_to_file(self.etdump, self.debug_buffer)

    def _release(self) -> None:
        self._method = None
        self.program = None


open_session = ExecuTorchSession
