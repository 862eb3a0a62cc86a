"""Longer zoo training (issue 15 item 2): continue a zoo model with a longer cosine schedule on larger patches.

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python bench/train_zoo_long.py nsr_sr_x2          # start or continue
    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python bench/train_zoo_long.py nsr_sr_x2 --compile   # same, compiled
    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python bench/train_zoo_long.py nsr_sr_x2 --eval   # latest checkpoint on Set5
    .venv/bin/python bench/train_zoo_long.py --list

One resumable `nsr-edge train` run per job in runs/zoo_long/<id>/ (git-ignored): rerunning the same command continues
it from its last checkpoint (the run's own options are passed with --resume, so a changed job definition is refused
in one line instead of silently training something else). Console output is appended to runs/zoo_long/<id>.out, the
loss per 50 steps is in runs/zoo_long/<id>/log.jsonl, CPU seconds so far in the checkpoint's provenance.

Budget: the zoo model's own training (5,000 steps of 16 x 32 px, ~16 CPU-minutes) plus LONG_STEPS steps of 16 x 48 px
(about 0.3 s per step on one core of this machine: ~1.3 CPU-hours), Adam restarted at 5e-4 with a cosine decay to 0.
The dense baselines get the same continuation (same steps, patches and schedule) before a comparison is published.

x3 and x4 start from the finished x2 run of the same kind (`--init-from runs/zoo_long/<x2 id>/model.pt --scale S`:
the body carries over, the output convs start fresh; EDSR pre-trains x3/x4 at x2 the same way), then SCALE_STEPS
steps at their own scale with the same recipe: their budget is the x2 model's plus these steps.

`nsr_sr_x{2,3,4}_hard` are the hard top-1 deploy variants of the continued models: bench/train_zoo.py's hard
fine-tune (straight-through, shared routing, load balance 0.01, 48 px, lr 2e-4, here with the cosine decay;
HARD_STEPS steps) from the finished run the zoo publishes (x3: its final stage) instead of the first-stage zoo model.

`dense_sr_x2_eqmacs_plus10k` is its control: the continued equal-MACs dense model given the same extra steps (same
lr, schedule and patches, no routing options), so that the hard model and the dense model of equal MACs compare at
equal budget (the zoo point of docs/front.md). A bench run, not a zoo model.

`<x3 id>_plus3k` is a third stage for the three x3 models alike (NSR and both dense baselines): FINAL_STEPS more
steps of the same patches from the finished x3 run at a lower learning rate (FINAL_LR, cosine to 0). It exists
because the x3 NSR model ended 0.02 dB below FSRCNN on Set5; its run is what bench/zoo_cards.py --from-long
publishes under the x3 id, with every stage in the card.

`<job>_kd` (issue 15 item 4) is a job's command plus `--distill-from` the soft NSR model of its scale (the hard
fine-tune's own start): the x2 hard fine-tune and its dense control alike, and the x3 hard fine-tune. `<job>_seed1`
repeats a job with `--seed 1` (the distilled x2 pair: their margin is below one seed's noise). Bench runs, not zoo
models (bench/front_zoo.py scores them).

`nsr_sr_x3_hard_kd_plus3k` is a final low-lr stage of the distilled x3 hard run (same options and teacher, FINAL_STEPS
at FINAL_LR): it was tried because that model ended 0.04 dB below FSRCNN on Set5 and gained only +0.004 / +0.017 /
+0.007 dB (Set5 / Set14 / BSD100, 0.73 CPU-h): not published (docs/zoo_training_status.md).
`nsr_sr_x3_hard_kd_eqp5k` continues the same run distilled from the dense x3 model of equal parameters (the zoo's
strongest x3 model, 0.33 dB above the soft NSR teacher on Set5), 5,000 steps at the hard stage's lr: 33.188 / 29.550 /
28.592 (+0.068 / +0.044 / +0.026 dB), above FSRCNN on all three sets; the zoo's `nsr_sr_x3_hard` publishes it, with the
teacher's stages in its budget. The x2 front's pair got the same stage alike (`nsr_sr_x2_hard_kd_eqp5k`,
`dense_sr_x2_eqmacs_plus10k_kd_eqp5k`): hard 37.122 / 32.794 / 31.661 (+0.044 dB mean), dense 37.067 / 32.786 / 31.652
(+0.030), so the hard model's lead over its control grew from +0.011 to +0.024 dB (FP32 mean; INT8 mean +0.043;
with `--seed 1` for that stage, `<job>_seed1`: +0.031 / +0.035); the zoo's `nsr_sr_x2_hard` publishes it
(docs/front_zoo.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (the zoo's hard fine-tune options)
from train_zoo import HARD  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "zoo_long"
LONG_STEPS = 15000
SCALE_STEPS = 10000  # x3/x4, after the x2 body
RECIPE = {"patch_size": 48, "batch_size": 16, "lr": 5e-4, "schedule": "cosine", "threads": 1, "checkpoint_every": 200}
# Which zoo models can be continued: every SR model and its two dense baselines (same recipe: a fair comparison).
JOBS = [f"{kind}_sr_x{s}{suffix}" for s in (2, 3, 4)
        for kind, suffix in (("nsr", ""), ("dense", "_eqmacs"), ("dense", "_eqparams"))]
# Hard top-1 fine-tunes of a finished continuation (the deploy form a dispatch artifact runs): job -> its start run.
# A job starts from the run its model publishes (for x3 its final stage: `published_run`).
HARD_JOBS = {f"nsr_sr_x{s}_hard": f"nsr_sr_x{s}" for s in (2, 3, 4)}
HARD_STEPS = 10000  # as bench/train_zoo.py's hard fine-tune of the first stage
# Controls: a dense model given a hard fine-tune's extra steps (same recipe without routing): job -> its start run.
CONTROL_JOBS = {"dense_sr_x2_eqmacs_plus10k": "dense_sr_x2_eqmacs"}
# Final low-lr stages, each published under the model it continues (the same for an NSR model and its baselines).
FINAL_STAGE_JOBS = {f"{x3}_plus3k": x3 for x3 in ("nsr_sr_x3", "dense_sr_x3_eqmacs", "dense_sr_x3_eqparams")}
FINAL_STEPS, FINAL_LR = 3000, 1e-4
# Distilled variants (issue 15 item 4): a job's own run plus L1 to the output of the soft NSR model of its scale (the
# teacher a hard fine-tune starts from), at x2 for the hard fine-tune and its dense control alike:
# distilled job -> (the job it copies, the teacher model, whose published run is used).
DISTILLED_JOBS = {"nsr_sr_x2_hard_kd": ("nsr_sr_x2_hard", "nsr_sr_x2"),
                  "dense_sr_x2_eqmacs_plus10k_kd": ("dense_sr_x2_eqmacs_plus10k", "nsr_sr_x2"),
                  "nsr_sr_x3_hard_kd": ("nsr_sr_x3_hard", "nsr_sr_x3")}
DISTILL_WEIGHT = 1.0
# Second seeds of a comparison whose margin is below one seed's noise: job -> (the job it repeats, its --seed).
# (The `_eqp5k` pair's seed-1 runs repeat only that last stage, from the same seed-0 start: its own noise.)
SEED_JOBS = {f"{job}_seed1": (job, 1) for job in ("nsr_sr_x2_hard_kd", "dense_sr_x2_eqmacs_plus10k_kd",
                                                   "nsr_sr_x2_hard_kd_eqp5k", "dense_sr_x2_eqmacs_plus10k_kd_eqp5k")}
# Hard models the zoo publishes from their distilled run instead of their own (same steps and recipe plus the soft
# teacher: +0.03-0.06 dB, docs/front_zoo.md; then the later stage distilled from the dense equal-params model, which
# lifted x3 above FSRCNN on Set5 and x2 clear of its equally continued dense control): zoo model -> the distilled job
# whose run it publishes.
PUBLISHED_DISTILLED = {"nsr_sr_x2_hard": "nsr_sr_x2_hard_kd_eqp5k", "nsr_sr_x3_hard": "nsr_sr_x3_hard_kd_eqp5k"}


class DistilledFinal(NamedTuple):
    """A later stage of a distilled run: its command from its finished weights, with these steps and lr, and its own
    teacher or (teacher None) the run's."""
    continued: str
    teacher: str | None
    steps: int
    lr: float


# Later stages of a distilled run, tried because the x3 hard model ended 0.04 dB below FSRCNN on Set5: a final low-lr
# stage with the same teacher; a stage distilled from the strongest x3 model, the dense one of equal parameters
# (its CPU hours join the hard model's budget). job -> DistilledFinal.
DISTILLED_FINAL_JOBS = {
    "nsr_sr_x3_hard_kd_plus3k": DistilledFinal("nsr_sr_x3_hard_kd", None, FINAL_STEPS, FINAL_LR),
    "nsr_sr_x3_hard_kd_eqp5k": DistilledFinal("nsr_sr_x3_hard_kd", "dense_sr_x3_eqparams", 5000, 2e-4),
    # The x2 front's pair given that same stronger teacher alike (the x2 dense model of equal parameters): does the
    # hard model's lead over its equal-MACs dense control (within one seed's noise with the soft teacher) grow?
    **{f"{job}_eqp5k": DistilledFinal(job, "dense_sr_x2_eqparams", 5000, 2e-4)
       for job in ("nsr_sr_x2_hard_kd", "dense_sr_x2_eqmacs_plus10k_kd")}}
JOBS += (list(HARD_JOBS) + list(CONTROL_JOBS) + list(FINAL_STAGE_JOBS) + list(DISTILLED_JOBS) + list(SEED_JOBS)
         + list(DISTILLED_FINAL_JOBS))


def copied_job(zoo_id: str) -> str:
    """The job whose recipe a distilled or seeded job copies (itself for any other job)."""
    while zoo_id in DISTILLED_JOBS or zoo_id in SEED_JOBS:
        zoo_id = (DISTILLED_JOBS.get(zoo_id) or SEED_JOBS[zoo_id])[0]
    return zoo_id


def x2_counterpart(zoo_id: str) -> str | None:
    """The x2 job an x3/x4 job starts from (same kind), None for an x2 job or a later stage of an x3/x4 job (a final
    stage, a hard fine-tune: same scale as the run they start from)."""
    zoo_id = copied_job(zoo_id)
    if zoo_id in FINAL_STAGE_JOBS or zoo_id in HARD_JOBS or zoo_id in CONTROL_JOBS or zoo_id in DISTILLED_FINAL_JOBS:
        return None
    for s in (3, 4):
        if f"_sr_x{s}" in zoo_id:
            return zoo_id.replace(f"_sr_x{s}", "_sr_x2")
    return None


def steps_of(zoo_id: str) -> int:
    zoo_id = copied_job(zoo_id)
    if zoo_id in DISTILLED_FINAL_JOBS:
        return DISTILLED_FINAL_JOBS[zoo_id].steps
    if zoo_id in FINAL_STAGE_JOBS:
        return FINAL_STEPS
    if zoo_id in HARD_JOBS or zoo_id in CONTROL_JOBS:
        return HARD_STEPS
    return SCALE_STEPS if x2_counterpart(zoo_id) else LONG_STEPS


def start_run(zoo_id: str) -> str | None:
    """The finished run of this bench a job starts from (x3/x4: the x2 run of the same kind; a hard job: the soft
    run it fine-tunes; a final stage: the run it continues), None when it starts from a zoo model's first stage."""
    zoo_id = copied_job(zoo_id)
    return (HARD_JOBS.get(zoo_id) or CONTROL_JOBS.get(zoo_id) or FINAL_STAGE_JOBS.get(zoo_id)
            or (zoo_id in DISTILLED_FINAL_JOBS and DISTILLED_FINAL_JOBS[zoo_id].continued) or x2_counterpart(zoo_id))


def published_run(zoo_id: str) -> str:
    """The job whose run the zoo publishes as `zoo_id`: its final stage when it has one, its distilled copy for the
    hard models published distilled, else its own run."""
    return next((job for job, model in FINAL_STAGE_JOBS.items() if model == zoo_id),
                PUBLISHED_DISTILLED.get(zoo_id, zoo_id))


def finished_model(run_id: str) -> str:
    """A finished run's final weights: runs/zoo_long/<run>/model.pt, else, on a checkout without that run (runs/ is
    not committed), the zoo's copy of it when a zoo model is exactly that run (its card's last stage reproduces it):
    a fine-tune or distillation of a published model then needs none of the CPU hours behind it retrained."""
    own = RUNS / run_id / "model.pt"
    if own.is_file():
        return str(own)
    for card_path in sorted((ROOT / "zoo").glob("*/card.json")):
        stages = json.loads(card_path.read_text()).get("training_stages") or [{}]
        if (stages[-1].get("reproduce") or "").split()[-1:] == [run_id]:
            return str(card_path.parent / "model.pt")
    return str(own)


def init_source(zoo_id: str) -> str:
    """The first stage a continuation starts from: the zoo model while the zoo still holds its first stage; once the
    continued model is published (its card lists `training_stages`), the first stage as bench/train_zoo.py reproduces
    it (runs/zoo/<id>/model.pt), so that rerunning this job never continues an already continued model."""
    if start := start_run(zoo_id):
        # A final stage continues its model's own run; anything else starts from the run that model publishes.
        return finished_model(start if zoo_id in FINAL_STAGE_JOBS else published_run(start))
    card = ROOT / "zoo" / zoo_id / "card.json"
    if card.is_file() and "training_stages" not in json.loads(card.read_text()):
        return zoo_id
    return str(ROOT / "runs" / "zoo" / zoo_id / "model.pt")


def _in_own_folder(cmd: list[str], zoo_id: str) -> list[str]:
    """Another job's command with ``zoo_id``'s run folder."""
    cmd[cmd.index("--out") + 1] = str(RUNS / zoo_id)
    return cmd


def command(zoo_id: str) -> list[str]:
    if zoo_id in SEED_JOBS:  # the repeated job's command in its own folder, with another seed
        repeated, seed = SEED_JOBS[zoo_id]
        return _in_own_folder(command(repeated), zoo_id) + ["--seed", str(seed)]
    if zoo_id in DISTILLED_JOBS:  # the copied job's command in its own folder, plus the teacher
        copied, teacher = DISTILLED_JOBS[zoo_id]
        return _in_own_folder(command(copied), zoo_id) + [
            "--distill-from", finished_model(published_run(teacher)), "--distill-weight", str(DISTILL_WEIGHT)]
    if zoo_id in DISTILLED_FINAL_JOBS:  # the continued run's command from its finished weights, its steps and lr
        stage = DISTILLED_FINAL_JOBS[zoo_id]
        cmd = _in_own_folder(command(stage.continued), zoo_id)
        changes = [("--init-from", finished_model(stage.continued)), ("--steps", str(stage.steps)),
                   ("--lr", str(stage.lr))]
        if stage.teacher:
            changes.append(("--distill-from", finished_model(published_run(stage.teacher))))
        for option, value in changes:
            cmd[cmd.index(option) + 1] = value
        return cmd
    r = RECIPE
    hard = zoo_id in HARD_JOBS
    lr = HARD["lr"] if hard or zoo_id in CONTROL_JOBS else FINAL_LR if zoo_id in FINAL_STAGE_JOBS else r["lr"]
    return [sys.executable, "-m", "nsr_edge.cli", "train", "--out", str(RUNS / zoo_id),
            "--init-from", init_source(zoo_id),
            *(["--scale", zoo_id.split("_sr_x")[1][0]] if x2_counterpart(zoo_id) else []),
            "--steps", str(steps_of(zoo_id)), "--batch-size", str(r["batch_size"]),
            "--patch-size", str(r["patch_size"]), "--lr", str(lr), "--schedule", r["schedule"],
            "--threads", str(r["threads"]), "--checkpoint-every", str(r["checkpoint_every"]),
            *(HARD["options"] if hard else [])]


def run(zoo_id: str, compile_step: bool = False) -> int:
    out = RUNS / zoo_id
    cmd = command(zoo_id) + (["--compile"] if compile_step else [])  # how it runs: a run may switch on resume
    if (out / "last.pt").is_file() or (out / "prev.pt").is_file():
        cmd.append("--resume")  # same options: nsr-edge refuses in one line if they are not the run's
    elif (init := init_source(zoo_id)) != zoo_id and not Path(init).is_file() and start_run(zoo_id):
        raise SystemExit(f"{zoo_id}: starts from the finished run {init}: run "
                         f"bench/train_zoo_long.py {start_run(zoo_id)} to its end first")
    elif init != zoo_id and not Path(init).is_file():
        raise SystemExit(f"{zoo_id}: the zoo holds its continued model; reproduce its first stage first "
                         f"(.venv/bin/python bench/train_zoo.py --only {zoo_id})")
    RUNS.mkdir(parents=True, exist_ok=True)
    with open(RUNS / f"{zoo_id}.out", "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        return subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def evaluate(zoo_id: str, sets: list[str]) -> int:
    """The run's latest checkpoint (last.pt) with `nsr-edge eval` (reference protocol), plus where the run stands."""
    from nsr_edge.checkpoint import load_checkpoint

    ckpt_path = RUNS / zoo_id / "last.pt"
    ckpt = load_checkpoint(ckpt_path)
    prov = ckpt.provenance
    r = subprocess.run([sys.executable, "-m", "nsr_edge.cli", "eval", "--model", str(ckpt_path), "--dataset", *sets,
                        "--json"], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        print(r.stderr.strip(), file=sys.stderr)
        return r.returncode
    results = json.loads(r.stdout)["results"]
    row = {"id": zoo_id, "step": prov["steps"], "of": steps_of(zoo_id), "wall_seconds": prov["train_seconds"],
           "cpu_seconds": prov.get("train_cpu_seconds"),
           "results": {x["dataset"]: [x["psnr_y"], x["ssim_y"]] for x in results}}
    print(json.dumps(row))
    with open(RUNS / f"{zoo_id}.evals.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("id", nargs="?", choices=JOBS)
    ap.add_argument("--eval", action="store_true", help="evaluate the run's last.pt instead of training")
    ap.add_argument("--sets", nargs="*", default=["set5"])
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--compile", action="store_true",
                    help="train with `nsr-edge train --compile` (torch.compile: 1.1-1.4x fewer CPU seconds per step, "
                    "docs/train_speed.md)")
    args = ap.parse_args()
    if args.list or not args.id:
        for j in JOBS:
            print(j, " ".join(command(j)[2:]))
        return 0
    return evaluate(args.id, args.sets) if args.eval else run(args.id, args.compile)


if __name__ == "__main__":
    sys.exit(main())
