"""`nsr-edge train`: the reference recipe (L1, Adam 1e-3, multi-step decay x0.2, random crops, flips, transpose),
or a cosine decay, resumable, deterministic per seed, CPU by default, CUDA when present, multi-GPU through `torchrun`.

A run lives in one folder: ``last.pt`` (weights + optimizer + step, rewritten atomically every
``checkpoint_every`` steps and on Ctrl-C; the one before it is kept as ``prev.pt``), ``model.pt`` (final weights),
``log.jsonl`` (loss per logging window).

Resuming is refused in one line when the run would not be the same run: other options than the ones it was started
with (``RESUME_MAY_CHANGE`` aside), or other training data (a fingerprint of the prepared pairs is stored). A loss
or weights that become non-finite stop the run before anything is saved, so ``last.pt`` stays the last good state;
an unreadable ``last.pt`` (a damaged copy, a full disk) is set aside and the run continues from ``prev.pt``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .data import PatchSampler, make_pairs
from .errors import UserError
from .models import ModelConfig, build_model, count_parameters
from .runtime.tasks import TaskSpec


def _teacher(cfg: "TrainConfig", device: torch.device) -> nn.Module | None:
    """The frozen distillation teacher, checked to produce the student's output shape (same scale and channels)."""
    if not cfg.distill_from:
        return None
    t = load_checkpoint(cfg.distill_from)
    if t.config.scale != cfg.model.scale or t.config.channels != cfg.model.channels:
        raise UserError(f"--distill-from {cfg.distill_from}: a x{t.config.scale} {t.config.channels}-channel model "
                        f"cannot teach a x{cfg.model.scale} {cfg.model.channels}-channel one")
    task = (t.provenance or {}).get("task")
    if task and TaskSpec.from_dict(task) != cfg.task:
        raise UserError(f"--distill-from {cfg.distill_from}: trained for {TaskSpec.from_dict(task).label}, "
                        f"not {cfg.task.label}")
    teacher = build_model(t.config)
    teacher.load_state_dict(t.state_dict)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.to(device).eval()


@dataclass
class TrainConfig:
    task: TaskSpec
    model: ModelConfig
    dataset: str | None = None  # default: the task's standard training set
    steps: int = 10000
    batch_size: int = 16
    patch_size: int = 48  # input (LR) patch side
    lr: float = 1e-3
    milestones: tuple[float, ...] = (2 / 3, 5 / 6)  # fractions of `steps`: the reference decays at epochs 20, 25 of 30
    lr_decay: float = 0.2
    schedule: str = "multistep"  # multistep (the reference: milestones x lr_decay) | cosine (lr -> 0 over `steps`)
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 50
    threads: int | None = None
    device: str = "auto"  # auto | cpu | cuda
    data_dir: str | None = None
    init_from: str | None = None  # start from this checkpoint's weights (fine-tuning), same architecture
    sparsity: dict[str, Any] = field(default_factory=dict)  # routing-training options (see `sparsity.py`)
    distill_from: str | None = None  # teacher checkpoint (same task/scale): L1 to its output is added to the loss
    distill_weight: float = 0.0
    compile: bool = False  # torch.compile the training step: how it runs (faster on CPU), not what it computes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["task"] = self.task.to_dict()
        d["model"] = self.model.to_dict()
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        data = dict(data)
        data["task"] = TaskSpec.from_dict(data["task"])
        data["model"] = ModelConfig.from_dict(data["model"])
        data["milestones"] = tuple(data.get("milestones", ()))
        return cls(**data)


SCHEDULES = ("multistep", "cosine")
RESUME_MAY_CHANGE = ("threads", "device", "data_dir", "checkpoint_every", "log_every", "compile")
"""What a resumed run may set anew: how and where it runs, not what it computes (the data are checked by content)."""


def config_differences(run: TrainConfig, given: TrainConfig) -> list[str]:
    """``option value (run: value)`` for every setting of ``given`` that differs from the run's, bar RESUME_MAY_CHANGE."""
    a, b = run.to_dict(), given.to_dict()
    out = []
    for key in a:
        if key in RESUME_MAY_CHANGE or a[key] == b.get(key):
            continue
        if isinstance(a[key], dict) and isinstance(b.get(key), dict):  # model / task: name the inner fields
            out += [f"{key}.{k} {b[key].get(k)!r} (run: {v!r})" for k, v in a[key].items() if b[key].get(k) != v]
        else:
            out.append(f"{key} {b.get(key)!r} (run: {a[key]!r})")
    return out


def data_fingerprint(pairs: list) -> str:
    """SHA-256 over the prepared training pairs (shapes and bytes, in order): the data a run is trained on."""
    h = hashlib.sha256()
    for pair in pairs:
        for arr in (pair.input, pair.target):
            h.update(repr(arr.shape).encode())
            h.update(memoryview(arr).cast("B") if arr.flags.c_contiguous else arr.tobytes())
    return f"{len(pairs)}:{h.hexdigest()[:16]}"


def _make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.steps)
    if cfg.schedule != "multistep":
        raise UserError(f"unknown learning-rate schedule {cfg.schedule!r}; one of {', '.join(SCHEDULES)}")
    milestones = sorted({max(1, int(f * cfg.steps)) for f in cfg.milestones})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, cfg.lr_decay)


def _load_resume_point(out: Path) -> tuple[Checkpoint, Path]:
    """The newest readable checkpoint of a run (``last.pt``, else ``prev.pt``); a damaged ``last.pt`` is set aside
    (``last.pt.damaged``) with one line on stderr, so the next save cannot rotate it over the good ``prev.pt``."""
    last, prev = out / "last.pt", out / "prev.pt"
    if not last.is_file() and not prev.is_file():
        raise UserError(f"--resume: no {last} to resume from")
    errors = []
    for path in (last, prev):
        if not path.is_file():
            continue
        try:
            ckpt = load_checkpoint(path)
            state = ckpt.training or {}
            if "train_config" not in state:
                raise UserError(f"{path} holds no training state to resume from")
        except UserError as e:
            errors.append(str(e))
            continue
        if path == prev and last.is_file():
            os.replace(last, out / "last.pt.damaged")
            print(f"nsr-edge: {errors[0]}; set aside as last.pt.damaged, resuming from {prev} (step "
                  f"{state['step']})", file=sys.stderr)
        return ckpt, path
    raise UserError(errors[0] if len(errors) == 1 else f"{errors[0]}; and the previous checkpoint: {errors[1]}")


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Distributed:
    """Join a `torchrun` process group when launched by one (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available")
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state()}


def _compiled(net: nn.Module, device: torch.device) -> nn.Module:
    """``torch.compile`` (inductor) of the training network. On this project's CPU models it makes a step 1.1-1.4x
    cheaper (docs/train_speed.md) after under a minute of compiling, which the run's CPU seconds include. Inductor
    compiles C++ on the CPU: it needs a compiler, checked here so the error is one line."""
    if device.type == "cpu" and not (shutil.which("g++") or shutil.which("c++")):
        raise UserError("--compile needs a C++ compiler for torch.compile on the CPU (apt-get install g++); "
                        "or train without --compile")
    import torch._inductor.config as inductor

    inductor.compile_threads = 1  # compile in this process: no worker pool, and the CPU time counts in the budget
    return torch.compile(net)


def train(cfg: TrainConfig | None, out_dir: str | os.PathLike, resume: bool = False, show_progress: bool = True,
          overrides: dict[str, Any] | None = None) -> Path:
    """Run (or with ``resume``, continue) a training run.

    Resuming, ``cfg`` None continues the run as it was configured (``overrides`` may set RESUME_MAY_CHANGE fields);
    a ``cfg`` must equal the run's configuration up to RESUME_MAY_CHANGE (a `UserError` names what differs).
    """
    out = Path(out_dir)
    last, prev = out / "last.pt", out / "prev.pt"
    launched_rank = int(os.environ.get("RANK", "0"))  # under torchrun only rank 0 owns the run folder
    if launched_rank == 0:
        _check_run_dir(out, resume)
    start_step, elapsed, cpu, stored_fingerprint = 0, 0.0, 0.0, None
    if resume:
        ckpt, resumed_from = _load_resume_point(out)
        state = ckpt.training
        run_cfg = TrainConfig.from_dict(state["train_config"])
        if cfg is not None:
            diff = config_differences(run_cfg, cfg)
            if diff:
                raise UserError(f"--resume: {out} was started with other options: {'; '.join(diff)}. Resume it "
                                f"with its own (or just --out {out} --resume), or start a new run in another --out")
            overrides = {**{k: getattr(cfg, k) for k in RESUME_MAY_CHANGE}, **(overrides or {})}
        bad = set(overrides or {}) - set(RESUME_MAY_CHANGE)
        if bad:
            raise UserError(f"--resume cannot change {', '.join(sorted(bad))}")
        cfg = replace(run_cfg, **(overrides or {}))
        start_step, elapsed = int(state["step"]), float(state.get("elapsed_s", 0.0))
        cpu = float(state.get("cpu_s", 0.0))
        stored_fingerprint = state.get("data_fingerprint")
    assert cfg is not None
    if cfg.schedule not in SCHEDULES:
        raise UserError(f"unknown learning-rate schedule {cfg.schedule!r}; one of {', '.join(SCHEDULES)}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    probe = pick_device(cfg.device)
    dist_info = setup_distributed(probe)
    device = pick_device(cfg.device, dist_info.local_rank)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(device)
    # Weights --init-from could not give (another scale's output convs), kept in the provenance across resumes.
    fresh: list[str] = list(ckpt.provenance.get("init_fresh", [])) if resume else []
    if cfg.init_from and not resume:
        init = load_checkpoint(cfg.init_from)
        same = {"routing": None, "scale": None}  # routing options may change; the scale too (below)
        if init.config.to_dict() | same != cfg.model.to_dict() | same:
            raise UserError(f"--init-from {cfg.init_from}: its architecture differs from the model being trained")
        # strict=False only for what routing options add or drop: a learnable temperature, or the second conv's
        # router when switching to block-level (shared) routing; nothing else may differ.
        state = dict(init.state_dict)
        if cfg.model.routing.shared and not init.config.routing.shared:
            state = {k: v for k, v in state.items() if not (".body.2.mlp." in k)}
        if init.config.scale != cfg.model.scale:
            # Another SR scale (EDSR's x2 pre-training for x3/x4): everything but the two output convs, whose
            # channels are 3*scale^2, is the same network; those start from their initialisation.
            if 1 in (init.config.scale, cfg.model.scale):
                raise UserError(f"--init-from {cfg.init_from}: x{init.config.scale} -> x{cfg.model.scale}: only "
                                "between SR scales (2..8) can the body be carried over")
            own = model.state_dict()
            fresh = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
            state = {k: v for k, v in state.items() if k not in fresh}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if [k for k in missing + unexpected if not k.endswith("log_temperature") and k not in fresh]:
            raise UserError(f"--init-from {cfg.init_from}: weights do not fit ({(missing + unexpected)[:3]})")
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = _make_scheduler(cfg, optimizer)
    if resume:
        model.load_state_dict(ckpt.state_dict)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])

    net: nn.Module = model
    if dist_info.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = _compiled(net, device)

    teacher = _teacher(cfg, device)
    from .sparsity import SparsityTrainer  # routing schedules and auxiliary losses (no-ops for dense models)

    sparsity = SparsityTrainer(model, cfg.sparsity, cfg.steps)
    progress = _progress_factory(show_progress and dist_info.is_main)
    try:
        pairs = make_pairs(cfg.task, cfg.dataset or cfg.task.train_set, cfg.data_dir,
                           progress=progress("preparing data", None))
    except (FileNotFoundError, ValueError) as e:  # an unknown or missing set: before the run folder exists
        raise UserError(f"training set {cfg.dataset or cfg.task.train_set}: {e}") from None
    fingerprint = data_fingerprint(pairs)
    if stored_fingerprint is not None and stored_fingerprint != fingerprint:
        raise UserError(f"--resume: the training data differ from the ones {out} was trained on (set "
                        f"{cfg.dataset or cfg.task.train_set}: {fingerprint.split(':')[0]} images, fingerprint "
                        f"{fingerprint}; run: {stored_fingerprint}); point --data-dir at the run's data or start a "
                        "new run in another --out")
    sampler = PatchSampler(pairs, cfg.task, cfg.patch_size, cfg.batch_size, cfg.seed, dist_info.rank)
    created = not out.exists()  # the folder is made only now, after everything that can fail quickly
    out.mkdir(parents=True, exist_ok=True)
    if resume and dist_info.is_main:
        _truncate_log(out / "log.jsonl", start_step)

    def save(step: int, path: Path, with_state: bool) -> None:
        if not dist_info.is_main:
            return
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:  # never replace the last good checkpoint by a diverged state
            raise UserError(f"weights became non-finite at step {step} ({bad[0]}): the run diverged; "
                            + _last_good(last) + "; continue with a lower --lr in a new run (--init-from it)")
        training = None
        if with_state:
            training = {
                "train_config": cfg.to_dict(), "step": step, "elapsed_s": elapsed, "cpu_s": cpu,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state(),
                "data_fingerprint": fingerprint,
            }
        provenance = {
            "trained_by": f"nsr-edge {__version__} train", "torch": str(torch.__version__), "task": cfg.task.to_dict(),
            "dataset": cfg.dataset or cfg.task.train_set, "steps": step, "batch_size": cfg.batch_size * dist_info.world,
            "patch_size": cfg.patch_size, "seed": cfg.seed, "train_seconds": round(elapsed, 1),
            "train_cpu_seconds": round(cpu, 1),
            "threads": torch.get_num_threads(), "device": str(device), "sparsity": cfg.sparsity,
            "init_from": cfg.init_from, "compiled": cfg.compile,
            **({"init_fresh": fresh} if fresh else {}),
            **({"distill_from": cfg.distill_from, "distill_weight": cfg.distill_weight} if cfg.distill_from else {}),
        }
        sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        if path == last and last.is_file():
            os.replace(last, prev)  # keep the previous state until the new one is written
        save_checkpoint(Checkpoint(cfg.model, sd, provenance, training), path, force=True)

    log = open(out / "log.jsonl", "a") if dist_info.is_main else None
    bar = progress("training", cfg.steps)
    if bar:
        bar.update_to(start_step)
    window: list[float] = []
    step = start_step
    net.train()
    try:
        while step < cfg.steps:
            t0, c0 = time.perf_counter(), time.process_time()
            x, y = sampler(step)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            sparsity.before_step(step)
            pred = net(x)
            loss = F.l1_loss(pred, y)
            total = loss + sparsity.aux_loss()
            if teacher is not None:  # distillation: also match the teacher (its output is a smoother target)
                with torch.no_grad():
                    target = teacher(x)
                total = total + cfg.distill_weight * F.l1_loss(pred, target)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            elapsed += time.perf_counter() - t0
            cpu += time.process_time() - c0
            window.append(loss.item())
            if not math.isfinite(window[-1]):
                raise UserError(f"loss became {window[-1]} at step {step}: the run diverged; {_last_good(last)}; "
                                "continue with a lower --lr in a new run (--init-from it)")
            if bar:
                bar.update_to(step, loss=sum(window[-20:]) / len(window[-20:]))
            if step % cfg.log_every == 0 or step == cfg.steps:
                if log:
                    log.write(json.dumps({"step": step, "loss": sum(window) / len(window),
                                          "lr": scheduler.get_last_lr()[0], "elapsed_s": round(elapsed, 1),
                                          **sparsity.stats()}) + "\n")
                    log.flush()
                window = []
            if step % cfg.checkpoint_every == 0:
                save(step, last, with_state=True)
    except KeyboardInterrupt:
        save(step, last, with_state=True)  # refused (non-finite weights) when the step in flight diverged
        raise UserError(f"interrupted at step {step}; resume with: nsr-edge train --out {out} --resume") from None
    except BaseException:
        if dist_info.is_main and not last.exists() and not prev.exists():  # nothing to resume: no half run left
            if log:
                log.close()
            _remove_run_leftovers(out, created)
        raise
    finally:
        if bar:
            bar.close()
        if log:
            log.close()
    if not (step % cfg.checkpoint_every == 0 and step > start_step):  # not just written by the loop
        save(step, last, with_state=True)
    save(step, out / "model.pt", with_state=False)
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return out / "model.pt"


def _last_good(last: Path) -> str:
    if not last.is_file():
        return "no checkpoint was written yet"
    try:
        step = (load_checkpoint(last).training or {}).get("step")
    except UserError:
        step = "?"
    return f"the last good checkpoint is kept: {last} (step {step})"


_RUN_LEFTOVERS = ("log.jsonl",)
"""What a run writes before its first checkpoint: a folder holding only these (and temporary files) is a run that
failed or was killed before it could be resumed; it is cleared for a new run rather than refused."""


def _remove_run_leftovers(out: Path, remove_folder: bool) -> None:
    for p in list(out.iterdir()) if out.is_dir() else []:
        if p.name in _RUN_LEFTOVERS or (p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file()):
            p.unlink()
    if remove_folder and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def _check_run_dir(out: Path, resume: bool) -> None:
    """Refuse a folder that is not a run folder, or (without ``resume``) a run that can be resumed; clear what an
    interrupted run left that can be neither resumed nor reused (temporary files, a log without a checkpoint)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if not out.is_dir():
        return
    for p in out.glob(".*.tmp"):  # a checkpoint write killed halfway (runtime.files.atomic_write_bytes)
        if p.is_file():
            p.unlink()
            print(f"nsr-edge: removed {p}, left by an interrupted write", file=sys.stderr)
    entries = [p.name for p in out.iterdir()]
    if resume or not entries:
        return
    if (out / "last.pt").exists() or (out / "model.pt").exists() or set(entries) - set(_RUN_LEFTOVERS):
        raise UserError(f"{out} is not empty: pass --resume to continue that run, or choose another --out")
    print(f"nsr-edge: {out} holds only the log of a run that stopped before its first checkpoint; starting afresh",
          file=sys.stderr)
    _remove_run_leftovers(out, remove_folder=False)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past the checkpoint a run resumes from (written after it, before the run was killed), so that
    the resumed run does not log those steps twice."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = []
    for line in lines:
        try:
            if int(json.loads(line)["step"]) <= step:
                keep.append(line if line.endswith("\n") else line + "\n")
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by the kill
    if len(keep) != len(lines):
        from .runtime.files import atomic_write_bytes

        atomic_write_bytes(path, "".join(keep).encode())


class _Bar:
    """A thin tqdm wrapper (falls back to periodic lines when stderr is not a terminal)."""

    def __init__(self, desc: str, total: int | None) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, dynamic_ncols=True, mininterval=1.0, smoothing=0.05)

    def update_to(self, n: int, **postfix: float) -> None:
        self.bar.n = n
        if postfix:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in postfix.items()}, refresh=False)
        self.bar.refresh() if n == self.bar.total else self.bar.update(0)

    def __call__(self, done: int, total: int) -> None:
        self.bar.total = total
        self.update_to(done)

    def close(self) -> None:
        self.bar.close()


def _progress_factory(enabled: bool):
    def make(desc: str, total: int | None) -> _Bar | None:
        return _Bar(desc, total) if enabled else None

    return make


def describe(cfg: TrainConfig) -> str:
    model = build_model(cfg.model)
    return (f"{cfg.task.label}: {cfg.model.arch} {count_parameters(model):,} params, {cfg.steps} steps of "
            f"{cfg.batch_size}x{cfg.patch_size}px on {cfg.dataset or cfg.task.train_set}")


__all__ = ["TrainConfig", "train", "describe"]
