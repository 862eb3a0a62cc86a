"""The device-side environment (`make test-runtime`: numpy<2, Pillow, tflite-runtime 2.14.0, onnxruntime, no torch):
``nsr-edge validate`` and ``nsr-edge profile`` run ``.tflite`` and ``.onnx`` artifacts there, compare them with the
FP32 reference outputs `convert` stored beside them, and refuse bad input in one line, writing nothing.

The artifacts are built beforehand with the full venv (tests/device_fixtures.py, `make device-fixtures`) and found
through ``NSR_EDGE_DEVICE_FIXTURES``, which `make test-runtime` always sets; without it these tests skip. They also
pass in the full venv (ai-edge-litert, torch), where the tflite-runtime-only checks skip.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

FIXTURES = os.environ.get("NSR_EDGE_DEVICE_FIXTURES")
pytestmark = pytest.mark.skipif(not FIXTURES, reason="NSR_EDGE_DEVICE_FIXTURES is not set (make test-runtime builds "
                                "the device fixtures with tests/device_fixtures.py and sets it)")
NO_TORCH = os.environ.get("NSR_EDGE_EXPECT_NO_TORCH") == "1"
TFLITE_RUNTIME = importlib.util.find_spec("ai_edge_litert") is None and importlib.util.find_spec("tflite_runtime") is not None

# (artifact, tolerance flags): FP32 within 1e-4 of the FP32 PyTorch outputs, INT8 within 40 dB (measured: docs/litert.md)
ARTIFACTS = {
    "litert-fp32": ("--max-abs", "1e-4"),
    "litert-int8": ("--min-psnr-vs-reference", "40"),
    "ort-fp32": ("--max-abs", "1e-4"),
    "ort-int8": ("--min-psnr-vs-reference", "40"),
}

# The CLI in a fresh interpreter of this venv; afterwards torch must not have been imported.
_CLI = ("import sys\nfrom nsr_edge.cli import main\nrc = main(sys.argv[1:])\n"
        "assert 'torch' not in sys.modules, 'the CLI imported torch'\nsys.exit(rc)\n")


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


def one_line(r: subprocess.CompletedProcess) -> str:
    """A refusal: exit code 2, exactly one ``nsr-edge`` line on stderr, no traceback; returns it."""
    assert r.returncode == 2, (r.returncode, r.stderr[-800:])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("nsr-edge") and "Traceback" not in r.stderr, r.stderr[-800:]
    return lines[0]


def fixture(name: str) -> Path:
    path = Path(FIXTURES) / name
    assert (path / "model.json").is_file(), f"{path}: missing device fixture (run `make device-fixtures`)"
    return path


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def copy(tmp_path):
    """A writable copy of a fixture folder (tests that change a file, or check that nothing is written)."""
    def make(name: str) -> Path:
        dst = tmp_path / name.replace("/", "-")
        shutil.copytree(fixture(name), dst)
        return dst
    return make


def test_the_device_venv_runs_tflite_runtime_without_torch():
    if not NO_TORCH:
        pytest.skip("not the device venv (NSR_EDGE_EXPECT_NO_TORCH unset)")
    from nsr_edge.runtime.runners.litert_runner import interpreter_class, runtime_name

    assert importlib.util.find_spec("torch") is None and int(np.__version__.split(".")[0]) < 2
    assert interpreter_class().__module__.startswith("tflite_runtime"), "the fallback is what must run here"
    assert runtime_name() == "tflite-runtime 2.14.0"
    assert importlib.util.find_spec("onnxruntime") is not None


@pytest.mark.parametrize("name", sorted(ARTIFACTS))
def test_validate_against_the_stored_reference(name, report):
    r = cli("validate", fixture(name), "--stored-reference", "--json", *ARTIFACTS[name])
    assert r.returncode == 0, r.stderr[-800:]
    out = json.loads(r.stdout)
    s = out["summary"]
    assert out["reference"] == "stored" and out["passed"] and out["stored"]["finite"]
    assert s["reference_tiles"] == 4 and s["max_abs_vs_reference"] is not None
    psnr = s["psnr_vs_reference"]
    report(f"device venv: {name} vs stored FP32 reference: max abs {s['max_abs_vs_reference']:.2e}, "
           f"PSNR {'inf' if psnr is None else f'{psnr:.2f}'} dB")
    if NO_TORCH:  # the plain command uses the stored reference by itself, and says so
        r = cli("validate", fixture(name))
        assert r.returncode == 0, r.stderr[-800:]
        assert "PyTorch is not installed: comparing with the stored FP32 reference outputs" in r.stdout


@pytest.mark.parametrize("name", sorted(ARTIFACTS))
def test_profile(name):
    r = cli("profile", fixture(name), "--runs", "3", "--warmup", "1", "--json")
    assert r.returncode == 0, r.stderr[-800:]
    assert json.loads(r.stdout)["median_ms"] > 0


def test_validate_stored_in_process_equals_the_child_process():
    from nsr_edge.runtime.card import load_card
    from nsr_edge.runtime.validate import validate_stored

    folder = fixture("litert-int8")
    card = load_card(folder)
    child, inproc = validate_stored(str(folder), card), validate_stored(str(folder), card, threads=1, in_process=True)
    assert child["summary"] == inproc["summary"] and child["finite"]
    assert child["summary"]["tiles"] == card.reference_outputs.tiles == len(child["tiles"])


def test_ground_truth_with_dataset_and_the_stored_reference(data_root):
    r = cli("validate", fixture("ort-int8"), "--stored-reference", "--dataset", "set5", "--limit", "1", "--json", "--quiet")
    assert r.returncode == 0, r.stderr[-800:]
    s = json.loads(r.stdout)["summary"]
    assert s["images"] == 1 and s["psnr_y"] > 30 and s["psnr_vs_reference"] > 40 and s["psnr_y_fp32"] is None


def test_an_op_the_runtime_lacks_is_one_line(copy):
    if not TFLITE_RUNTIME:
        pytest.skip("ai-edge-litert runs int8 DIV: the refusal is tflite-runtime's")
    folder = copy("bad/int8-div")
    before = snapshot(folder)
    line = one_line(cli("validate", folder, "--record"))
    assert "op DIV" in line and "not supported by the installed tflite-runtime 2.14.0" in line
    assert "pip install ai-edge-litert" in line
    assert snapshot(folder) == before


def test_an_unsupported_onnx_opset_is_one_line(copy):
    folder = copy("bad/opset-99")
    before = snapshot(folder)
    line = one_line(cli("validate", folder, "--record"))
    assert "ONNX opset 99 is not supported by the installed onnxruntime" in line and "pip install -U onnxruntime" in line
    line = one_line(cli("profile", folder, "--record"))
    assert "opset 99" in line
    assert snapshot(folder) == before


def _card(folder: Path) -> dict:
    return json.loads((folder / "model.json").read_text())


def _write_card(folder: Path, card: dict) -> None:
    (folder / "model.json").write_text(json.dumps(card))


def test_missing_or_foreign_reference_outputs_are_one_line(copy):
    folder = copy("litert-fp32")
    (folder / "reference.npz").unlink()
    assert "reference outputs the card records are missing" in one_line(cli("validate", folder, "--stored-reference"))

    from nsr_edge.runtime.reference_outputs import reference_npz

    folder = copy("ort-fp32")  # other outputs than the card's: the SHA-256 differs
    with np.load(folder / "reference.npz") as npz:
        (folder / "reference.npz").write_bytes(reference_npz(npz["inputs"], npz["outputs"] + 0.01))
    before = snapshot(folder)
    assert "is not the card's reference_outputs.sha256" in one_line(cli("validate", folder, "--stored-reference", "--record"))
    assert snapshot(folder) == before

    folder = copy("ort-int8")  # a card without reference outputs (converted before 2.1)
    card = _card(folder)
    card["reference_outputs"] = None
    _write_card(folder, card)
    assert "stores no reference outputs" in one_line(cli("validate", folder, "--stored-reference"))


def test_reference_outputs_that_do_not_match_the_card_are_one_line(copy):
    from nsr_edge.runtime.reference_outputs import reference_npz

    folder = copy("litert-int8")
    card = _card(folder)
    with np.load(folder / "reference.npz") as npz:
        x, y = npz["inputs"], npz["outputs"]
    for data, what in ((reference_npz(x[:, :, :16, :16], y[:, :, :32, :32]), "do not match the card's method forward"),
                       (reference_npz(x[:2], y[:2]), "has shape")):
        (folder / "reference.npz").write_bytes(data)
        ro = dict(card["reference_outputs"], sha256=hashlib.sha256(data).hexdigest())
        if what != "has shape":
            ro.update(input_shape=list(x[:, :, :16, :16].shape), output_shape=list(y[:, :, :32, :32].shape))
        _write_card(folder, dict(card, reference_outputs=ro))
        assert what in one_line(cli("validate", folder, "--stored-reference"))


def test_a_runner_that_is_not_installed_says_what_to_install(copy):
    if importlib.util.find_spec("executorch") is not None:
        pytest.skip("executorch is installed here")
    folder = copy("litert-fp32")
    card = _card(folder)
    card["runner"] = "executorch"
    _write_card(folder, card)
    for command in ("validate", "profile"):
        line = one_line(cli(command, folder))
        assert "runs on executorch" in line and "pip install executorch" in line


def test_tolerances_that_need_pytorch_are_refused_with_the_stored_reference():
    line = one_line(cli("validate", fixture("ort-fp32"), "--stored-reference", "--max-drop-db", "0.1"))
    assert "--max-drop-db needs the FP32 PyTorch model" in line and "--max-abs" in line
