"""Core ML through the shared pipeline: `nsr-edge convert --target coreml / executorch-coreml`, then `validate`
(MIL evaluator on Linux) and `profile` (needs a Mac: one-line error here). Tiny checkpoints, 32 px tiles."""

import hashlib
import json
import logging

import numpy as np
import pytest
import torch

pytest.importorskip("coremltools")
pytest.importorskip("executorch")

from nsr_edge.runtime.coreml_mil import MilEvaluator, coreml_payloads, load_artifact
from nsr_edge.runtime.files import path_digest

from nsr_edge.checkpoint import Checkpoint, save_checkpoint
from nsr_edge.cli import main
from nsr_edge.models import ModelConfig, build_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(ModelConfig("wdsr_nsr", 2, 3, 1, 8, 2.0, 4, 4)).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(Checkpoint(model.config, model.state_dict()), path)
    return path, model


@pytest.fixture(scope="module")
def gray_checkpoint(tmp_path_factory):
    """A scale-1 gray model (a checkpoint without a task is taken as sigma-25 denoising, like the zoo's
    nsr_denoise_s25_gray / nsr_jpeg_q10_gray)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig("wdsr_nsr", 1, 1, 1, 8, 2.0, 4, 4)).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny_gray.pt"
    save_checkpoint(Checkpoint(model.config, model.state_dict()), path)
    return path, model


def test_coreml_target_card_validate_profile(checkpoint, tmp_path):
    ckpt, model = checkpoint
    out = tmp_path / "art"
    assert main(["convert", "--model", str(ckpt), "--target", "coreml", "--quant", "fp32", "--tile", "32",
                 "--extra-tiles", "48", "--out", str(out), "--quiet"]) == 0
    card = json.loads((out / "model.json").read_text())
    assert card["target"] == "coreml" and card["runner"] == "coreml"
    assert (card["artifact"]["file"], card["artifact"]["kind"]) == ("model.mlpackage", "directory")
    assert (out / "model.mlpackage" / "Manifest.json").is_file()  # the folder Xcode takes, no unzip step
    digest = path_digest(out / "model.mlpackage")
    assert {k: card["artifact"][k] for k in digest} == digest
    assert [m["name"] for m in card["methods"]] == ["forward", "forward_48x48"]
    fields = card["target_extra"]["coreml"]
    assert (fields["compute_precision"], fields["deployment_target"], fields["compute_units_recommendation"]) == \
        ("fp32", "iOS17", "CPU_AND_GPU")
    assert fields["tiles"] == [32, 48]
    package = load_artifact(out / "model.mlpackage")
    assert package.inputs[0].enumerated_shapes == ((1, 3, 32, 32), (1, 3, 48, 48))
    x = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(MilEvaluator(package).run({"input": x.numpy()})["output"] - ref).max() <= 1e-6
    assert main(["validate", str(out), "--dataset", "set5", "--limit", "1", "--max-abs", "1e-5", "--quiet",
                 "--reference", str(ckpt)]) == 0
    assert main(["convert", "--model", str(ckpt), "--target", "coreml", "--out", str(out), "--quiet"]) == 2  # no --force
    assert main(["profile", str(out), "--runs", "2"]) == 2  # Core ML latency needs a Mac
    again = tmp_path / "again"  # converting twice gives the same package, byte for byte
    assert main(["convert", "--model", str(ckpt), "--target", "coreml", "--quant", "fp32", "--tile", "32",
                 "--extra-tiles", "48", "--out", str(again), "--quiet"]) == 0
    assert json.loads((again / "model.json").read_text())["artifact"] == card["artifact"]


def test_coreml_w8a8_scale1_gray_uses_the_pipeline_tiles(gray_checkpoint, tmp_path):
    """w8a8 converts a scale-1 gray (denoising) model, calibrated on the tiles the pipeline cut, honouring
    --calibration-dataset / --calibration-tiles; the package validates within the w8a8 tolerance."""
    from nsr_edge.runtime.tasks import TaskSpec

    from nsr_edge import quant

    ckpt, _ = gray_checkpoint
    cards = {}
    for name, extra in (("default", []), ("set12", ["--calibration-dataset", "set12"])):
        out = tmp_path / name
        assert main(["convert", "--model", str(ckpt), "--target", "coreml", "--quant", "w8a8", "--tile", "32",
                     "--calibration-tiles", "4", *extra, "--out", str(out), "--quiet"]) == 0
        cards[name] = json.loads((out / "model.json").read_text())
    card = cards["default"]
    assert card["model"]["task"]["name"] == "denoise" and card["model"]["channels"] == 1
    package = load_artifact(tmp_path / "default" / "model.mlpackage")
    assert package.inputs[0].shape == (1, 1, 32, 32)
    assert package.op_counts()["quantize"] > 0 and MilEvaluator(package).lint_quantization() == []
    # the w8a8 target of docs/coreml.md (drop <= 0.15 dB), and close to the FP32 model on the whole image
    assert main(["validate", str(tmp_path / "default"), "--dataset", "set12", "--limit", "1", "--max-drop-db", "0.15",
                 "--min-psnr-vs-reference", "40", "--quiet", "--reference", str(ckpt)]) == 0
    task = TaskSpec("denoise", noise=25.0, channels=1)
    for name, dataset in (("default", None), ("set12", "set12")):
        calib = cards[name]["target_extra"]["coreml"]["calibration"]
        tiles = quant.calibration_tiles(task, 32, 4, 0, dataset, progress=False)
        assert (calib["tiles"], calib["tile"], calib["seed"]) == (4, 32, 0)
        assert calib["tiles_sha256"] == hashlib.sha256(tiles.tobytes()).hexdigest()  # exactly those tiles
        assert cards[name]["quantization"]["calibration"]["dataset"] == (dataset or task.train_set)
    assert cards["default"]["artifact"]["sha256"] != cards["set12"]["artifact"]["sha256"]


def test_executorch_coreml_pte_payload_is_validated(checkpoint, tmp_path, caplog):
    ckpt, model = checkpoint
    out = tmp_path / "pte"
    with caplog.at_level(logging.INFO):
        assert main(["convert", "--model", str(ckpt), "--target", "executorch-coreml", "--quant", "fp32",
                     "--tile", "32", "--extra-tiles", "48", "--out", str(out), "--quiet"]) == 0
    assert not [r for r in caplog.records if r.name.startswith("executorch.backends.apple.coreml")]
    card = json.loads((out / "model.json").read_text())
    assert card["target"] == "executorch-coreml" and card["runner"] == "coreml"
    assert card["delegation"]["backend"] == "CoreML"
    pte = (out / "model.pte").read_bytes()
    payloads = coreml_payloads(pte)
    assert len(payloads) == 1 and sorted(payloads[0].functions) == ["forward", "forward_48x48"]
    for function, tile in (("forward", 32), ("forward_48x48", 48)):
        ev = MilEvaluator(payloads[0], function)
        x = torch.rand(1, 3, tile, tile)
        with torch.no_grad():
            ref = model(x).numpy()
        out_name = payloads[0].outputs_of(function)[0].name
        assert np.abs(ev.run({ev.input_names[0]: x.numpy()})[out_name] - ref).max() <= 1e-6
    assert main(["validate", str(out), "--dataset", "set5", "--limit", "1", "--max-abs", "1e-5", "--quiet",
                 "--reference", str(ckpt)]) == 0


def test_recipes_are_declared(checkpoint):
    from nsr_edge.converters.base import get_recipe, get_target

    assert set(get_target("coreml").capabilities.recipes) == {"fp32", "fp16", "w8", "w8a8", "int8-qat"}
    assert get_recipe("w8").weights == "int8" and get_recipe("w8").activations == "fp16"
    assert get_recipe("w8a8").activations == "int8"
    assert main(["convert", "--model", str(checkpoint[0]), "--target", "executorch-coreml", "--quant", "w8a8",
                 "--out", "/nonexistent/never", "--quiet"]) == 2


def test_executorch_coreml_w8_payload_has_int8_weights(checkpoint):
    from nsr_edge.converters.base import LoweringContext, get_recipe, get_target
    from nsr_edge.converters.coreml import deploy_for_coreml

    _, model = checkpoint
    result = get_target("executorch-coreml").lower(deploy_for_coreml(model), [torch.rand(1, 3, 24, 24)],
                                                    LoweringContext(get_recipe("w8")))
    payload = coreml_payloads(result.files["model.pte"])[0]
    assert payload.op_counts()["constexpr_affine_dequantize"] > 0
    assert result.extra["coreml"]["compute_precision"] == "fp16"
    ev = MilEvaluator(payload)
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        ref = model(x).numpy()
    out = ev.run({ev.input_names[0]: x.numpy()})[ev.output_names[0]]
    assert np.abs(out - ref).max() < 0.03
