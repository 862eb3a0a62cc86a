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

from ..dispatch import DispatchLoop, RoutedSession, check_plan, from_layout, to_layout
from ..errors import UserError
from .executorch_runner import load_method, load_program
from .session import Session


class DispatchSession(RoutedSession, Session):
    kind = "executorch-dispatch"
    program: Any = None

    def _load(self, path: str, method: str) -> None:
        card, plan = self._open_plan(path, method, "--target executorch-dispatch")
        self._torch, self.program, self.threads = load_program(path, self.threads)
        check_plan(plan, self.program.method_names, where=path)
        self.loop = DispatchLoop(plan, lambda m, inputs: m.execute(inputs),
                                 resolve=lambda name: load_method(self.program, path, name),
                                 as_array=lambda t: t.numpy())
        self._start(card)

    def _prepare(self, x: np.ndarray) -> Any:
        t = self._torch.from_numpy(to_layout(x, self.layout))
        # channels-last: an NCHW-shaped view of the NHWC memory, what the programs were exported for (XNNPACK's layout)
        return t.permute(0, 3, 1, 2) if self.layout == "channels_last" else t

    def _finish(self, out: Any) -> np.ndarray:
        self._keep_routes()
        return from_layout(out.permute(0, 2, 3, 1).numpy() if self.layout == "channels_last" else out.numpy(),
                           self.layout)

    def _release(self) -> None:
        self.loop = None
        self.program = None


open_session = DispatchSession
