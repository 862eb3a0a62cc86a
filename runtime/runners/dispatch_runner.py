"""Run an ``executorch-dispatch`` artifact: one multi-method ``.pte`` of static programs, orchestrated on the host.

The orchestration is data in the model card (``target_extra.dispatch.stages``, written by
``converters/executorch_dispatch.py``): for each tile, stage by stage, pick the method (the argmax of the stage's
routing logits, numpy, first index on ties; or the stage's only method), call it with the named values, store its
outputs under their names. The env starts with ``tile`` and ends with ``output``.

The ExecuTorch pybindings link libtorch and take torch tensors: torch is imported lazily in `open_session`, never at
module level. Values stay torch tensors between calls; only the logits are viewed as numpy. The pybindings clone
every output, and that clone is needed: all methods of one program share one planned-memory arena (measured in
ExecuTorch 1.5.1: ``clone_outputs=False`` hands back the same pointer from every method, and the next call overwrites
it), so an uncloned value would not survive the next call. The clone costs ~6 us per 16x64x64 float tensor.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..card import CARD_FILE, load_card
from ..errors import UserError
from .session import Session


class DispatchSession(Session):
    def __init__(self, path: str, method: str = "forward", threads: int = 1) -> None:
        import torch  # noqa: F401  (the pybindings need libtorch loaded first)
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        try:
            import executorch.kernels.quantized  # noqa: F401  (int8 ops outside the delegate)
        except ImportError:
            pass
        if method != "forward":
            raise UserError(f"dispatch artifacts have one entry point, 'forward' (the orchestration), not {method!r}")
        folder = Path(path).parent
        if not (folder / CARD_FILE).is_file():
            raise UserError(f"{path}: a dispatch artifact needs its model card ({CARD_FILE}) next to it")
        card = load_card(folder)
        plan = (card.get("target_extra") or {}).get("dispatch")
        if not plan or not plan.get("stages"):
            raise UserError(f"{folder / CARD_FILE}: no dispatch plan (target_extra.dispatch); convert with "
                            "--target executorch-dispatch")
        if threads and threads > 0:
            portable_lib._unsafe_reset_threadpool(int(threads))
        self.threads = int(portable_lib._threadpool_get_thread_count())
        self._torch = torch
        try:
            self.program = Runtime.get().load_program(Path(path).read_bytes())
        except Exception as e:  # noqa: BLE001
            raise UserError(f"{path}: not a loadable ExecuTorch program ({str(e).splitlines()[0][:160]})") from None
        self.stages = plan["stages"]
        self.layout = plan.get("layout", "contiguous")
        if self.layout not in ("contiguous", "channels_last"):
            raise UserError(f"{folder / CARD_FILE}: unknown dispatch layout {self.layout!r}")
        names = set(self.program.method_names)
        self._methods: dict[str, Any] = {}
        for st in self.stages:
            for m in st["methods"]:
                if m not in names:
                    raise UserError(f"{path}: the card's dispatch plan calls method {m!r}, which the program lacks")
                if m not in self._methods:
                    self._methods[m] = self.program.load_method(m)
        # run plan: (methods, input names, output names, route name or None), resolved once
        self._plan = [([self._methods[m] for m in st["methods"]], st["inputs"], st["outputs"],
                       st.get("route") if len(st["methods"]) > 1 else None) for st in self.stages]
        fwd = card["methods"][0]
        self.input_shape = tuple(int(s) for s in fwd["input_shape"])
        self.output_shape = tuple(int(s) for s in fwd["output_shape"])
        self.last_routes: list[int] = []

    def _tile(self, t: Any, routes: list[int] | None = None) -> Any:
        if self.layout == "channels_last":  # the programs were exported for channels-last I/O (XNNPACK's layout)
            t = t.contiguous(memory_format=self._torch.channels_last)
        env = {"tile": t}
        for methods, inputs, outputs, route in self._plan:
            if route is None:
                method = methods[0]
            else:
                bank = int(np.argmax(env[route].numpy()))
                if routes is not None:
                    routes.append(bank)
                method = methods[bank]
            outs = method.execute([env[n] for n in inputs])
            for n, v in zip(outputs, outs):
                env[n] = v
        return env["output"]

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if tuple(batch.shape[1:]) != self.input_shape[1:]:
            raise UserError(f"input tiles {batch.shape[1:]} do not match the program's {self.input_shape[1:]}")
        outs = []
        self.last_routes = []
        for i in range(len(batch)):
            routes: list[int] = []
            outs.append(self._tile(self._torch.from_numpy(batch[i : i + 1]), routes).numpy().copy())
            self.last_routes.append(routes)
        return np.concatenate(outs)

    def routes(self, batch: np.ndarray) -> list[list[int]]:
        """Chosen bank per routed stage, per tile (after running ``batch``)."""
        self.run(batch)
        return self.last_routes

    def time_once(self, x: np.ndarray) -> float:
        t = self._torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        start = time.perf_counter()
        for i in range(t.shape[0]):
            self._tile(t[i : i + 1])
        return time.perf_counter() - start

    def close(self) -> None:
        self._plan = []
        self._methods = {}
        self.program = None


def open_session(path: str, method: str = "forward", threads: int = 1, etdump: str | None = None,
                 debug_buffer: str | None = None, debug_buffer_size: int = 0) -> DispatchSession:
    if etdump:
        raise UserError("per-op tracing (ETDump) is not wired for dispatch artifacts yet; profile without --per-op")
    return DispatchSession(path, method, threads)
