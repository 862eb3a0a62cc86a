"""`nsr-edge train`: the reference recipe (L1, Adam 1e-3, multi-step decay x0.2, random crops, flips, transpose),
resumable, deterministic per seed, CPU by default, CUDA when present, multi-GPU through `torchrun` (DDP).

A run lives in one folder: ``last.pt`` (weights + optimizer + step, rewritten atomically every
``checkpoint_every`` steps and on Ctrl-C), ``model.pt`` (final weights), ``log.jsonl`` (loss per logging window).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
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


def train(cfg: TrainConfig | None, out_dir: str | os.PathLike, resume: bool = False, show_progress: bool = True) -> Path:
    """Run (or with ``resume``, continue: then ``cfg`` may be None and is read from ``last.pt``) a training run."""
    out = Path(out_dir)
    last = out / "last.pt"
    launched_rank = int(os.environ.get("RANK", "0"))  # under torchrun only rank 0 owns the run folder
    if launched_rank == 0:
        _check_run_dir(out, resume)
    if resume and not last.is_file():
        raise UserError(f"--resume: no {last} to resume from")
    start_step, elapsed = 0, 0.0
    if resume:
        ckpt = load_checkpoint(last)
        state = ckpt.training or {}
        if "train_config" not in state:
            raise UserError(f"{last} holds no training state to resume from")
        cfg = TrainConfig.from_dict(state["train_config"])
        start_step, elapsed = int(state["step"]), float(state.get("elapsed_s", 0.0))
    assert cfg is not None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    probe = pick_device(cfg.device)
    dist_info = setup_distributed(probe)
    device = pick_device(cfg.device, dist_info.local_rank)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(device)
    if cfg.init_from and not resume:
        init = load_checkpoint(cfg.init_from)
        if init.config.to_dict() | {"routing": None} != cfg.model.to_dict() | {"routing": None}:
            raise UserError(f"--init-from {cfg.init_from}: its architecture differs from the model being trained")
        # strict=False only for what routing options add or drop: a learnable temperature, or the second conv's
        # router when switching to block-level (shared) routing; nothing else may differ.
        state = dict(init.state_dict)
        if cfg.model.routing.shared and not init.config.routing.shared:
            state = {k: v for k, v in state.items() if not (".body.2.mlp." in k)}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if [k for k in missing + unexpected if not k.endswith("log_temperature")]:
            raise UserError(f"--init-from {cfg.init_from}: weights do not fit ({(missing + unexpected)[:3]})")
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    milestones = sorted({max(1, int(f * cfg.steps)) for f in cfg.milestones})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, cfg.lr_decay)
    if resume:
        model.load_state_dict(ckpt.state_dict)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])

    net: nn.Module = model
    if dist_info.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    teacher = _teacher(cfg, device)
    from .sparsity import SparsityTrainer  # routing schedules and auxiliary losses (no-ops for dense models)

    sparsity = SparsityTrainer(model, cfg.sparsity, cfg.steps)
    progress = _progress_factory(show_progress and dist_info.is_main)
    try:
        pairs = make_pairs(cfg.task, cfg.dataset or cfg.task.train_set, cfg.data_dir,
                           progress=progress("preparing data", None))
    except (FileNotFoundError, ValueError) as e:  # an unknown or missing set: before the run folder exists
        raise UserError(f"training set {cfg.dataset or cfg.task.train_set}: {e}") from None
    sampler = PatchSampler(pairs, cfg.task, cfg.patch_size, cfg.batch_size, cfg.seed, dist_info.rank)
    created = not out.exists()  # the folder is made only now, after everything that can fail quickly
    out.mkdir(parents=True, exist_ok=True)
    if resume and dist_info.is_main:
        _truncate_log(out / "log.jsonl", start_step)

    def save(step: int, path: Path, with_state: bool) -> None:
        if not dist_info.is_main:
            return
        training = None
        if with_state:
            training = {
                "train_config": cfg.to_dict(), "step": step, "elapsed_s": elapsed,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state(),
            }
        provenance = {
            "trained_by": f"nsr-edge {__version__} train", "torch": str(torch.__version__), "task": cfg.task.to_dict(),
            "dataset": cfg.dataset or cfg.task.train_set, "steps": step, "batch_size": cfg.batch_size * dist_info.world,
            "patch_size": cfg.patch_size, "seed": cfg.seed, "train_seconds": round(elapsed, 1),
            "threads": torch.get_num_threads(), "device": str(device), "sparsity": cfg.sparsity,
            "init_from": cfg.init_from,
            **({"distill_from": cfg.distill_from, "distill_weight": cfg.distill_weight} if cfg.distill_from else {}),
        }
        sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
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
            t0 = time.perf_counter()
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
            window.append(loss.item())
            if not math.isfinite(window[-1]):
                raise UserError(f"loss became {window[-1]} at step {step}; lower --lr (last good: {last})")
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
        save(step, last, with_state=True)
        raise UserError(f"interrupted at step {step}; resume with: nsr-edge train --out {out} --resume") from None
    except BaseException:
        if dist_info.is_main and not last.exists():  # nothing to resume: leave no half run behind
            if log:
                log.close()
            _remove_run_leftovers(out, created)
        raise
    finally:
        if bar:
            bar.close()
        if log:
            log.close()
    save(step, last, with_state=True)
    save(step, out / "model.pt", with_state=False)
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return out / "model.pt"


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
