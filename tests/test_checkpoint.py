"""Our checkpoint format and the import of reference-code checkpoints, including hostile files."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nsr_edge.checkpoint import (Checkpoint, CheckpointError, import_reference_checkpoint, load_checkpoint,
                                 save_checkpoint)
from nsr_edge.layers import RoutingConfig
from nsr_edge.models import ModelConfig, build_model

CFG = ModelConfig("wdsr_nsr", 3, 3, blocks=3, width=16, width_multiplier=2.0, banks=4, cardinality=8)


def reference_checkpoint(path: Path, cfg: ModelConfig = CFG, prefix: str = "") -> torch.nn.Module:
    """Write a checkpoint exactly as pt_ir's trainer does: model, optimizer and scheduler state dicts, epoch."""
    torch.manual_seed(1)
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    model(torch.rand(2, cfg.channels, 8, 8)).mean().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [20, 25], 0.2)
    torch.save({"model_state_dict": {prefix + k: v for k, v in model.state_dict().items()},
                "optimizer_state_dict": opt.state_dict(), "lr_scheduler_state_dict": sched.state_dict(),
                "epoch": 7}, path)
    return model.eval()


@pytest.mark.parametrize("cfg", [
    CFG,
    ModelConfig("wdsr", 2, 3, 2, 16, 4.0, 4, 16),
    ModelConfig("wdsr_nsr", 1, 1, 2, 8, 1.0, 2, 4, RoutingConfig(shared=True, pool_grid=2)),
], ids=["nsr-x3", "dense-x2", "nsr-gray-shared"])
def test_import_reference_checkpoint_infers_config_and_reproduces_outputs(tmp_path, cfg):
    src = tmp_path / "ref.pth"
    original = reference_checkpoint(src, cfg)
    ckpt = import_reference_checkpoint(src)
    assert ckpt.config == cfg
    assert ckpt.provenance["epoch"] == 7 and len(ckpt.provenance["source_sha256"]) == 64
    out = save_checkpoint(ckpt, tmp_path / "ours.pt")
    loaded = load_checkpoint(out).build()
    x = torch.rand(2, cfg.channels, 10, 10)
    with torch.no_grad():
        assert torch.equal(loaded(x), original(x))
    raw = torch.load(out, weights_only=True)  # our format is plain data
    assert raw["format"] == "nsr-edge-checkpoint"


def test_ddp_prefix_is_stripped(tmp_path):
    reference_checkpoint(tmp_path / "ref.pth", prefix="module.")
    assert import_reference_checkpoint(tmp_path / "ref.pth").config == CFG


def test_given_config_that_does_not_fit_is_a_precise_error(tmp_path):
    reference_checkpoint(tmp_path / "ref.pth")
    with pytest.raises(CheckpointError, match="shape mismatch|missing"):
        import_reference_checkpoint(tmp_path / "ref.pth", CFG.with_(cardinality=4))


def write_pickled_code(path: Path, marker: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model_state_dict": Evil()}, path)


def bad_files(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.pth"
    reference_checkpoint(good)
    data = good.read_bytes()
    files = {
        "empty": tmp_path / "empty.pth",
        "truncated": tmp_path / "truncated.pth",
        "garbage": tmp_path / "garbage.pth",
        "foreign": tmp_path / "foreign.pth",
        "pickled-code": tmp_path / "evil.pth",
        "nan": tmp_path / "nan.pth",
        "missing": tmp_path / "does-not-exist.pth",
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["garbage"].write_bytes(os.urandom(4096))
    torch.save({"fc.weight": torch.zeros(3, 3)}, files["foreign"])
    write_pickled_code(files["pickled-code"], tmp_path / "PWNED")
    sd = build_model(CFG).state_dict()
    sd["body.0.bias"][0] = float("nan")
    torch.save({"model_state_dict": sd}, files["nan"])
    return files


def test_hostile_and_broken_files_give_one_line_errors_and_execute_nothing(tmp_path):
    for name, path in bad_files(tmp_path).items():
        with pytest.raises(CheckpointError) as info:
            import_reference_checkpoint(path)
        message = str(info.value)
        assert "\n" not in message and len(message) < 400, (name, message)
    assert not (tmp_path / "PWNED").exists()


def test_cli_import_errors_are_one_line_without_traceback(tmp_path):
    files = bad_files(tmp_path)
    for name in ("truncated", "pickled-code", "foreign"):
        r = subprocess.run([sys.executable, "-m", "nsr_edge.cli", "import-checkpoint", str(files[name]), "--out",
                            str(tmp_path / f"{name}.pt")], capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        errors = [line for line in r.stderr.splitlines() if line.startswith("nsr-edge")]
        assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / f"{name}.pt").exists()
    assert not (tmp_path / "PWNED").exists()


def test_cli_import_round_trip_and_no_silent_overwrite(tmp_path):
    reference_checkpoint(tmp_path / "ref.pth")
    out = tmp_path / "ours.pt"
    cmd = [sys.executable, "-m", "nsr_edge.cli", "import-checkpoint", str(tmp_path / "ref.pth"), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    before = out.read_bytes()
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and "--force" in r.stderr
    assert out.read_bytes() == before
    assert subprocess.run(cmd + ["--force"], capture_output=True).returncode == 0


def test_our_loader_points_reference_files_to_import(tmp_path):
    reference_checkpoint(tmp_path / "ref.pth")
    with pytest.raises(CheckpointError, match="import-checkpoint"):
        load_checkpoint(tmp_path / "ref.pth")


def test_checkpoint_with_training_state_loads_weights_only(tmp_path):
    model = build_model(CFG)
    opt = torch.optim.Adam(model.parameters())
    ckpt = Checkpoint(CFG, model.state_dict(), {"note": "x"}, {"optimizer": opt.state_dict(), "step": 3,
                                                                "rng": {"torch": torch.get_rng_state()}})
    path = save_checkpoint(ckpt, tmp_path / "a.pt")
    assert load_checkpoint(path).training["step"] == 3
