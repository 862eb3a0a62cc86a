"""``--target executorch --strategy hard``: hard routing inside ONE program (torch.cond over delegated bank branches).

Real lowering and the real ExecuTorch runtime on tiny straight-through models: the artifact equals the PyTorch hard
deploy form on real tiles (shared routing, 2 blocks, k=3: a non-power-of-two cond tree), every conv runs inside
XNNPACK (the branch-constant pass is what makes it so: without it the branch convs stay portable), INT8 stays close,
and requests the strategy cannot serve are refused in one line (per-layer routing among them: its programs crash
ExecuTorch 1.5.1 on load, docs/dispatch.md).
"""

import helpers
import numpy as np
import pytest
import torch
from nsr_edge.checkpoint import Checkpoint, save_checkpoint
from nsr_edge.converters.control_flow import compose_plan, control_flow_partitioner, select_branch
from nsr_edge.converters.executorch import delegation_of
from nsr_edge.converters.executorch_dispatch import build_plan
from nsr_edge.converters.pipeline import ConvertOptions, convert
from nsr_edge.deploy import to_deploy
from nsr_edge.errors import UserError
from nsr_edge.layers import RoutingConfig
from nsr_edge.models import ModelConfig, build_model
from nsr_edge.runtime.runners.child import RunnerProcess
from nsr_edge.runtime.tasks import TaskSpec

TILE = 24
LAYER = ModelConfig("wdsr_nsr", 2, 3, blocks=2, width=8, width_multiplier=2.0, banks=3, cardinality=1,
                    routing=RoutingConfig(kind="straight_through"))
BLOCKS3 = ModelConfig("wdsr_nsr", 2, 3, blocks=2, width=8, width_multiplier=2.0, banks=3, cardinality=1,
                      routing=RoutingConfig(kind="straight_through", shared=True))
SHARED = ModelConfig("wdsr_nsr", 2, 3, blocks=1, width=8, width_multiplier=2.0, banks=2, cardinality=1,
                     routing=RoutingConfig(kind="straight_through", shared=True))


_model = helpers.spread_router_model


def _checkpoint(root, cfg):
    ckpt = root / "model.pt"
    save_checkpoint(Checkpoint(cfg, _model(cfg).state_dict(), {"task": TaskSpec("sr", scale=2).to_dict()}), ckpt)
    return ckpt


def _convert(root, cfg, **options):
    ckpt = _checkpoint(root, cfg)
    out, card = convert(ConvertOptions(str(ckpt), target="executorch", strategy="hard", tile=TILE, progress=False,
                                       **options), str(root / "artifact"))
    return {"ckpt": ckpt, "out": out, "card": card.to_dict(), "model": _model(cfg)}


def _run(out, tiles):
    with RunnerProcess("executorch", str(out / "model.pte")) as proc:
        return proc.run(tiles)


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    return _convert(tmp_path_factory.mktemp("cond"), BLOCKS3)


def test_select_branch_picks_the_indexed_function():
    fns = [lambda x, i=i: (x + i,) for i in range(5)]
    x = torch.zeros(1)
    for k in range(1, 6):
        for i in range(k):
            assert select_branch(torch.tensor(i), fns[:k], (x,))[0].item() == i


def test_fp32_artifact_equals_the_hard_deploy_form(fp32):
    tiles = helpers.real_tiles(TILE, 12)
    hard = to_deploy(fp32["model"], "hard")
    with torch.no_grad():
        ref = hard(torch.from_numpy(tiles)).numpy()
    got = _run(fp32["out"], tiles)
    assert np.abs(got - ref).max() < 1e-5
    heads = [m.body[0].head for m in hard.body if hasattr(m, "body") and hasattr(m.body[0], "head")]
    with torch.no_grad():
        chosen = {int(heads[0].logits(hard.body[0](torch.from_numpy(t[None]) - 0.5)).argmax()) for t in tiles}
    assert len(chosen) >= 2, "real tiles reach several banks: the test exercises the branches"


def test_card_says_everything_but_routing_is_delegated(fp32):
    card = fp32["card"]
    assert card["runner"] == "executorch" and card["strategy"] == "hard"
    fallbacks = {f["op"] for f in card["delegation"]["methods"]["forward"]["fallbacks"]}
    # No layout copy outside XNNPACK (there were three per tile: the tile to channels-last, and the output to
    # channels-last in the tail branch and back at the top): only the routing decision runs in portable kernels.
    assert fallbacks <= {"argmax", "lt.Scalar_out"}, fallbacks
    assert not any(n.startswith("warning") for n in card["delegation"]["notes"])
    info = card["target_extra"]["in_program_routing"]
    assert info["banks"] == 3 and info["mode"] == "block" and info["routed_stages"] == 2
    assert "dispatch" not in card["target_extra"], "one forward: no host orchestration for runners or apps"


def test_branch_convs_stay_portable_without_the_constant_pass():
    """What the pass fixes: lowered without it, XNNPACK refuses the branch convs (weights arrive as operands)."""
    from executorch.exir import to_edge

    plan = build_plan(to_deploy(_model(SHARED), "hard"))
    x = torch.from_numpy(helpers.real_tiles(TILE, 1))
    edge = to_edge(torch.export.export(compose_plan(plan.programs, plan.stages), (x,)))
    edge = edge.to_backend(control_flow_partitioner())
    method = delegation_of(edge, "forward", list(x.shape), [1, 3, 2 * TILE, 2 * TILE], lambda n: "")
    assert any(f.op == "convolution" for f in method.fallbacks)


def test_int8_close_to_fp32(tmp_path):
    art = _convert(tmp_path, SHARED, recipe="int8-ptq", calibration_tiles=16, calibration_dataset="set5")
    tiles = helpers.real_tiles(TILE, 12)
    with torch.no_grad():
        ref = to_deploy(art["model"], "hard")(torch.from_numpy(tiles)).numpy()
    got = _run(art["out"], tiles)
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref - 0.5)
    assert rel < 0.05, rel
    assert art["card"]["target_extra"]["in_program_routing"]["calibration"]["per_bank"]


def test_requests_it_cannot_serve_are_refused(tmp_path):
    ckpt = _checkpoint(tmp_path, SHARED)
    with pytest.raises(UserError, match="int8-ptq, not int8-qat"):
        convert(ConvertOptions(str(ckpt), target="executorch", strategy="hard", recipe="int8-qat", tile=TILE,
                               progress=False, calibration_tiles=4, calibration_dataset="set5"), str(tmp_path / "a"))
    with pytest.raises(UserError, match="one tile size"):
        convert(ConvertOptions(str(ckpt), target="executorch", strategy="hard", tile=TILE, extra_tiles=(32,),
                               progress=False), str(tmp_path / "b"))
    dense = ModelConfig("wdsr", 2, 3, blocks=1, width=8)
    d_ckpt = tmp_path / "dense.pt"
    save_checkpoint(Checkpoint(dense, build_model(dense).state_dict(), {"task": TaskSpec("sr", scale=2).to_dict()}),
                    d_ckpt)
    with pytest.raises(UserError, match="sparse convs"):
        convert(ConvertOptions(str(d_ckpt), target="executorch", strategy="hard", tile=TILE, progress=False),
                str(tmp_path / "c"))
    assert not any((tmp_path / n).exists() for n in "abc")


def test_no_layout_copy_outside_the_delegates_in_the_lowered_program():
    """The lowered graph itself (top level and every branch): the tile's layout change and the tail's NCHW output are
    ``_to_dim_order_copy`` inside XNNPACK; no ``_clone_dim_order`` is left to the portable kernels."""
    from nsr_edge.converters.control_flow import control_flow_modules, lower_with_control_flow
    from nsr_edge.converters.executorch import _op_name

    plan = build_plan(to_deploy(_model(SHARED), "hard"), output_layout="contiguous")
    x = torch.from_numpy(helpers.real_tiles(TILE, 1))
    edge, _ = lower_with_control_flow(compose_plan(plan.programs, plan.stages), x)
    outside = [_op_name(n) for gm in control_flow_modules(edge.exported_program().graph_module)
               for n in gm.graph.nodes if n.op == "call_function"]
    assert not [op for op in outside if "dim_order" in op or op in ("clone", "permute_copy")], outside


def test_per_layer_routing_is_refused(tmp_path):
    with pytest.raises(UserError, match="per-layer routing .* crashes ExecuTorch 1.5.1 on load"):
        _convert(tmp_path, LAYER)
    assert not (tmp_path / "artifact").exists()


def test_cardinality_above_one_is_refused_before_any_work(tmp_path):
    cfg = SHARED.with_(cardinality=2)
    ckpt = tmp_path / "d2.pt"
    save_checkpoint(Checkpoint(cfg, build_model(cfg).state_dict(), {"task": TaskSpec("sr", scale=2).to_dict()}), ckpt)
    with pytest.raises(UserError, match="cardinality d=1"):
        convert(ConvertOptions(str(ckpt), target="executorch", strategy="hard", tile=TILE, progress=False),
                str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()


def test_undelegated_branches_are_refused_and_soft_routing_warned(tmp_path, monkeypatch, capsys):
    """A program whose branch convs did not delegate is never written (it would run ~100x slower): here the branch
    constants are not inlined, so XNNPACK refuses the branch convs. The model routes with softmax: making it hard
    changes its output, which is said on stderr before any lowering."""
    from nsr_edge.converters import control_flow

    soft = SHARED.with_(routing=RoutingConfig(kind="softmax", shared=True))
    monkeypatch.setattr(control_flow, "inline_branch_constants", lambda program: 0)
    with pytest.raises(UserError, match=r"\d+ convolution\(s\) did not delegate"):
        _convert(tmp_path, soft)
    assert "softmax (soft) routing" in capsys.readouterr().err
    assert not (tmp_path / "artifact").exists()


def test_portable_ops_verdict():
    from nsr_edge.converters.base import Fallback
    from nsr_edge.converters.executorch import portable_ops_verdict

    routing = {"argmax", "lt.Scalar_out"}
    assert portable_ops_verdict("t", [Fallback("argmax", 6, ""), Fallback("lt.Scalar_out", 18, "")], routing) is None
    warning = portable_ops_verdict("t", [Fallback("argmax", 6, ""), Fallback("_clone_dim_order", 3, "")], routing)
    assert warning == "t: 3 op(s) outside XNNPACK run in portable kernels: _clone_dim_order x3"
    with pytest.raises(UserError, match="t: 4 convolution"):
        portable_ops_verdict("t", [Fallback("convolution", 4, "")], routing)
