"""Validation and profiling of an artifact: the commands, tolerances, the card/artifact checks, crash isolation."""

import hashlib
import json
import os
import shutil
import signal

import numpy as np
import pytest
from helpers import one_line_error, run_cli, tiny_checkpoint
from nsr_edge.converters.pipeline import ConvertOptions, convert
from nsr_edge.runtime import validate as V
from nsr_edge.runtime.card import CardError, artifact_path, load_card, read_card_json
from nsr_edge.runtime.profile import latency_stats
from nsr_edge.runtime.runners.child import RunnerCrash, RunnerProcess
from nsr_edge.runtime.tasks import TaskSpec
from nsr_edge.runtime.tiling import deploy_spec


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("val")
    ckpt = tiny_checkpoint(root / "tiny.pt")
    opts = ConvertOptions(str(ckpt), recipe="int8-ptq", tile=32, calibration_tiles=8, calibration_dataset="set5",
                          progress=False)
    path, _ = convert(opts, str(root / "int8"))
    return {"ckpt": ckpt, "int8-ptq": path, "fp32": path}


def test_validate_and_profile_commands(artifacts):
    r = run_cli("validate", artifacts["int8-ptq"], "--dataset", "set5", "--limit", "2", "--json", "--quiet",
                "--record", "--reference", artifacts["ckpt"])
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert set(rep["summary"]) >= {"psnr_y", "ssim_y", "psnr_y_fp32", "drop_db", "psnr_vs_reference",
                                   "max_abs_vs_reference", "images"}
    s = rep["summary"]
    assert s["images"] == 2 and len(rep["images"]) == 2
    assert abs(s["drop_db"] - (s["psnr_y_fp32"] - s["psnr_y"])) < 1e-5
    assert read_card_json(artifacts["int8-ptq"])["validation"][-1]["summary"]["images"] == 2
    # an impossible tolerance makes it fail loudly
    r = run_cli("validate", artifacts["int8-ptq"], "--dataset", "set5", "--limit", "1", "--quiet",
                "--max-drop-db", "-5", "--reference", artifacts["ckpt"])
    assert r.returncode == 1 and "FAILED" in r.stderr
    r = run_cli("profile", artifacts["fp32"], "--runs", "5", "--warmup", "1", "--json", "--per-op")
    assert r.returncode == 0, r.stderr
    prof = json.loads(r.stdout)
    assert {"median_ms", "p90_ms", "threads", "tile", "ms_per_megapixel"} <= set(prof)
    assert prof["threads"] == 1 and prof["tile"] == 32 and prof["median_ms"] > 0
    assert prof["per_op"]["ops"] and any("Convolution" in o["name"] for o in prof["per_op"]["ops"])


def test_corrupt_or_mismatched_artifacts_are_one_line_errors(artifacts, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(artifacts["fp32"], bad)
    (bad / "model.pte").write_bytes(b"\0" * 64)
    assert "does not match its model card" in one_line_error(run_cli("validate", bad, "--limit", "1"))
    card = json.loads((bad / "model.json").read_text())
    card["artifact"].update(bytes=64, sha256=hashlib.sha256(b"\0" * 64).hexdigest())
    (bad / "model.json").write_text(json.dumps(card))
    assert "not a loadable ExecuTorch program" in one_line_error(run_cli("profile", bad, "--runs", "1"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "model.pte").write_bytes(b"PK\x03\x04 not ours")
    assert "model card" in one_line_error(run_cli("validate", foreign, "--limit", "1"))


def test_runtime_abort_becomes_aone_line_error(artifacts):
    with RunnerProcess("executorch", str(artifacts["int8-ptq"] / "model.pte")) as p:
        os.kill(p.proc.pid, signal.SIGABRT)
        p.proc.wait()
        with pytest.raises(RunnerCrash, match="SIGABRT"):
            p.run(np.zeros((1, 3, 32, 32), np.float32))


def test_validation_loop_metrics_and_tolerances():
    rng = np.random.default_rng(0)
    task = TaskSpec("sr", scale=2)
    gt = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    x = gt[::2, ::2].transpose(2, 0, 1).astype(np.float32) / 255

    def up(b):  # nearest 2x: a stand-in model
        return b.repeat(2, axis=2).repeat(2, axis=3)

    def up_noisy(b):
        return up(b) + 0.01

    rep = V.validate_images([("a", x, gt)], task, deploy_spec(24), up_noisy, up, progress=False)
    s = rep["summary"]
    assert s["images"] == 1 and abs(s["max_abs_vs_reference"] - 0.01) < 1e-5
    assert abs(s["drop_db"] - (s["psnr_y_fp32"] - s["psnr_y"])) < 1e-9 and s["drop_db"] > 0
    assert V.check(s, V.Tolerances(max_drop_db=s["drop_db"] + 0.01)) == []
    assert len(V.check(s, V.Tolerances(max_drop_db=0.0, max_abs_vs_reference=1e-4))) == 2
    assert "mean (1 images)" in V.format_report(rep)
    with pytest.raises(Exception, match="smaller than the artifact"):
        V.validate_images([("a", x, gt)], task, deploy_spec(64), up, None, progress=False)
    stats = latency_stats([0.001, 0.002, 0.003, 0.004])
    assert stats["median_ms"] == 2.5 and stats["p90_ms"] == pytest.approx(3.7)


def test_card_checks(artifacts, tmp_path):
    card = load_card(artifacts["int8-ptq"])
    assert artifact_path(artifacts["int8-ptq"], card).name == "model.pte"
    (tmp_path / "model.json").write_text(json.dumps({"schema": "something-else"}))
    with pytest.raises(CardError, match="not an nsr-edge model card"):
        load_card(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(CardError, match="JSON"):
        load_card(tmp_path)


def test_record_from_a_folder_of_images_keeps_the_card_portable(artifacts, tmp_path):
    """--dataset-dir with an absolute path: the record names the folder, not this machine's path."""
    from PIL import Image

    folder = tmp_path / "my photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (128, 160, 3), dtype=np.uint8)).save(folder / "a.png")
    r = run_cli("validate", artifacts["int8-ptq"], "--dataset-dir", folder.resolve(), "--quiet", "--record",
                "--reference", artifacts["ckpt"])
    assert r.returncode == 0, r.stderr
    records = read_card_json(artifacts["int8-ptq"])["validation"]
    assert records[-1]["dataset"] == "my photos" and records[-1]["images"] == 1


def test_convert_stores_reference_outputs_deterministically(artifacts, tmp_path):
    """reference.npz: 4 real set5 tiles and the FP32 PyTorch outputs on them, recorded in the card; the same
    conversion gives the same bytes (fixed tiles, fixed zip dates); validate --stored-reference reads it."""
    import zipfile

    from nsr_edge.evaluate import torch_tile_fn
    from nsr_edge.runtime.reference_outputs import load_reference_outputs

    card = load_card(artifacts["int8-ptq"])
    ro = card.reference_outputs
    assert (ro.file, ro.tiles, ro.dataset, ro.input_shape, ro.output_shape) == (
        "reference.npz", 4, "set5", [4, 3, 32, 32], [4, 3, 64, 64])
    data = (artifacts["int8-ptq"] / "reference.npz").read_bytes()
    assert hashlib.sha256(data).hexdigest() == ro.sha256
    with zipfile.ZipFile(artifacts["int8-ptq"] / "reference.npz") as zf:
        assert [(i.filename, i.date_time) for i in zf.infolist()] == [("inputs.npy", (1980, 1, 1, 0, 0, 0)),
                                                                      ("outputs.npy", (1980, 1, 1, 0, 0, 0))]
    x, y = load_reference_outputs(artifacts["int8-ptq"], card)
    assert x.dtype == y.dtype == np.float32 and 0 <= x.min() and x.max() <= 1 and x.std() > 0.05  # real image tiles
    from nsr_edge import hub

    ref = torch_tile_fn(hub.resolve(str(artifacts["ckpt"]), require_trained=True).build())(x)
    assert np.array_equal(ref, y)
    opts = ConvertOptions(str(artifacts["ckpt"]), tile=32, progress=False)
    again, _ = convert(opts, str(tmp_path / "fp32"))
    assert (again / "reference.npz").read_bytes() == data  # another recipe, same tile: the same reference
    assert not [p for p in again.iterdir() if p.name.startswith(".")]
    r = run_cli("validate", again, "--stored-reference", "--json", "--max-abs", "1e-4", "--record")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["reference"] == "stored" and rep["summary"]["max_abs_vs_reference"] < 1e-4
    assert read_card_json(again)["validation"][-1]["summary"]["reference_tiles"] == 4
