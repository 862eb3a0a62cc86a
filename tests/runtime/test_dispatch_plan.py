"""The dispatch loop (`runtime.dispatch`) on its own: a plan of pure-numpy programs and a ``call`` that runs them.

Not a mock of a runtime: the loop's unit test. The real runtimes (ExecuTorch, LiteRT) run real plans in
tests/test_dispatch.py and tests/test_litert.py. Torch-free.
"""

from __future__ import annotations

import numpy as np
import pytest
from nsr_edge.runtime.card import Dispatch, DispatchStage
from nsr_edge.runtime.dispatch import DispatchLoop, check_plan, from_layout, parse_plan, run_tile, to_layout
from nsr_edge.runtime.errors import UserError

K = 3


def _plan(layout="channels_last", stages=None) -> Dispatch:
    """stem -> two routed stages (k=3) -> the last one writes ``output``; the shape of a real layer-mode plan."""
    stages = stages or [
        DispatchStage("stem", ["stem"], ["tile"], ["x", "logits"]),
        DispatchStage("block0", [f"b0_k{i}" for i in range(K)], ["x"], ["x", "logits"], route="logits"),
        DispatchStage("block1+tail", [f"b1_k{i}" for i in range(K)], ["x", "tile"], ["output"], route="logits"),
    ]
    return Dispatch(mode="block", banks=K, cardinality=1, batch=1, layout=layout, stages=stages,
                    routing="argmax", calls_per_tile=len(stages))


def _logits(x):  # NHWC: per-channel means of the first K channels pick the bank
    return x.mean(axis=(1, 2))[:, :K].astype(np.float32)


def _programs(calls):
    """Numpy programs on NHWC values; ``calls`` records every call (name, input shapes)."""
    def stem(t):
        x = np.concatenate([t, t[..., :1] * 0.5], axis=-1)  # 3 -> 4 channels
        return [x, _logits(x)]

    def block(b, i):
        def run(x, *rest):
            y = x * (i + 1) + b  # bank i scales by i+1: the output says which bank ran
            if rest:  # the tail: + the tile, back to 3 channels
                return [y[..., :3] + rest[0]]
            return [y, _logits(y)]
        return run

    progs = {"stem": stem}
    for b in range(2):
        for i in range(K):
            progs[f"b{b}_k{i}"] = block(b, i)

    def call(name, inputs):
        calls.append((name, [a.shape for a in inputs]))
        return progs[name](*inputs)

    return call


def _reference(tile_nchw):
    """The same computation written out by hand (NCHW in, NCHW out), with its routes."""
    t = np.transpose(tile_nchw, (0, 2, 3, 1))
    x = np.concatenate([t, t[..., :1] * 0.5], axis=-1)
    b0 = int(np.argmax(_logits(x)))
    x = x * (b0 + 1)
    b1 = int(np.argmax(_logits(x)))
    y = (x * (b1 + 1) + 1)[..., :3] + t
    return np.transpose(y, (0, 3, 1, 2)), [b0, b1]


def test_the_loop_runs_the_stages_routes_by_argmax_and_keeps_the_layout():
    rng = np.random.default_rng(0)
    seen_routes = set()
    for _ in range(20):
        tile = rng.random((1, 3, 8, 8), dtype=np.float32)
        calls = []
        out, routes = run_tile(_plan(), _programs(calls), tile)
        want, want_routes = _reference(tile)
        assert out.shape == (1, 3, 8, 8) and out.dtype == np.float32 and out.flags.c_contiguous
        np.testing.assert_allclose(out, want, rtol=1e-6)
        assert routes == want_routes
        assert [c[0] for c in calls] == ["stem", f"b0_k{routes[0]}", f"b1_k{routes[1]}"]  # one call per stage
        assert calls[0][1] == [(1, 8, 8, 3)]  # channels_last: the programs get NHWC arrays
        seen_routes.update((i, r) for i, r in enumerate(routes))
    assert len(seen_routes) > 2, "the tiles exercise several banks"


def test_ties_pick_the_first_bank():
    tile = np.zeros((1, 3, 4, 4), np.float32)  # every logit 0: a three-way tie at both routed stages
    calls = []
    _, routes = run_tile(_plan(), _programs(calls), tile)
    assert routes == [0, 0] and calls[1][0] == "b0_k0"


def test_contiguous_layout_hands_nchw_values_over():
    calls = []
    seen = []

    def call(name, inputs):
        seen.append(inputs[0].shape)
        return [inputs[0] * 2] if name == "only" else []

    plan = _plan("contiguous", [DispatchStage("all", ["only"], ["tile"], ["output"])])
    tile = np.ones((1, 3, 4, 6), np.float32)
    out, routes = run_tile(plan, call, tile)
    assert seen == [(1, 3, 4, 6)] and routes == [] and np.all(out == 2)
    assert not calls


def test_layout_helpers_roundtrip():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    nhwc = to_layout(x, "channels_last")
    assert nhwc.shape == (2, 4, 5, 3) and nhwc.flags.c_contiguous and nhwc[1, 2, 3, 1] == x[1, 1, 2, 3]
    assert np.array_equal(from_layout(nhwc, "channels_last"), x)
    assert np.array_equal(from_layout(to_layout(x, "contiguous"), "contiguous"), x)


def test_resolve_once_and_native_values():
    """``resolve`` maps every method name once (a runner's loaded methods); values may be runner-native objects
    the loop reads only through ``as_array``."""
    resolved = []

    class Box:  # a runner-native value
        def __init__(self, a):
            self.a = a

    inner = _programs([])

    def call(method, inputs):
        return [Box(v) for v in inner(method, [b.a for b in inputs])]

    loop = DispatchLoop(_plan(), call, resolve=lambda n: resolved.append(n) or n, as_array=lambda b: b.a)
    assert sorted(resolved) == sorted(["stem"] + [f"b{b}_k{i}" for b in range(2) for i in range(K)])
    tile = np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32)
    out, routes = loop.execute(Box(to_layout(tile, "channels_last")))
    want, want_routes = _reference(tile)
    np.testing.assert_allclose(from_layout(out.a, "channels_last"), want, rtol=1e-6)
    assert routes == want_routes and loop.routed_stages == ["block0", "block1+tail"]


def test_the_plan_parsed_from_a_card_section_runs():
    section = {"mode": "block", "banks": K, "cardinality": 1, "batch": 1, "layout": "channels_last",
               "routing": "argmax", "calls_per_tile": 3,
               "stages": [{"name": s.name, "methods": s.methods, "inputs": s.inputs, "outputs": s.outputs,
                           **({"route": s.route} if s.route else {})} for s in _plan().stages]}
    plan = parse_plan(section)
    tile = np.random.default_rng(2).random((1, 3, 8, 8), dtype=np.float32)
    out, routes = run_tile(plan, _programs([]), tile)
    want, want_routes = _reference(tile)
    np.testing.assert_allclose(out, want, rtol=1e-6)
    assert routes == want_routes


@pytest.mark.parametrize("stages, message", [
    ([DispatchStage("a", ["m0", "m1"], ["tile"], ["output"])], "no route"),
    ([DispatchStage("a", ["m"], ["x"], ["output"])], "reads 'x' before"),
    ([DispatchStage("a", ["m"], ["tile"], ["x"])], "no stage writes 'output'"),
    ([DispatchStage("a", [], ["tile"], ["output"])], "has no methods"),
])
def test_bad_plans_are_one_line(stages, message):
    with pytest.raises(UserError, match=message):
        check_plan(_plan(stages=stages))


def test_unknown_layout_missing_method_and_wrong_logits_are_one_line():
    with pytest.raises(UserError, match="unknown dispatch layout"):
        check_plan(_plan("nhwc"))
    with pytest.raises(UserError, match="lacks"):
        check_plan(_plan(), methods=["stem", "b0_k0"])
    call = _programs([])

    def two_logits(name, inputs):
        outs = call(name, inputs)
        return [outs[0], outs[1][:, :2]] if len(outs) == 2 else outs

    with pytest.raises(UserError, match="2 values for 3 methods"):
        run_tile(_plan(), two_logits, np.ones((1, 3, 4, 4), np.float32))
