"""Training (resume, determinism), evaluation through tiling, and the end-user restore commands."""

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import nsr_edge.train as train_mod
from nsr_edge.checkpoint import load_checkpoint
from nsr_edge.errors import UserError
from nsr_edge.models import ModelConfig
from nsr_edge.runtime.tasks import TaskSpec
from nsr_edge.train import TrainConfig, train

TINY = ModelConfig("wdsr_nsr", 2, 3, blocks=1, width=8, width_multiplier=2.0, banks=2, cardinality=1)


def tiny_config(steps: int = 6, **kw) -> TrainConfig:
    return TrainConfig(task=TaskSpec("sr", scale=2), model=TINY, dataset="set5_train", steps=steps, batch_size=2,
                       patch_size=16, checkpoint_every=3, log_every=1, threads=1, **kw)


@pytest.fixture(autouse=True)
def small_training_set(monkeypatch):
    """Train on Set5's HR images (5 files) instead of the 291-image set, so each test takes seconds."""
    from nsr_edge.runtime import datasets

    real = datasets.list_eval_images

    def fake(name, scale=None, data_dir=None):
        if name == "set5_train":
            return real("set5", 2, data_dir)
        return real(name, scale, data_dir)

    monkeypatch.setattr(datasets, "list_eval_images", fake)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    straight = train(tiny_config(), tmp_path / "a", show_progress=False)
    sampler_call = train_mod.PatchSampler.__call__
    state = {"raised": False}

    def interrupt_once(self, step):
        if step == 4 and not state["raised"]:
            state["raised"] = True
            raise KeyboardInterrupt
        return sampler_call(self, step)

    monkeypatch.setattr(train_mod.PatchSampler, "__call__", interrupt_once)
    with pytest.raises(UserError, match="--resume"):
        train(tiny_config(), tmp_path / "b", show_progress=False)
    assert load_checkpoint(tmp_path / "b" / "last.pt").training["step"] == 4
    resumed = train(None, tmp_path / "b", resume=True, show_progress=False)
    a, b = load_checkpoint(straight).state_dict, load_checkpoint(resumed).state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log][-1] == 6


def test_training_lowers_the_loss_and_refuses_to_clobber_a_run(tmp_path):
    out = train(tiny_config(steps=40, lr=3e-3), tmp_path / "run", show_progress=False)
    log = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert np.mean(log[-10:]) < np.mean(log[:10])
    ckpt = load_checkpoint(out)
    assert ckpt.provenance["task"]["name"] == "sr" and ckpt.training is None
    with pytest.raises(UserError, match="not empty"):
        train(tiny_config(), tmp_path / "run", show_progress=False)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "nsr_edge.cli", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    from nsr_edge.checkpoint import Checkpoint, save_checkpoint
    from nsr_edge.models import build_model

    torch.manual_seed(0)
    model = build_model(TINY)
    path = tmp_path_factory.mktemp("m") / "tiny.pt"
    save_checkpoint(Checkpoint(TINY, model.state_dict(), {"task": TaskSpec("sr", scale=2).to_dict()}), path)
    return path


def test_eval_json_schema_and_bicubic_anchor():
    r = run_cli("eval", "--method", "bicubic", "--scale", "2", "--dataset", "set5", "--json")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)["results"][0]
    assert set(row) == {"dataset", "psnr_y", "ssim_y", "psnr_rgb", "images"}
    assert row["images"] == 5 and abs(row["psnr_y"] - 33.66) < 0.02


def test_eval_of_a_checkpoint_through_tiling(trained_tiny, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(folder / "a.png")
    r = run_cli("eval", "--model", str(trained_tiny), "--dataset", "set5", "--dataset-dir", str(folder), "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["results"]
    assert [x["images"] for x in rows] == [5, 1]
    assert all(np.isfinite(x["psnr_y"]) for x in rows)


def test_upscale_keeps_alpha_and_16_bit_and_never_overwrites(trained_tiny, tmp_path):
    rgba = np.zeros((21, 17, 4), dtype=np.uint8)
    rgba[..., :3] = 120
    rgba[..., 3] = np.linspace(0, 255, 17, dtype=np.uint8)[None]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    r = run_cli("upscale", str(tmp_path / "in.png"), str(out), "--model", str(trained_tiny), "--tile", "24")
    assert r.returncode == 0, r.stderr
    with Image.open(out) as im:
        assert im.mode == "RGBA" and im.size == (34, 42)
    before = out.read_bytes()
    r = run_cli("upscale", str(tmp_path / "in.png"), str(out), "--model", str(trained_tiny))
    assert r.returncode == 2 and "--force" in r.stderr and out.read_bytes() == before
    gray16 = (np.arange(15 * 13, dtype=np.uint16).reshape(15, 13) * 300)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    r = run_cli("upscale", str(tmp_path / "g16.png"), str(tmp_path / "g16x2.png"), "--model", str(trained_tiny))
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "g16x2.png") as im:
        assert im.size == (26, 30) and im.mode.startswith("I")


def test_restore_commands_reject_bad_inputs(trained_tiny, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    r = run_cli("upscale", str(tmp_path / "broken.png"), str(tmp_path / "o.png"), "--model", str(trained_tiny))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    Image.fromarray(np.zeros((400, 400, 3), np.uint8)).save(tmp_path / "big.png")
    r = run_cli("upscale", str(tmp_path / "big.png"), str(tmp_path / "o.png"), "--model", str(trained_tiny),
                "--max-megapixels", "0.1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert not (tmp_path / "o.png").exists()
    r = run_cli("denoise", str(tmp_path / "big.png"), str(tmp_path / "o.png"), "--model", str(trained_tiny))
    assert r.returncode == 2 and "sr x2 model" in r.stderr


def test_visualize_routing_writes_a_png(trained_tiny, tmp_path):
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(tmp_path / "i.png")
    r = run_cli("visualize-routing", str(tmp_path / "i.png"), "--model", str(trained_tiny), "--out",
                str(tmp_path / "r.png"))
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "r.png") as im:
        assert im.format == "PNG" and im.size[0] > 200


def test_torchrun_ddp_on_cpu(tmp_path):
    """Two processes on the gloo backend: the same code path multi-GPU users take with NCCL."""
    torchrun = str(__import__("pathlib").Path(sys.executable).with_name("torchrun"))
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "nsr_edge.cli", "train",
                        "--out", str(tmp_path / "ddp"), "--model", "wdsr_nsr", "--blocks", "1", "--channels", "8",
                        "--width-multiplier", "2", "--groups", "2", "--cardinality", "1", "--steps", "4",
                        "--patch-size", "16", "--batch-size", "2", "--threads", "1", "--dataset", "t91",
                        "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = load_checkpoint(tmp_path / "ddp" / "model.pt")
    assert ckpt.provenance["batch_size"] == 4  # 2 per rank x 2 ranks


def test_distillation_pulls_the_student_towards_the_teacher(tmp_path, trained_tiny):
    """--distill-from: the same fine-tune with the teacher term ends closer to the teacher than without it; the
    provenance names the teacher; a teacher of another scale is refused."""
    from nsr_edge.checkpoint import Checkpoint, save_checkpoint
    from nsr_edge.models import build_model

    hard = TINY.with_(routing=TINY.routing.__class__(kind="straight_through"))
    teacher = load_checkpoint(trained_tiny)
    from nsr_edge.runtime import datasets

    lr_img, _ = datasets.make_input(datasets.list_eval_images("set5", 2)[1], "sr", 2)
    x = torch.from_numpy(np.ascontiguousarray(lr_img[None, :, :32, :32], dtype=np.float32))
    t_model = build_model(TINY).eval()
    t_model.load_state_dict(teacher.state_dict)
    init = tmp_path / "init.pt"
    torch.manual_seed(5)
    save_checkpoint(Checkpoint(hard, build_model(hard).state_dict(), {"task": TaskSpec("sr", scale=2).to_dict()}), init)

    def gap(path):
        m = build_model(hard).eval()
        m.load_state_dict(load_checkpoint(path).state_dict)
        with torch.no_grad():
            return float((m(x) - t_model(x)).abs().mean())

    plain = train(tiny_config(steps=30, lr=3e-3, init_from=str(init)), tmp_path / "plain", show_progress=False)
    out = train(tiny_config(steps=30, lr=3e-3, init_from=str(init), distill_from=str(trained_tiny),
                            distill_weight=100.0), tmp_path / "kd", show_progress=False)
    assert gap(out) < 0.7 * gap(plain), (gap(out), gap(plain), gap(init))
    assert load_checkpoint(out).provenance["distill_from"] == str(trained_tiny)
    other = tmp_path / "x3.pt"
    cfg3 = TINY.with_(scale=3)
    save_checkpoint(Checkpoint(cfg3, build_model(cfg3).state_dict(), {"task": TaskSpec("sr", scale=3).to_dict()}), other)
    with pytest.raises(UserError, match="cannot teach"):
        train(tiny_config(steps=2, distill_from=str(other)), tmp_path / "bad", show_progress=False)


# ---------------------------------------------------------------------------------- resuming: what is refused (issue 15)


def _interrupt_at(monkeypatch, at_step: int) -> None:
    sampler_call = train_mod.PatchSampler.__call__
    state = {"raised": False}

    def interrupt_once(self, step):
        if step == at_step and not state["raised"]:
            state["raised"] = True
            raise KeyboardInterrupt
        return sampler_call(self, step)

    monkeypatch.setattr(train_mod.PatchSampler, "__call__", interrupt_once)


def test_cosine_run_resumes_to_the_same_weights_with_its_own_options(tmp_path, monkeypatch):
    """A cosine run interrupted and resumed with the same TrainConfig (what rerunning its command passes) ends with
    the weights of an uninterrupted one; its last checkpoint's predecessor is kept as prev.pt."""
    cfg = tiny_config(steps=7, schedule="cosine")
    straight = train(cfg, tmp_path / "a", show_progress=False)
    _interrupt_at(monkeypatch, 5)
    with pytest.raises(UserError, match="--resume"):
        train(cfg, tmp_path / "b", show_progress=False)
    assert load_checkpoint(tmp_path / "b" / "prev.pt").training["step"] == 3
    resumed = train(tiny_config(steps=7, schedule="cosine"), tmp_path / "b", resume=True, show_progress=False)
    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert "train_cpu_seconds" in b.provenance and load_checkpoint(tmp_path / "b" / "last.pt").training["cpu_s"] > 0
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert lrs[-1] < 1e-12 and lrs[0] < cfg.lr  # cosine to 0


def test_resume_with_other_options_or_other_data_is_refused_and_the_run_kept(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _interrupt_at(monkeypatch, 4)
    with pytest.raises(UserError):
        train(tiny_config(steps=6), run, show_progress=False)
    before = (run / "last.pt").read_bytes()
    with pytest.raises(UserError, match=r"other options: steps 12 \(run: 6\); patch_size 24 \(run: 16\)"):
        train(replace(tiny_config(steps=12), patch_size=24), run, resume=True, show_progress=False)
    with pytest.raises(UserError, match=r"model.width 4 \(run: 8\)"):
        train(replace(tiny_config(), model=TINY.with_(width=4)), run, resume=True, show_progress=False)
    with pytest.raises(UserError, match="cannot change steps"):
        train(None, run, resume=True, show_progress=False, overrides={"steps": 9})

    from nsr_edge.runtime import datasets

    real = datasets.list_eval_images
    monkeypatch.setattr(datasets, "list_eval_images",  # same set name, other images (another --data-dir, say)
                        lambda name, scale=None, data_dir=None: real("set14", 2, data_dir)[:5] if name == "set5_train"
                        else real(name, scale, data_dir))
    with pytest.raises(UserError, match="training data differ"):
        train(None, run, resume=True, show_progress=False)
    assert (run / "last.pt").read_bytes() == before
    monkeypatch.setattr(datasets, "list_eval_images", lambda name, scale=None, data_dir=None:
                        real("set5", 2, data_dir) if name == "set5_train" else real(name, scale, data_dir))
    out = train(None, run, resume=True, show_progress=False, overrides={"checkpoint_every": 1})  # how it runs: fine
    assert load_checkpoint(out).provenance["steps"] == 6


def test_diverging_run_stops_in_one_line_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_step = torch.optim.Adam.step
    calls = {"n": 0}

    def poison_at_6(self, *a, **k):  # the update of step 6 makes the weights NaN; the loss of step 6 is still finite
        out = real_step(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 6:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", poison_at_6)
    with pytest.raises(UserError, match=r"non-finite at step 6 .*diverged.*kept: .*last.pt \(step 3\)"):
        train(tiny_config(steps=9), run, show_progress=False)
    good = load_checkpoint(run / "last.pt")
    assert good.training["step"] == 3 and all(torch.isfinite(v).all() for v in good.state_dict.values())

    sampler_call = train_mod.PatchSampler.__call__
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    monkeypatch.setattr(train_mod.PatchSampler, "__call__",
                        lambda self, step: tuple(t * float("nan") for t in sampler_call(self, step)) if step == 4
                        else sampler_call(self, step))
    with pytest.raises(UserError, match=r"loss became nan at step 5.*kept: .*last.pt \(step 3\)"):
        train(None, run, resume=True, show_progress=False)
    assert load_checkpoint(run / "last.pt").training["step"] == 3


def test_damaged_last_checkpoint_resumes_from_the_previous_one(tmp_path, monkeypatch, capsys):
    cfg = tiny_config(steps=8)
    straight = train(cfg, tmp_path / "a", show_progress=False)
    run = tmp_path / "b"
    _interrupt_at(monkeypatch, 7)
    with pytest.raises(UserError):
        train(cfg, run, show_progress=False)
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])  # a copy or a disk cut it short
    capsys.readouterr()
    resumed = train(None, run, resume=True, show_progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "last.pt.damaged" in err[0] and "prev.pt (step 6)" in err[0], err
    a, b = load_checkpoint(straight).state_dict, load_checkpoint(resumed).state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)

    for name in ("last.pt", "prev.pt"):
        (run / name).write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="prev.pt") as e:
        train(None, run, resume=True, show_progress=False)
    assert "\n" not in str(e.value)


def test_cli_resume_checks_the_options_it_is_given(tmp_path):
    base = ["train", "--out", str(tmp_path / "r"), "--model", "wdsr_nsr", "--blocks", "1", "--channels", "8",
            "--width-multiplier", "2", "--groups", "2", "--cardinality", "1", "--steps", "2", "--patch-size", "16",
            "--batch-size", "2", "--threads", "1", "--dataset", "t91", "--schedule", "cosine"]
    r = run_cli(*base)
    assert r.returncode == 0, r.stderr
    r = run_cli(*[a if a != "cosine" else "multistep" for a in base], "--resume")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "schedule 'multistep' (run: 'cosine')" in lines[0], r.stderr
    r = run_cli(*base, "--resume")  # the same command continues (here: the run is complete)
    assert r.returncode == 0, r.stderr


def test_compiled_run_matches_eager_and_resumes_either_way(tmp_path, monkeypatch):
    """`--compile` (torch.compile, inductor on the CPU) trains the same model as eager up to float rounding, records
    it, and a run may switch between compiled and eager on resume (how it runs, not what it computes)."""
    eager = load_checkpoint(train(tiny_config(steps=4), tmp_path / "eager", show_progress=False))
    compiled = load_checkpoint(train(tiny_config(steps=4, compile=True), tmp_path / "compiled", show_progress=False))
    assert compiled.provenance["compiled"] is True and eager.provenance["compiled"] is False
    for k, v in eager.state_dict.items():
        assert torch.allclose(v, compiled.state_dict[k], rtol=1e-3, atol=1e-5), k
    _interrupt_at(monkeypatch, 4)
    with pytest.raises(UserError, match="--resume"):
        train(tiny_config(steps=6, compile=True), tmp_path / "b", show_progress=False)
    resumed = load_checkpoint(train(tiny_config(steps=6), tmp_path / "b", resume=True, show_progress=False))
    assert resumed.provenance["steps"] == 6 and resumed.provenance["compiled"] is False


def test_compile_without_a_cpp_compiler_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(train_mod.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="--compile needs a C\\+\\+ compiler"):
        train(tiny_config(steps=2, compile=True), tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_sigterm_stops_a_background_run_like_ctrl_c(tmp_path):
    """`kill PID` on a training run started in the background (where SIGINT is ignored, as a non-interactive shell
    starts it): the last checkpoint is written, one line says how to resume, and the run resumes from it."""
    import signal
    import time

    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "nsr_edge.cli", "train", "--out", str(out), "--model", "wdsr_nsr", "--blocks", "1",
           "--channels", "8", "--width-multiplier", "2", "--groups", "2", "--cardinality", "1", "--steps", "100000",
           "--patch-size", "16", "--batch-size", "2", "--threads", "1", "--dataset", "t91", "--checkpoint-every",
           "5"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.time() + 300
    while not (out / "last.pt").is_file() and time.time() < deadline and p.poll() is None:
        time.sleep(0.5)
    assert (out / "last.pt").is_file(), p.stderr.read()[-800:] if p.poll() is not None else "no checkpoint in 300 s"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.startswith("nsr-edge")]
    assert p.returncode == 143 and len(lines) == 1 and "interrupted at step" in lines[0], err[-800:]
    assert "--resume" in lines[0] and "Traceback" not in err
    step = load_checkpoint(out / "last.pt").training["step"]
    assert step >= 5 and not (out / "model.pt").exists()


def test_init_from_another_scale_carries_the_body_over(tmp_path):
    """`--init-from X2 --scale 3` (EDSR's x2 pre-training for x3/x4): every weight but the two output convs comes from
    the x2 model, those start fresh and are named in the provenance (kept across a resume); other architecture
    options and non-SR scales are refused in one line."""
    from helpers import one_line_error, tiny_checkpoint

    x2 = tiny_checkpoint(tmp_path / "x2.pt", seed=3)
    base = ["--steps", "1", "--patch-size", "16", "--batch-size", "2", "--threads", "1", "--dataset", "t91",
            "--lr", "1e-9"]
    r = run_cli("train", "--out", tmp_path / "x3", "--init-from", x2, "--scale", "3", *base)
    assert r.returncode == 0, r.stderr[-800:]
    src, got = load_checkpoint(x2), load_checkpoint(tmp_path / "x3" / "model.pt")
    assert got.config.scale == 3 and got.provenance["task"]["scale"] == 3
    fresh = got.provenance["init_fresh"]
    last = f"body.{len(src.config.blocks * [0]) + 1}."  # the tail conv after the head and the blocks
    assert sorted(fresh) == sorted(f"{m}{p}" for m in (last, "skip.0.") for p in ("weight_v", "weight_g", "bias"))
    for k, v in src.state_dict.items():
        if k not in fresh:  # one Adam step at lr 1e-9: the x2 weights, to rounding
            assert torch.allclose(got.state_dict[k], v, atol=1e-6), k
    assert got.state_dict["skip.0.weight_v"].shape[0] == 3 * 9
    r = run_cli("train", "--out", tmp_path / "x3b", "--init-from", x2, "--scale", "3", "--blocks", "2", *base)
    assert "only --scale may change" in one_line_error(r)
    r = run_cli("train", "--out", tmp_path / "x1", "--init-from", x2, "--scale", "1", *base)
    assert "only from an SR model to an SR model" in one_line_error(r)
    assert not (tmp_path / "x3b").exists() and not (tmp_path / "x1").exists()
