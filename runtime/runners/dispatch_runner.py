"""Run an ``executorch-dispatch`` artifact: one multi-method ``.pte`` of static programs, orchestrated on the host.

The orchestration is data in the model card (``target_extra.dispatch.stages``, written by
``converters/executorch_dispatch.py``) and runs in the one target-independent loop, `runtime.dispatch.DispatchLoop`
(the LiteRT runner uses the same loop for ``litert --strategy hard``); this runner only says how to call a named
ExecuTorch method.

The ExecuTorch pybindings link libtorch and take torch tensors: torch is imported lazily in `open_session`, never at
module level. Values stay torch tensors between calls (the loop reads only the routing logits, as numpy views); the
tile is handed over channels-last (the card's ``layout``). The pybindings clone every output, and that clone is
needed: all methods of one program share one planned-memory arena (measured in
ExecuTorch 1.5.1: ``clone_outputs=False`` hands back the same pointer from every method, and the next call overwrites
it), so an uncloned value would not survive the next call. The clone costs ~6 us per 16x64x64 float tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..card import CARD_FILE, load_card
from ..dispatch import DispatchLoop, check_plan, from_layout, to_layout
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
        check_plan(plan, where=str(folder / CARD_FILE))
        self.layout = plan.layout
        self._torch, self.program, self.threads = load_program(path, self.threads)
        check_plan(plan, self.program.method_names, where=path)
        self.loop = DispatchLoop(plan, lambda m, inputs: m.execute(inputs),
                                 resolve=lambda name: load_method(self.program, path, name),
                                 as_array=lambda t: t.numpy())
        fwd = card.methods[0]
        self.input_shape = (1, *(int(s) for s in fwd.input_shape[1:]))  # orchestrated one tile at a time
        self.output_shape = (1, *(int(s) for s in fwd.output_shape[1:]))
        self.last_routes: list[list[int]] = []
        self._routes: list[int] = []

    def _prepare(self, x: np.ndarray) -> Any:
        t = self._torch.from_numpy(to_layout(x, self.layout))
        # channels-last: an NCHW-shaped view of the NHWC memory, what the programs were exported for (XNNPACK's layout)
        return t.permute(0, 3, 1, 2) if self.layout == "channels_last" else t

    def _execute(self, t: Any) -> Any:
        """One tile through the plan; the chosen bank of each routed stage goes to ``_routes``."""
        out, self._routes = self.loop.execute(t)
        return out

    def _finish(self, out: Any) -> np.ndarray:
        self.last_routes.append(self._routes)
        return from_layout(out.permute(0, 2, 3, 1).numpy() if self.layout == "channels_last" else out.numpy(),
                           self.layout)

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.last_routes = []  # chosen bank per routed stage, per tile of this batch
        return super().run(batch)

    def routes(self, batch: np.ndarray) -> list[list[int]]:
        """Chosen bank per routed stage, per tile (after running ``batch``)."""
        self.run(batch)
        return self.last_routes

    def _release(self) -> None:
        self.loop = None
        self.program = None


open_session = DispatchSession
