"""executorch-dispatch, INT8 and block-fused (shared routing): per-bank calibrated static INT8 programs, FP32 routers.

Tiny shared-routing straight-through model (1 block, width 8, k=2): one fused program per bank, INT8 PTQ through the
real pipeline and runtime; the artifact stays close to the FP32 hard model and routes like it.
"""

import numpy as np
import pytest
import torch

from nsr_edge.checkpoint import Checkpoint, save_checkpoint
from nsr_edge.converters.executorch_dispatch import build_plan, run_programs
from nsr_edge.converters.pipeline import ConvertOptions, convert
from nsr_edge.deploy import to_deploy
from nsr_edge.layers import RoutingConfig
from nsr_edge.models import ModelConfig, build_model
from nsr_edge.runtime import datasets, tiling
from nsr_edge.runtime.tasks import TaskSpec

TILE = 24


def _model(cfg):  # as in test_dispatch.py: routers with real spread, so real tiles use both banks
    torch.manual_seed(0)
    m = build_model(cfg)
    with torch.no_grad():
        for mod in m.modules():
            if getattr(mod, "mlp", None) is not None:
                mod.mlp[0].weight.mul_(40.0)
    return m.eval()


def real_tiles(n=12):
    pair = datasets.list_eval_images("set5", 2)[0]
    x, _ = datasets.make_input(pair, "sr", 2)
    tiles, _ = tiling.split(x, tiling.deploy_spec(TILE))
    return np.ascontiguousarray(tiles[:: max(1, len(tiles) // n)][:n], dtype=np.float32)

SHARED = ModelConfig("wdsr_nsr", 2, 3, blocks=1, width=8, width_multiplier=2.0, banks=2, cardinality=1,
                     routing=RoutingConfig(kind="straight_through", shared=True))


@pytest.fixture(scope="module")
def int8(tmp_path_factory):
    root = tmp_path_factory.mktemp("dispatch8")
    model = _model(SHARED)
    ckpt = root / "shared.pt"
    save_checkpoint(Checkpoint(SHARED, model.state_dict(), {"task": TaskSpec("sr", scale=2).to_dict()}), ckpt)
    out, card = convert(ConvertOptions(str(ckpt), target="executorch-dispatch", strategy="hard", recipe="int8-ptq",
                                       tile=TILE, calibration_tiles=16, calibration_dataset="set5", progress=False),
                        str(root / "int8"))
    return {"out": out, "card": card, "model": model}


def test_block_programs_equal_the_hard_model_in_pytorch():
    for cfg, mode, calls in ((SHARED, "block", 3), (SHARED, "layer", 4)):
        hard = to_deploy(_model(cfg), "hard")
        plan = build_plan(hard, mode)
        assert plan.mode == mode and len(plan.stages) == calls
        x = torch.from_numpy(real_tiles(6))
        with torch.no_grad():
            ref = hard(x)
        got = torch.cat([run_programs(plan.programs, plan.stages, x[i : i + 1]) for i in range(len(x))])
        assert (got - ref).abs().max() < 1e-5


def test_int8_card_block_mode_float_routers(int8):
    plan = int8["card"]["target_extra"]["dispatch"]
    assert plan["mode"] == "block" and [s["name"] for s in plan["stages"]] == ["stem", "block0", "tail"]
    assert plan["routers"] == "float32" and "routing" in int8["card"]["recipe"]["fp32_parts"]
    cal = plan["calibration"]
    assert cal["per_bank"] and cal["per_program_tiles"]["stem"] == 16
    assert cal["per_program_tiles"]["b0_k0"] + cal["per_program_tiles"]["b0_k1"] == 16
    for name, p in plan["programs"].items():
        assert p["partitions"] >= 1 and p["delegated_ops"] == p["total_ops"], name


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
