"""The command line as a user meets it."""

import json
import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "nsr_edge.cli", *args], capture_output=True, text=True)


def test_info_reports_the_readme_parameter_count():
    r = run("info", "wdsr_nsr", "--scale", "2", "--blocks", "16", "--channels", "64", "--width-multiplier", "1",
            "--groups", "4", "--cardinality", "16", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["params"] == 4877812
    macs = data["macs_per_pixel"]
    assert set(macs) == {"training", "output-mix", "kernel-mix", "hard"}
    assert macs["output-mix"]["per_input_pixel"] > 3.9 * macs["hard"]["per_input_pixel"]


def test_models_lists_architectures_and_presets_as_json():
    r = run("models", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert {a["name"] for a in data["architectures"]} >= {"wdsr_nsr", "wdsr"}
    assert any(p["id"] == "edsr_nsr_x2" for p in data["presets"])
    assert isinstance(data["zoo"], list)


def test_unknown_model_is_one_line_error():
    r = run("info", "no_such_model")
    assert r.returncode == 2
    assert "unknown model" in r.stderr and "Traceback" not in r.stderr


def test_bad_option_is_one_line_with_the_allowed_range():
    r = run("info", "wdsr_nsr", "--cardinality", "0")
    assert r.returncode == 2
    assert r.stderr.strip() == "nsr-edge info: error: --cardinality must be an integer in 1..1024, got 0"
