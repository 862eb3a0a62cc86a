"""executorch-dispatch (FP32): hard routing as static per-bank programs in one .pte, orchestrated by the host runner.

Real lowering and the real ExecuTorch runtime on a tiny straight-through model (1 block, width 8, k=2, d=1):
the artifact equals the PyTorch `hard` deploy form on real tiles, its routing decisions equal the model's, and
validate/profile run it like any artifact.
"""

import helpers
import numpy as np
import pytest
import torch
from helpers import run_cli
from nsr_edge.converters.executorch_dispatch import build_plan, run_programs
from nsr_edge.converters.pipeline import ConvertOptions, convert
from nsr_edge.runtime.card import read_card_json
from nsr_edge.runtime.runners.child import RunnerProcess
from nsr_edge.runtime.tasks import TaskSpec

from nsr_edge.checkpoint import Checkpoint, save_checkpoint
from nsr_edge.deploy import to_deploy
from nsr_edge.errors import UserError
from nsr_edge.layers import RoutingConfig
from nsr_edge.models import ModelConfig, build_model

TILE = 24
ST = ModelConfig("wdsr_nsr", 2, 3, blocks=1, width=8, width_multiplier=2.0, banks=2, cardinality=1,
                 routing=RoutingConfig(kind="straight_through"))


_model = helpers.spread_router_model


def real_tiles(n=12):
    return helpers.real_tiles(TILE, n)


def _convert(root, cfg, **options):
    """Save a model of ``cfg`` as a checkpoint and convert it for executorch-dispatch (hard routing)."""
    model = _model(cfg)
    ckpt = root / "model.pt"
    save_checkpoint(Checkpoint(cfg, model.state_dict(), {"task": TaskSpec("sr", scale=2).to_dict()}), ckpt)
    out, card = convert(ConvertOptions(str(ckpt), target="executorch-dispatch", strategy="hard", tile=TILE,
                                       progress=False, **options), str(root / "artifact"))
    return {"ckpt": ckpt, "out": out, "card": card.to_dict(), "model": model}


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    return _convert(tmp_path_factory.mktemp("dispatch"), ST)


def test_card_describes_the_orchestration(fp32):
    card = fp32["card"]
    assert card["target"] == "executorch-dispatch" and card["runner"] == "dispatch" and card["strategy"] == "hard"
    plan = card["target_extra"]["dispatch"]
    assert plan["mode"] == "layer" and plan["banks"] == 2 and plan["io_dtype"] == "float32"
    names = [s["name"] for s in plan["stages"]]
    assert names == ["stem", "block0.conv0", "block0.conv1+tail"]  # the tail runs inside the last routed programs
    assert plan["stages"][-1]["inputs"] == ["h", "x", "tile"] and plan["stages"][-1]["outputs"] == ["output"]
    assert plan["stages"][1]["methods"] == ["b0_c0_k0", "b0_c0_k1"] and plan["stages"][1]["route"] == "logits"
    assert card["methods"][0]["name"] == "forward" and card["methods"][0]["input_shape"] == [1, 3, TILE, TILE]
    assert card["methods"][0]["output_shape"] == [1, 3, 2 * TILE, 2 * TILE]
    for name, p in plan["programs"].items():  # every program one XNNPACK partition, nothing outside: not even the
        # tail's layout copy (pixel shuffle's own return to channels-last is a portable `_clone_dim_order`; the tail
        # writes its layout changes as `_to_dim_order_copy`, which XNNPACK takes)
        assert p["partitions"] == 1 and p["delegated_ops"] > 0 and p["outside"] == {}, (name, p)
    assert card["delegation"]["methods"]["forward"]["fallbacks"] == []


def test_artifact_equals_hard_deploy_form_and_routes_like_pytorch(fp32):
    from nsr_edge.runtime.runners.dispatch_runner import DispatchSession

    tiles = real_tiles()
    hard = to_deploy(fp32["model"], "hard")
    with torch.no_grad():
        ref = hard(torch.from_numpy(tiles)).numpy()
        # the model's own decisions, layer by layer: argmax of each routing head on its input
        decisions, hooks = [], []
        for m in hard.modules():
            if getattr(m, "head", None) is not None and hasattr(m, "apply_banks"):
                hooks.append(m.head.register_forward_hook(
                    lambda head, inp, out: decisions.append(head.logits(inp[0]).reshape(len(inp[0]), -1).argmax(-1))))
        hard(torch.from_numpy(tiles))
        for h in hooks:
            h.remove()
    want = torch.stack(decisions, 1).tolist()  # (tiles, routed layers)
    session = DispatchSession(str(fp32["out"] / "model.pte"))
    try:
        out = session.run(tiles)
        routes = session.last_routes
    finally:
        session.close()
    assert np.abs(out - ref).max() < 1e-4
    assert routes == want
    assert {r for row in routes for r in row} == {0, 1}, "both banks used: the test exercises dispatch"
    # and through the child process, as validate/profile run it
    with RunnerProcess("dispatch", str(fp32["out"] / "model.pte")) as proc:
        assert np.abs(proc.run(tiles[:3]) - ref[:3]).max() < 1e-4


def test_validate_and_profile_run_it_like_any_artifact(fp32):
    r = run_cli("validate", fp32["out"], "--dataset", "set5", "--limit", "1", "--max-abs", "1e-4", "--quiet",
                "--record", "--reference", fp32["ckpt"])
    assert r.returncode == 0, r.stderr
    assert read_card_json(fp32["out"])["validation"][-1]["summary"]["max_abs_vs_reference"] < 1e-4
    r = run_cli("profile", fp32["out"], "--runs", "3", "--warmup", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert '"runner": "dispatch"' in r.stdout


def test_user_errors(fp32, tmp_path):
    with pytest.raises(UserError, match="strategy hard"):
        convert(ConvertOptions(str(fp32["ckpt"]), target="executorch-dispatch", tile=TILE, progress=False),
                str(tmp_path / "a"))
    with pytest.raises(UserError, match="one tile size"):
        convert(ConvertOptions(str(fp32["ckpt"]), target="executorch-dispatch", strategy="hard", tile=TILE,
                               extra_tiles=(32,), progress=False), str(tmp_path / "b"))
    with pytest.raises(UserError, match="not empty"):
        convert(ConvertOptions(str(fp32["ckpt"]), target="executorch-dispatch", strategy="hard", tile=TILE,
                               progress=False), str(fp32["out"]))
    from nsr_edge.converters.executorch_dispatch import build_plan

    d4 = ST.with_(cardinality=4)
    with pytest.raises(UserError, match="cardinality"):
        build_plan(to_deploy(build_model(d4), "hard"))
    with pytest.raises(UserError, match="shared routing"):
        build_plan(to_deploy(build_model(ST), "hard"), mode="block")
    from nsr_edge.runtime.runners.dispatch_runner import open_session

    with pytest.raises(UserError, match="forward"):
        open_session(str(fp32["out"] / "model.pte"), "stem")


# ---- INT8 and block-fused (shared routing): per-bank calibrated static INT8 programs, FP32 routers (formerly test_dispatch_int8.py)

SHARED = ModelConfig("wdsr_nsr", 2, 3, blocks=1, width=8, width_multiplier=2.0, banks=2, cardinality=1,
                     routing=RoutingConfig(kind="straight_through", shared=True))


@pytest.fixture(scope="module")
def int8(tmp_path_factory):
    return _convert(tmp_path_factory.mktemp("dispatch8"), SHARED, recipe="int8-ptq", calibration_tiles=16,
                    calibration_dataset="set5")


def test_block_programs_equal_the_hard_model_in_pytorch():
    for cfg, mode, fuse_tail, calls in ((SHARED, "block", True, 2), (SHARED, "block", False, 3),
                                        (SHARED, "layer", True, 3), (SHARED, "layer", False, 4)):
        hard = to_deploy(_model(cfg), "hard")
        plan = build_plan(hard, mode, fuse_tail)
        assert plan.mode == mode and len(plan.stages) == calls
        x = torch.from_numpy(real_tiles(6))
        with torch.no_grad():
            ref = hard(x)
        got = torch.cat([run_programs(plan.programs, plan.stages, x[i : i + 1]) for i in range(len(x))])
        assert (got - ref).abs().max() < 1e-5


def test_int8_card_block_mode_float_routers(int8):
    plan = int8["card"]["target_extra"]["dispatch"]
    assert plan["mode"] == "block" and [s["name"] for s in plan["stages"]] == ["stem", "block0+tail"]
    assert plan["routers"] == "float32" and "routing" in int8["card"]["recipe"]["fp32_parts"]
    cal = plan["calibration"]
    assert cal["per_bank"] and cal["per_program_tiles"]["stem"] == 16
    assert cal["per_program_tiles"]["b0_k0"] + cal["per_program_tiles"]["b0_k1"] == 16
    for name, p in plan["programs"].items():  # everything delegated, the tail's layout changes included
        assert p["partitions"] >= 1 and p["outside"] == {}, (name, p)


def test_int8_artifact_close_to_fp32_and_routes_alike(int8):
    from nsr_edge.runtime.runners.dispatch_runner import DispatchSession

    tiles = real_tiles()
    hard = to_deploy(int8["model"], "hard")
    plan = build_plan(hard)
    want = []
    for i in range(len(tiles)):
        rec = {}
        run_programs(plan.programs, plan.stages, torch.from_numpy(tiles[i : i + 1]), rec)
        want.append([b for st in plan.stages if len(st["methods"]) > 1 for b, _ in rec[st["name"]]])
    with torch.no_grad():
        ref = hard(torch.from_numpy(tiles)).numpy()
    session = DispatchSession(str(int8["out"] / "model.pte"))
    try:
        out = session.run(tiles)
        routes = session.last_routes
    finally:
        session.close()
    rel = np.linalg.norm(out - ref) / np.linalg.norm(ref - 0.5)
    assert rel < 0.05, rel
    agree = np.mean([a == b for ra, rb in zip(routes, want) for a, b in zip(ra, rb)])
    assert agree >= 0.9, (routes, want)
