"""The LiteRT target: a tiny checkpoint converted through the CLI (FP32 with an extra tile, INT8 by ai-edge-quantizer)
runs in the LiteRT interpreter and equals the deploy form (FP32) or stays within a stated drop (INT8, the recipe's
float parts kept float); validate/profile run it; refused requests, Flex/custom ops and a corrupt file are one
line each. Hard routing (``--strategy hard``): executorch-dispatch's plan as one .tflite with a signature per
program, run by the dispatch loop in the litert runner: FP32 equals the PyTorch plan, INT8 close to it."""

import json

import helpers
import numpy as np
import pytest
import torch
from helpers import artifact_vouched_by_card, one_line_error, run_cli

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_quantizer")

from nsr_edge.checkpoint import Checkpoint, save_checkpoint  # noqa: E402
from nsr_edge.deploy import to_deploy  # noqa: E402
from nsr_edge.layers import RoutingConfig  # noqa: E402
from nsr_edge.models import ModelConfig, build_model  # noqa: E402
from nsr_edge.runtime.card import read_card_json  # noqa: E402
from nsr_edge.runtime.runners.child import RunnerProcess  # noqa: E402
from nsr_edge.runtime.tasks import TaskSpec  # noqa: E402

TILE = 32
SOFT = ModelConfig("wdsr_nsr", 2, 3, blocks=2, width=8, width_multiplier=2.0, banks=3, cardinality=1)
INT8_MAX_DROP_DB = 0.3  # tiny random-weight model, 8 calibration tiles; the zoo model's measured drop: docs/litert.md


def _checkpoint(path, cfg, parts, gain):
    """A seeded model of ``cfg`` saved as a checkpoint; the parameters whose names hold one of ``parts`` scaled by
    ``gain`` (routing with visible spread, so that real tiles really differ in gates or banks)."""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(part in name for part in parts):
                p.mul_(gain)
    save_checkpoint(Checkpoint(cfg, model.state_dict(), {"task": TaskSpec("sr", scale=2).to_dict()}), path)
    return model, path


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    root = tmp_path_factory.mktemp("litert")
    model, ckpt = _checkpoint(root / "soft.pt", SOFT, ("head", "routing"), 20.0)
    out = {"model": model, "ckpt": ckpt}
    for name, args in (("fp32", ("--extra-tiles", "48")), ("int8", ("--quant", "int8-ptq", "--calibration-tiles", "8"))):
        r = run_cli("convert", "--model", ckpt, "--target", "litert", "--tile", TILE, "--quiet", "--out", root / name,
                    *args)
        assert r.returncode == 0, r.stderr[-800:]
        out[name] = root / name
    return out


def test_fp32_equals_eager_and_the_card_says_what_ran(arts):
    tiles = helpers.real_tiles(TILE, 10, "set14", 2)
    with torch.no_grad():
        ref = to_deploy(arts["model"], "output-mix")(torch.from_numpy(tiles)).numpy()
    with RunnerProcess("litert", str(arts["fp32"] / "model.tflite"), "forward", 1) as proc:
        out = proc.run(tiles)
    assert out.shape == ref.shape and np.abs(out - ref).max() < 1e-4
    card = read_card_json(arts["fp32"])
    assert (card["target"], card["runner"], card["artifact"]["file"]) == ("litert", "litert", "model.tflite")
    assert [m["name"] for m in card["methods"]] == ["forward", "forward_48x48"]
    lit = card["target_extra"]["litert"]["methods"]["forward"]
    assert lit["inputs"][0]["dtype"] == "float32" and lit["inputs"][0]["shape"] == [1, 3, TILE, TILE]
    assert lit["ops"]["CONV_2D"] >= 2 * SOFT.blocks and not lit["int8_ops"]
    d = card["delegation"]["methods"]["forward"]
    assert d["total_ops"] == lit["total_ops"] and d["delegated_ops"] == lit["xnnpack_ops"] > 0
    # the extra tile: its own file, its own method
    x48 = np.pad(tiles[:2, :, :24, :24], ((0, 0), (0, 0), (12, 12), (12, 12)), mode="reflect")
    assert (arts["fp32"] / "model_forward_48x48.tflite").is_file()
    with RunnerProcess("litert", str(arts["fp32"] / "model.tflite"), "forward_48x48", 1) as proc:
        out = proc.run(x48)
    with torch.no_grad():
        ref = to_deploy(arts["model"], "output-mix")(torch.from_numpy(x48)).numpy()
    assert np.abs(out - ref).max() < 1e-4


def test_validate_and_profile(arts):
    r = run_cli("validate", arts["fp32"], "--dataset", "set5", "--limit", "2", "--json", "--quiet",
                "--reference", arts["ckpt"], "--max-abs", "1e-4")
    assert r.returncode == 0, r.stderr[-600:]
    assert abs(json.loads(r.stdout)["summary"]["drop_db"]) < 1e-3
    r = run_cli("validate", arts["int8"], "--dataset", "set5", "--limit", "2", "--json", "--quiet",
                "--reference", arts["ckpt"], "--max-drop-db", INT8_MAX_DROP_DB)
    assert r.returncode == 0, r.stderr[-600:]
    r = run_cli("profile", arts["int8"], "--threads", "1", "--runs", "3", "--json")
    assert r.returncode == 0, r.stderr[-600:]
    assert json.loads(r.stdout)["median_ms"] > 0


def test_int8_keeps_the_recipe_float_parts_float(arts):
    card = read_card_json(arts["int8"])
    extra = card["target_extra"]["litert"]
    assert extra["quantizer"]["recipe"] == "static_wi8_ai8" and extra["quantizer"]["calibration_tiles"] == 8
    assert set(extra["quantizer"]["fp32_parts"]) == set(card["recipe"]["fp32_parts"])
    fwd = extra["methods"]["forward"]
    # the default recipe keeps everything but the bank convs float: exactly the 2 sparse convs per block are int8
    assert fwd["int8_ops"].get("CONV_2D") == 2 * SOFT.blocks
    assert set(fwd["int8_ops"]) <= {"CONV_2D", "QUANTIZE"}
    for io in fwd["inputs"] + fwd["outputs"]:  # read back from the interpreter: float I/O here, scale 0
        assert io["dtype"] in ("float32", "int8") and (io["dtype"] == "float32") == (io["scale"] == 0.0)


def test_refusals_and_bad_files_are_one_line(arts, tmp_path):
    assert "does not support recipe int8-qat" in one_line_error(run_cli(
        "convert", "--model", arts["ckpt"], "--target", "litert", "--quant", "int8-qat", "--out", tmp_path / "q"))
    broken = artifact_vouched_by_card(arts["fp32"], tmp_path / "broken", b"TFL3garbage" * 20)
    assert "not a loadable LiteRT model" in one_line_error(run_cli("validate", broken, "--dataset", "set5"))


def test_custom_ops_are_found():
    """A flatbuffer whose operator code is CUSTOM (what a Flex op is) is named by custom_ops, which lower refuses."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema
    from nsr_edge.converters.litert import convert_fp32, custom_ops

    data = convert_fp32(torch.nn.Conv2d(3, 3, 3, padding=1).eval(), torch.rand(1, 3, 8, 8))
    assert custom_ops(data) == []
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    model.operatorCodes[0].builtinCode = model.operatorCodes[0].deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    model.operatorCodes[0].customCode = "FlexConv2D"
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    assert custom_ops(bytes(builder.Output())) == ["FlexConv2D"]


# ---- hard routing: the dispatch plan as signatures of one .tflite

HARD = ModelConfig("wdsr_nsr", 2, 3, blocks=1, width=8, width_multiplier=2.0, banks=2, cardinality=1,
                   routing=RoutingConfig(kind="straight_through"))
HARD_TILE = 24


@pytest.fixture(scope="module")
def hard(tmp_path_factory):
    root = tmp_path_factory.mktemp("litert-hard")
    model, ckpt = _checkpoint(root / "hard.pt", HARD, ("mlp.0.weight",), 40.0)  # real tiles go to both banks
    out = {"model": model, "ckpt": ckpt}
    for name, args in (("fp32", ()), ("int8", ("--quant", "int8-ptq", "--calibration-tiles", "16",
                                                "--calibration-dataset", "set5"))):
        r = run_cli("convert", "--model", ckpt, "--target", "litert", "--strategy", "hard", "--tile", HARD_TILE,
                    "--quiet", "--out", root / name, *args)
        assert r.returncode == 0, r.stderr[-800:]
        out[name] = root / name
    return out


def _plan_reference(model, tiles):
    """The PyTorch plan (executorch-dispatch's programs) on each tile, and its routes."""
    from nsr_edge.converters.executorch_dispatch import build_plan, run_programs

    plan = build_plan(to_deploy(model, "hard"))
    outs, routes = [], []
    for i in range(len(tiles)):
        rec = {}
        outs.append(run_programs(plan.programs, plan.stages, torch.from_numpy(tiles[i : i + 1]), rec))
        routes.append([b for st in plan.stages if len(st["methods"]) > 1 for b, _ in rec[st["name"]]])
    return torch.cat(outs).numpy(), routes, plan


def test_hard_card_has_the_dispatch_plan_of_executorch_dispatch(hard):
    card = read_card_json(hard["fp32"])
    assert (card["target"], card["runner"], card["strategy"]) == ("litert", "litert", "hard")
    plan = card["target_extra"]["dispatch"]
    _, _, ref = _plan_reference(hard["model"], helpers.real_tiles(HARD_TILE, 1))
    assert plan["stages"] == ref.stages and plan["layout"] == "channels_last" and plan["io_dtype"] == "float32"
    assert set(plan["programs"]) == set(ref.programs)
    for name, p in plan["programs"].items():  # every program one XNNPACK partition, nothing outside
        assert p["partitions"] == 1 and p["delegated_ops"] == p["total_ops"] > 0 and not p["outside"], name
    sigs = card["target_extra"]["litert"]["programs"]
    assert sigs["stem"]["inputs"][0]["shape"] == [1, HARD_TILE, HARD_TILE, 3]  # channels-last I/O
    assert card["methods"][0]["input_shape"] == [1, 3, HARD_TILE, HARD_TILE]


def test_hard_fp32_equals_the_pytorch_plan_and_routes_alike(hard):
    tiles = helpers.real_tiles(HARD_TILE, 12)
    ref, want, _ = _plan_reference(hard["model"], tiles)
    from nsr_edge.runtime.runners.litert_runner import LiteRTDispatchSession, open_session

    session = open_session(str(hard["fp32"] / "model.tflite"))
    try:
        assert isinstance(session, LiteRTDispatchSession)
        out = session.run(tiles)
        routes = session.last_routes
    finally:
        session.close()
    assert np.abs(out - ref).max() < 1e-5
    assert routes == want and {r for row in routes for r in row} == {0, 1}, "both banks used"
    with RunnerProcess("litert", str(hard["fp32"] / "model.tflite")) as proc:  # as validate/profile run it
        assert np.abs(proc.run(tiles[:3]) - ref[:3]).max() < 1e-5


def test_hard_int8_quantizes_the_bank_convs_per_signature(hard):
    card = read_card_json(hard["int8"])
    plan = card["target_extra"]["dispatch"]
    assert plan["routers"] == "float32" and plan["calibration"]["per_program_tiles"]["stem"] == 16
    for name, p in card["target_extra"]["litert"]["programs"].items():
        banks = 0 if name == "stem" else 1  # exactly the bank conv is int8; routers, image-side convs, adds float
        assert p["int8_ops"].get("CONV_2D", 0) == banks, (name, p["int8_ops"])
        assert {io["dtype"] for io in p["inputs"] + p["outputs"]} == {"float32"}, name  # the plan's float I/O
    tiles = helpers.real_tiles(HARD_TILE, 12)
    ref, want, _ = _plan_reference(hard["model"], tiles)
    with RunnerProcess("litert", str(hard["int8"] / "model.tflite")) as proc:
        out = proc.run(tiles)
    rel = np.linalg.norm(out - ref) / np.linalg.norm(ref - 0.5)
    assert rel < 0.05, rel


def test_hard_validate_and_profile(hard):
    r = run_cli("validate", hard["fp32"], "--dataset", "set5", "--limit", "1", "--json", "--quiet",
                "--reference", hard["ckpt"], "--max-abs", "1e-4")
    assert r.returncode == 0, r.stderr[-600:]
    r = run_cli("profile", hard["int8"], "--threads", "1", "--runs", "3", "--json")
    assert r.returncode == 0, r.stderr[-600:]
    assert json.loads(r.stdout)["median_ms"] > 0


def test_hard_refusals_are_one_line(hard, tmp_path):
    assert "one tile size" in one_line_error(run_cli(
        "convert", "--model", hard["ckpt"], "--target", "litert", "--strategy", "hard", "--tile", HARD_TILE,
        "--extra-tiles", "32", "--out", tmp_path / "x"))
    d2 = tmp_path / "d2.pt"
    cfg = HARD.with_(cardinality=2, banks=2)
    save_checkpoint(Checkpoint(cfg, build_model(cfg).state_dict(), {"task": TaskSpec("sr", scale=2).to_dict()}), d2)
    assert "needs cardinality d=1" in one_line_error(run_cli(
        "convert", "--model", d2, "--target", "litert", "--strategy", "hard", "--tile", HARD_TILE,
        "--out", tmp_path / "d"))
    from nsr_edge.runtime.runners.litert_runner import open_session

    with pytest.raises(Exception, match="forward"):
        open_session(str(hard["fp32"] / "model.tflite"), "stem")
