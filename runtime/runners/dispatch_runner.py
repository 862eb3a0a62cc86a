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

from pathlib import Path
from typing import Any

import numpy as np

from ..card import CARD_FILE, load_card
from ..errors import UserError
from .executorch_runner import load_method, load_program
from .session import Session


class DispatchSession(Session):
    kind = "executorch-dispatch"
    program: Any = None

    def _load(self, path: str, method: str) -> None:
        if method != "forward":
            raise UserError(f"dispatch artifacts have one entry point, 'forward' (the orchestration), not {method!r}")
        folder = Path(path).parent
        if not (folder / CARD_FILE).is_file():
            raise UserError(f"{path}: a dispatch artifact needs its model card ({CARD_FILE}) next to it")
        card = load_card(folder)
        plan = card.dispatch
        if plan is None or not plan.stages:
            raise UserError(f"{folder / CARD_FILE}: no dispatch plan (target_extra.dispatch); convert with "
                            "--target executorch-dispatch")
        self.stages, self.layout = plan.stages, plan.layout
        if self.layout not in ("contiguous", "channels_last"):
            raise UserError(f"{folder / CARD_FILE}: unknown dispatch layout {self.layout!r}")
        self._torch, self.program, self.threads = load_program(path, self.threads)
        names = set(self.program.method_names)
        methods: dict[str, Any] = {}
        for st in self.stages:
            for m in st.methods:
                if m not in names:
                    raise UserError(f"{path}: the card's dispatch plan calls method {m!r}, which the program lacks")
                if m not in methods:
                    methods[m] = load_method(self.program, path, m)
        # run plan: (methods, input names, output names, route name or None), resolved once
        self._plan = [([methods[m] for m in st.methods], st.inputs, st.outputs,
                       st.route if len(st.methods) > 1 else None) for st in self.stages]
        fwd = card.methods[0]
        self.input_shape = (1, *(int(s) for s in fwd.input_shape[1:]))  # orchestrated one tile at a time
        self.output_shape = (1, *(int(s) for s in fwd.output_shape[1:]))
        self.last_routes: list[list[int]] = []
        self._routes: list[int] = []

    def _prepare(self, x: np.ndarray) -> Any:
        t = self._torch.from_numpy(x)
        if self.layout == "channels_last":  # the programs were exported for channels-last I/O (XNNPACK's layout)
            t = t.contiguous(memory_format=self._torch.channels_last)
        return t

    def _execute(self, t: Any) -> Any:
        """One tile through the plan; the chosen bank of each routed stage goes to ``_routes``."""
        env = {"tile": t}
        self._routes = []
        for methods, inputs, outputs, route in self._plan:
            if route is None:
                method = methods[0]
            else:
                bank = int(np.argmax(env[route].numpy()))
                self._routes.append(bank)
                method = methods[bank]
            outs = method.execute([env[n] for n in inputs])
            for n, v in zip(outputs, outs):
                env[n] = v
        return env["output"]

    def _finish(self, out: Any) -> np.ndarray:
        self.last_routes.append(self._routes)
        return out.numpy().copy()

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.last_routes = []  # chosen bank per routed stage, per tile of this batch
        return super().run(batch)

    def routes(self, batch: np.ndarray) -> list[list[int]]:
        """Chosen bank per routed stage, per tile (after running ``batch``)."""
        self.run(batch)
        return self.last_routes

    def _release(self) -> None:
        self._plan = []
        self.program = None


open_session = DispatchSession
