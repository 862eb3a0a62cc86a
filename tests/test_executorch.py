"""The ExecuTorch target end to end: convert (FP32, INT8 PTQ) -> card -> validate -> profile, and bad input.

Real lowering and real runtime runs on a tiny model (1 block, width 8), a few seconds each.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_line_error, run_cli, tiny_checkpoint, tiny_config
from nsr_edge.converters.pipeline import ConvertOptions, convert
from nsr_edge.runtime.card import load_card, read_card_json
from nsr_edge.runtime.runners.child import RunnerProcess
from nsr_edge.runtime.tasks import TaskSpec

from nsr_edge.checkpoint import Checkpoint, save_checkpoint
from nsr_edge.models import build_model

TINY = tiny_config()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("et")
    ckpt = tiny_checkpoint(root / "tiny.pt")
    out = {"ckpt": ckpt}
    for recipe in ("fp32", "int8-ptq"):
        opts = ConvertOptions(str(ckpt), recipe=recipe, tile=32, extra_tiles=(48,) if recipe == "fp32" else (),
                              calibration_tiles=8, calibration_dataset="set5", progress=False)
        out[recipe], _ = convert(opts, str(root / recipe))
    return out


def test_cards_describe_fully_delegated_artifacts(artifacts):
    for recipe in ("fp32", "int8-ptq"):
        card = read_card_json(artifacts[recipe])
        assert card["target"] == "executorch" and card["recipe"]["name"] == recipe and card["strategy"] == "output-mix"
        assert card["tile"]["tile"] == 32 and card["io"]["inputs"][0]["shape"] == [1, 3, 32, 32]
        assert card["io"]["outputs"][0]["shape"] == [1, 3, 64, 64]
        fwd = card["delegation"]["methods"]["forward"]
        assert fwd["fully_delegated"] and fwd["partitions"] == 1, fwd
        assert card["tools"]["executorch"] and len(card["model"]["source"]["sha256"]) == 64
        assert (artifacts[recipe] / "model.pte").is_file() and (artifacts[recipe] / "etrecord.bin").is_file()
    assert [m["name"] for m in read_card_json(artifacts["fp32"])["methods"]] == ["forward", "forward_48x48"]
    assert read_card_json(artifacts["int8-ptq"])["quantization"]["calibration"]["tiles"] == 8


def test_fp32_artifact_matches_eager_and_int8_is_close(artifacts):
    from nsr_edge.checkpoint import load_checkpoint

    model = load_checkpoint(artifacts["ckpt"]).build()
    x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    with RunnerProcess("executorch", str(artifacts["fp32"] / "model.pte")) as p:
        assert p.input_shape == (1, 3, 32, 32)
        y = p.run(x)
    assert np.abs(y - ref).max() < 1e-4
    with RunnerProcess("executorch", str(artifacts["fp32"] / "model.pte"), method="forward_48x48") as p:
        x48 = np.random.default_rng(1).random((1, 3, 48, 48), dtype=np.float32)
        with torch.no_grad():
            assert np.abs(p.run(x48) - model(torch.from_numpy(x48)).numpy()).max() < 1e-4
    with RunnerProcess("executorch", str(artifacts["int8-ptq"] / "model.pte")) as p:
        y8 = p.run(x)
    assert 0 < np.abs(y8 - ref).mean() < 0.05  # random weights and noise input: only a sanity bound


def test_bad_input_is_one_line_and_overwrites_nothing(artifacts, tmp_path):
    ckpt = artifacts["ckpt"]
    assert "not a trained model" in one_line_error(run_cli("convert", "--model", "nope", "--out", tmp_path / "a"))
    assert "unknown target" in one_line_error(
        run_cli("convert", "--model", ckpt, "--target", "tpu", "--out", tmp_path / "a"))
    assert "--tile" in one_line_error(run_cli("convert", "--model", ckpt, "--tile", "12", "--out", tmp_path / "a"))
    assert "calibration data" in one_line_error(
        run_cli("convert", "--model", ckpt, "--quant", "int8-ptq", "--calibration-dataset", "nowhere",
                "--out", tmp_path / "a", "--tile", "32"))
    assert not (tmp_path / "a").exists()
    # a non-empty folder is not replaced without --force
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "mine.txt").write_text("x")
    assert "--force" in one_line_error(run_cli("convert", "--model", ckpt, "--out", keep))
    assert (keep / "mine.txt").read_text() == "x"


def test_strategy_auto_skips_candidates_that_fail_and_never_crashes(artifacts, tmp_path, monkeypatch):
    """A candidate that fails to lower (any exception) or aborts the runtime is skipped with its reason in the card;
    the fastest accurate one that remains is chosen. Profiling and validation are real (the fixture's FP32 artifact
    stands in for each converted candidate, so no lowering runs here); the two failures are injected."""
    import shutil

    import nsr_edge.runtime.profile as profile_mod
    from nsr_edge.converters import auto
    from nsr_edge.runtime.runners.child import RunnerCrash

    real_profile = profile_mod.profile_artifact

    def convert(options, out, force=False):
        if options.strategy == "kernel-mix":
            raise RuntimeError("lowering blew up\nwith a long native trace")
        shutil.copytree(artifacts["fp32"], out)
        card = json.loads((artifacts["fp32"] / "model.json").read_text())
        card["strategy"] = options.strategy
        (Path(out) / "model.json").write_text(json.dumps(card))
        return out, load_card(out)

    def profile(folder, card, **kw):
        if card.strategy == "hard":
            raise RunnerCrash("the runtime process died (signal SIGABRT) while running model.pte")
        return real_profile(folder, card, **kw)

    monkeypatch.setattr(auto, "convert", convert)
    monkeypatch.setattr(profile_mod, "profile_artifact", profile)
    monkeypatch.setattr(auto, "candidate_list",
                        lambda target: [(target, s) for s in ("output-mix", "kernel-mix", "hard")])
    r = run_cli("convert", "--model", artifacts["ckpt"], "--strategy", "auto", "--tile", "32", "--out",
                tmp_path / "auto", "--auto-dataset", "set5", "--quiet", "--auto-max-drop-db", "0.05")
    assert r.returncode == 0, r.stderr[-800:]
    card = read_card_json(tmp_path / "auto")
    assert card["strategy"] == "output-mix"
    status = {c["strategy"]: c["status"] for c in card["auto"]["candidates"]}
    assert status["output-mix"] == "chosen"
    assert status["kernel-mix"] == "failed to convert: lowering blew up"
    assert status["hard"].startswith("failed to run:") and "SIGABRT" in status["hard"]
    # nothing runnable at all: one line, exit 2, nothing written
    monkeypatch.setattr(auto, "convert", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no")))
    err = one_line_error(run_cli("convert", "--model", artifacts["ckpt"], "--strategy", "auto", "--tile", "32",
                                  "--out", tmp_path / "none", "--quiet"))
    assert "no strategy produced a runnable artifact" in err and "kernel-mix: failed to convert: no" in err
    assert not (tmp_path / "none").exists()


def test_kernel_mix_pte_loads_and_matches_eager(tmp_path):
    """kernel-mix (issue 10, item 6): the mixed kernels are computed in the graph, so those convs run in portable
    kernels, but the program loads and equals the eager model. It used to fail to load ("Failed to load method
    forward, error 0x1": the einsum's 7-D permutes were delegated and XNNPACK defines at most 6-D tensors). Two
    cardinal groups, so the per-group mixing is exercised too."""
    cfg = TINY.with_(cardinality=2)
    torch.manual_seed(1)
    ckpt = tmp_path / "km.pt"
    save_checkpoint(Checkpoint(cfg, build_model(cfg).state_dict(), {"task": TaskSpec("sr", scale=2).to_dict()}), ckpt)
    out, _ = convert(ConvertOptions(str(ckpt), strategy="kernel-mix", tile=32, progress=False), str(tmp_path / "km"))
    card = load_card(out)
    fwd = card.delegation.methods["forward"]
    assert card.strategy == "kernel-mix" and not fwd.fully_delegated
    assert {f.op for f in fwd.fallbacks} == {"convolution"}, fwd.fallbacks  # only the computed-weight convs
    from nsr_edge.checkpoint import load_checkpoint

    model = load_checkpoint(ckpt).build().eval()  # the training form (einsum kernel mixing)
    x = np.random.default_rng(2).random((3, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    with RunnerProcess("executorch", str(Path(out) / "model.pte")) as p:
        y = p.run(x)
    assert np.abs(y - ref).max() < 1e-4
