"""The LiteRT target: a tiny checkpoint converted through the CLI (FP32 with an extra tile, INT8 by ai-edge-quantizer)
runs in the LiteRT interpreter and equals the deploy form (FP32) or stays within a stated drop (INT8, the recipe's
float parts kept float); validate/profile run it; refused strategies, Flex/custom ops and a corrupt file are one
line each."""

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
from nsr_edge.models import ModelConfig, build_model  # noqa: E402
from nsr_edge.runtime.card import read_card_json  # noqa: E402
from nsr_edge.runtime.runners.child import RunnerProcess  # noqa: E402
from nsr_edge.runtime.tasks import TaskSpec  # noqa: E402

TILE = 32
SOFT = ModelConfig("wdsr_nsr", 2, 3, blocks=2, width=8, width_multiplier=2.0, banks=3, cardinality=1)
INT8_MAX_DROP_DB = 0.3  # tiny random-weight model, 8 calibration tiles; the zoo model's measured drop: docs/litert.md


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    root = tmp_path_factory.mktemp("litert")
    torch.manual_seed(0)
    model = build_model(SOFT).eval()
    with torch.no_grad():  # routing heads with visible spread, so the gates really differ per tile
        for name, p in model.named_parameters():
            if "head" in name or "routing" in name:
                p.mul_(20.0)
    ckpt = root / "soft.pt"
    save_checkpoint(Checkpoint(SOFT, model.state_dict(), {"task": TaskSpec("sr", scale=2).to_dict()}), ckpt)
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
    line = one_line_error(run_cli("convert", "--model", arts["ckpt"], "--target", "litert", "--strategy", "hard",
                                  "--out", tmp_path / "h"))
    assert "refuses --strategy hard" in line and "_assert_async" in line
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
