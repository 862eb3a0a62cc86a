"""The hard-routed dispatch loop: one tile through the card's plan (``target_extra.dispatch``), for every runtime.

A hard-routed artifact is a set of static programs (one per bank of every routed stage) plus a plan, written by the
converters (``executorch-dispatch``: methods of one ``.pte``; ``litert --strategy hard``: signatures of one
``.tflite``). This module is the one place that runs a plan; a runner only says how to call a named program:

    call(method_name, inputs) -> outputs        # inputs/outputs: sequences of values, in the stage's order

and this loop does the rest, exactly as docs/model_card.md ("Hard-routed dispatch") tells an app to:

    env = {"tile": the tile in the plan's layout}
    for stage in plan.stages:
        bank = argmax(env[stage.route]) if the stage has several methods else 0   # first index on ties
        env.update(zip(stage.outputs, call(stage.methods[bank], [env[n] for n in stage.inputs])))
    return env["output"] (and the chosen bank of every routed stage)

Values are numpy arrays in the plan's ``layout`` (``channels_last``: NHWC arrays, i.e. NHWC memory order;
``contiguous``: NCHW), or runner-native values (e.g. torch tensors) whose logits ``as_array`` turns into numpy: the
loop looks inside a value only to read routing logits. `to_layout`/`from_layout` convert a tile (NCHW float32, what
every runner session takes) to the plan's layout and an output back; runners do that outside the timed call.

Numpy only (no runtime, no torch): it runs on devices and in the torch-free tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .card import CARD_FILE, Dispatch, ModelCard, load_card
from .errors import UserError

LAYOUTS = ("channels_last", "contiguous")
"""``channels_last``: every program input/output (the tile included) in NHWC memory order (numpy: NHWC arrays);
``contiguous``: NCHW."""

Call = Callable[[str, Sequence[Any]], Sequence[Any]]


def to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """An NCHW array in ``layout`` (a contiguous copy for ``channels_last``)."""
    if layout == "channels_last":
        return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))
    return np.ascontiguousarray(x)


def from_layout(y: np.ndarray, layout: str) -> np.ndarray:
    """An array in ``layout`` back to NCHW float32 (a contiguous copy)."""
    y = np.asarray(y, dtype=np.float32)
    if layout == "channels_last":
        return np.ascontiguousarray(np.transpose(y, (0, 3, 1, 2)))
    return np.ascontiguousarray(y)


def parse_plan(section: Any, where: str = "target_extra.dispatch") -> Dispatch:
    """A card's ``target_extra.dispatch`` section (a dict, as written) as the typed `Dispatch` (checked like the
    card: one-line error naming the field)."""
    from .card import _parse

    return _parse(section, Dispatch, where)


def check_plan(plan: Dispatch, methods: Iterable[str] | None = None, where: str = "the dispatch plan") -> None:
    """One-line `UserError` for a plan this loop cannot run: an unknown layout, a routed stage without its route, a
    name read before any stage wrote it, no ``output`` at the end, or (given the artifact's ``methods``) a method
    the artifact lacks."""
    if plan.layout not in LAYOUTS:
        raise UserError(f"{where}: unknown dispatch layout {plan.layout!r} (known: {', '.join(LAYOUTS)})")
    if not plan.stages:
        raise UserError(f"{where}: the dispatch plan has no stages")
    have = set(methods) if methods is not None else None
    known = {"tile"}
    for st in plan.stages:
        if not st.methods:
            raise UserError(f"{where}: stage {st.name!r} has no methods")
        if len(st.methods) > 1 and st.route is None:
            raise UserError(f"{where}: stage {st.name!r} has {len(st.methods)} methods but no route")
        needed = list(st.inputs) + ([st.route] if len(st.methods) > 1 else [])
        missing = [n for n in needed if n not in known]
        if missing:
            raise UserError(f"{where}: stage {st.name!r} reads {', '.join(map(repr, missing))} before any stage "
                            "writes it")
        if have is not None:
            lacking = [m for m in st.methods if m not in have]
            if lacking:
                raise UserError(f"{where}: the plan calls method {lacking[0]!r}, which the artifact lacks")
        known.update(st.outputs)
    if "output" not in known:
        raise UserError(f"{where}: no stage writes 'output'")


class DispatchLoop:
    """The plan, resolved once, and ``call``; `execute` runs one tile already in the plan's layout.

    ``resolve(method_name)`` (optional) maps each method name once to what ``call`` takes (e.g. a loaded method
    object), so the per-call path does no name lookups; ``call(resolved, inputs)`` then gets that object.
    ``as_array`` turns a routing-logits value into numpy (default `np.asarray`)."""

    def __init__(self, plan: Dispatch, call: Call, resolve: Callable[[str], Any] | None = None,
                 as_array: Callable[[Any], np.ndarray] = np.asarray) -> None:
        check_plan(plan)
        self.plan, self.layout, self._call, self._as_array = plan, plan.layout, call, as_array
        resolved: dict[str, Any] = {}
        self._stages = []  # (methods, input names, output names, route or None)
        for st in plan.stages:
            ms = [resolved.setdefault(m, resolve(m) if resolve else m) for m in st.methods]
            self._stages.append((ms, tuple(st.inputs), tuple(st.outputs), st.route if len(ms) > 1 else None))
        self.routed_stages = [st.name for st in plan.stages if len(st.methods) > 1]

    def execute(self, tile: Any) -> tuple[Any, list[int]]:
        """One tile (batch 1, in the plan's layout) -> (the ``output`` value, the bank chosen at each routed
        stage, in order)."""
        env = {"tile": tile}
        routes: list[int] = []
        call, as_array = self._call, self._as_array
        for methods, inputs, outputs, route in self._stages:
            if route is None:
                method = methods[0]
            else:
                logits = as_array(env[route]).reshape(-1)
                if logits.size != len(methods):
                    raise UserError(f"routing logits {route!r} have {logits.size} values for {len(methods)} methods")
                bank = int(np.argmax(logits))  # the first index on ties
                routes.append(bank)
                method = methods[bank]
            outs = call(method, [env[n] for n in inputs])
            if len(outs) < len(outputs):
                raise UserError(f"a dispatch program returned {len(outs)} values, the plan names {len(outputs)}")
            for n, v in zip(outputs, outs):
                env[n] = v
        return env["output"], routes

    def run_tile(self, tile: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """One NCHW float32 tile (batch 1) -> (NCHW float32 output, routes): layout conversions included."""
        out, routes = self.execute(to_layout(np.asarray(tile, dtype=np.float32), self.layout))
        return from_layout(out, self.layout), routes


def load_plan(artifact: str | Path, target: str) -> tuple[ModelCard, Dispatch]:
    """The card beside ``artifact`` and its checked dispatch plan; one line when either is missing (``target``: the
    conversion that writes one, for the hint)."""
    folder = Path(artifact).parent
    if not (folder / CARD_FILE).is_file():
        raise UserError(f"{artifact}: a dispatch artifact needs its model card ({CARD_FILE}) next to it")
    card = load_card(folder)
    plan = card.dispatch
    if plan is None or not plan.stages:
        raise UserError(f"{folder / CARD_FILE}: no dispatch plan (target_extra.dispatch); convert with {target}")
    check_plan(plan, where=str(folder / CARD_FILE))
    return card, plan


class RoutedSession:
    """Mixin for runner sessions (`runners.session.Session`) that run a plan with ``self.loop`` (a `DispatchLoop`)
    one tile per call: ``_execute`` is the loop, and ``last_routes`` holds the chosen banks per tile of the last
    ``run``. The runner's ``_finish`` calls ``_keep_routes()``."""

    loop: DispatchLoop | None = None
    layout: str
    last_routes: list[list[int]]
    _routes: list[int]

    def _open_plan(self, path: str, method: str, target: str) -> tuple[ModelCard, Dispatch]:
        """The card and plan beside ``path`` (`load_plan`); ``layout`` set. Only ``forward`` is an entry point."""
        if method != "forward":
            raise UserError(f"dispatch artifacts have one entry point, 'forward' (the orchestration), not {method!r}")
        card, plan = load_plan(path, target)
        self.layout = plan.layout
        return card, plan

    def _start(self, card: ModelCard) -> None:
        """The session's shapes from the card's ``forward`` (the orchestrated network, one tile per call)."""
        fwd = card.methods[0]
        self.input_shape = (1, *(int(s) for s in fwd.input_shape[1:]))
        self.output_shape = (1, *(int(s) for s in fwd.output_shape[1:]))
        self.last_routes, self._routes = [], []

    def _execute(self, x: Any) -> Any:
        out, self._routes = self.loop.execute(x)
        return out

    def _keep_routes(self) -> None:
        self.last_routes.append(self._routes)

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.last_routes = []  # chosen bank per routed stage, per tile of this batch
        return super().run(batch)  # type: ignore[misc]

    def routes(self, batch: np.ndarray) -> list[list[int]]:
        """Chosen bank per routed stage, per tile (after running ``batch``)."""
        self.run(batch)
        return self.last_routes


def run_tile(plan: Dispatch, call: Call, tile: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """One NCHW float32 tile through ``plan`` with ``call``: (NCHW float32 output, chosen bank per routed stage)."""
    return DispatchLoop(plan, call).run_tile(tile)


__all__ = ["LAYOUTS", "Call", "DispatchLoop", "RoutedSession", "run_tile", "load_plan", "parse_plan", "check_plan", "to_layout", "from_layout"]
