"""Train the model zoo: every NSR model plus its dense baselines of equal parameters and equal MACs.

    .venv/bin/python bench/train_zoo.py [--workers 2] [--threads 1] [--only ID ...] [--steps N]

Each job is an ordinary `nsr-edge train` run in runs/zoo/<id>/ (resumed if interrupted), so every zoo model can be
reproduced with the command recorded in its card. The budget is stated in `BUDGET` and in each card: equal training
steps (same data seen) for an NSR model and its two baselines, as in the paper's comparisons.
After training, `bench/zoo_cards.py` evaluates the runs and publishes zoo/<id>/{model.pt,card.json}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "zoo"

# Small on purpose: trained on 2 CPU cores within one working session. Same width/depth for every task.
BASE = {"blocks": 6, "channels": 16, "groups": 4, "cardinality": 1}
NSR_WM, BANKS = 2.0, 4
BUDGET = {"batch_size": 16, "patch_size": 32, "threads": 1}
# Steps per trio: the default model's (SR x2) gets more; the other tasks share a smaller budget.
STEPS = {"nsr_sr_x2": 5000}
DEFAULT_STEPS = 2000
# Hard-routing fine-tunes (Job.init_from): from the soft model, 48 px patches (the deploy tiles' scale), lower lr.
HARD = {"patch_size": 48, "lr": 2e-4,
        "options": ["--routing", "straight_through", "--shared-routing", "--sparsity", '{"load_balance": 0.01}']}
STEPS.update({"nsr_sr_x2_hard": 10000})


@dataclass
class Job:
    id: str
    task: str  # sr | denoise | jpeg
    arch: str  # wdsr_nsr | wdsr
    width_multiplier: float
    scale: int = 1
    noise: float = 0.0
    quality: int = 0
    image_channels: int = 3
    baseline_of: str | None = None
    baseline_kind: str | None = None  # equal-params | equal-macs | hard-routing
    extra: list[str] = field(default_factory=list)
    init_from: str | None = None  # a fine-tune of this checkpoint (its architecture and task) with `extra` options

    @property
    def steps(self) -> int:
        return STEPS.get(self.id if self.init_from else (self.baseline_of or self.id), DEFAULT_STEPS)

    def command(self, steps: int | None = None) -> list[str]:
        steps = steps or self.steps
        if self.init_from:
            return [sys.executable, "-m", "nsr_edge.cli", "train", "--out", str(RUNS / self.id), "--init-from",
                    self.init_from, "--steps", str(steps), "--batch-size", str(BUDGET["batch_size"]),
                    "--patch-size", str(HARD["patch_size"]), "--lr", str(HARD["lr"]), "--threads",
                    str(BUDGET["threads"]), "--checkpoint-every", "250", *self.extra]
        cmd = [sys.executable, "-m", "nsr_edge.cli", "train", "--out", str(RUNS / self.id), "--task", self.task,
               "--model", self.arch, "--blocks", str(BASE["blocks"]), "--channels", str(BASE["channels"]),
               "--width-multiplier", str(self.width_multiplier), "--image-channels", str(self.image_channels),
               "--steps", str(steps), "--batch-size", str(BUDGET["batch_size"]),
               "--patch-size", str(BUDGET["patch_size"]), "--threads", str(BUDGET["threads"]),
               "--checkpoint-every", "250"]
        if self.arch == "wdsr_nsr":
            cmd += ["--groups", str(BASE["groups"]), "--cardinality", str(BASE["cardinality"])]
        if self.task == "sr":
            cmd += ["--scale", str(self.scale)]
        if self.task == "denoise":
            cmd += ["--noise", str(self.noise)]
        if self.task == "jpeg":
            cmd += ["--quality", str(self.quality)]
        return cmd + self.extra


def trio(nsr_id: str, **task: object) -> list[Job]:
    """An NSR model and its dense baselines: equal parameters (k x the inner width) and equal MACs (same width)."""
    return [
        Job(nsr_id, arch="wdsr_nsr", width_multiplier=NSR_WM, **task),
        Job(f"dense_{nsr_id.removeprefix('nsr_')}_eqmacs", arch="wdsr", width_multiplier=NSR_WM,
            baseline_of=nsr_id, baseline_kind="equal-macs", **task),
        Job(f"dense_{nsr_id.removeprefix('nsr_')}_eqparams", arch="wdsr", width_multiplier=NSR_WM * BANKS,
            baseline_of=nsr_id, baseline_kind="equal-params", **task),
    ]


def hard(nsr_id: str) -> Job:
    """The hard-routed (top-1) deploy variant of an NSR model: a fine-tune with shared (block-level) straight-through
    routing and a load-balancing loss (docs/hard_routing.md measures the alternatives)."""
    # From the soft model's own run (its first stage: the zoo may hold a longer-trained continuation of it).
    return Job(f"{nsr_id}_hard", task="", arch="wdsr_nsr", width_multiplier=NSR_WM,
               init_from=str(RUNS / nsr_id / "model.pt"),
               baseline_of=nsr_id, baseline_kind="hard-routing", extra=list(HARD["options"]))


def zoo_jobs() -> list[Job]:
    sr2, sr3, sr4 = (trio(f"nsr_sr_x{s}", task="sr", scale=s) for s in (2, 3, 4))
    dn = trio("nsr_denoise_s25_gray", task="denoise", noise=25.0, image_channels=1)
    jp = trio("nsr_jpeg_q10_gray", task="jpeg", quality=10, image_channels=1)
    # Priority order: the default model and its baselines first, then one model per task, then the rest.
    return [*sr2, dn[0], jp[0], sr3[0], sr4[0], dn[1], jp[1], sr3[1], sr4[1], dn[2], jp[2], sr3[2], sr4[2],
            *(hard(f"nsr_sr_x{s}") for s in (2, 3, 4))]


def run_job(job: Job, steps: int | None) -> tuple[str, int, float]:
    out = RUNS / job.id
    cmd = job.command(steps)
    if (out / "model.pt").is_file():
        return job.id, 0, 0.0
    lock = RUNS / f"{job.id}.lock"  # several queue processes may share the job list
    try:
        lock.touch(exist_ok=False)
    except FileExistsError:
        return job.id, 0, 0.0
    try:
        return _run_locked(job, out, cmd, steps)
    finally:
        lock.unlink()


def _run_locked(job: Job, out: Path, cmd: list[str], steps: int | None) -> tuple[str, int, float]:
    if (out / "last.pt").is_file():
        cmd = [sys.executable, "-m", "nsr_edge.cli", "train", "--out", str(out), "--resume"]
    elif out.exists():
        for stale in out.iterdir():  # a run that died before its first checkpoint: start it again
            stale.unlink()
    # Job description and console log sit beside the run folder (`nsr-edge train` wants a new, empty --out).
    RUNS.joinpath(f"{job.id}.job.json").write_text(json.dumps({**job.__dict__, "command": job.command(steps)},
                                                              indent=2))
    t0 = time.time()
    with open(RUNS / f"{job.id}.out", "a") as log:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return job.id, rc, time.time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="job ids to run (default: all, in priority order)")
    ap.add_argument("--steps", type=int, help="override every job's step count (default: STEPS / DEFAULT_STEPS)")
    ap.add_argument("--list", action="store_true", help="print the jobs and their commands")
    args = ap.parse_args()
    jobs = [j for j in zoo_jobs() if not args.only or j.id in args.only]
    if args.list:
        for j in jobs:
            print(j.id, " ".join(j.command(args.steps)[2:]))
        return 0
    RUNS.mkdir(parents=True, exist_ok=True)
    failed = 0
    with ThreadPoolExecutor(args.workers) as pool:
        for job_id, rc, seconds in pool.map(lambda j: run_job(j, args.steps), jobs):
            print(f"{job_id}: {'ok' if rc == 0 else f'FAILED rc={rc}'} ({seconds / 60:.1f} min)", flush=True)
            failed += rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
