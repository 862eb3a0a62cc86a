"""Publish trained runs as zoo models: evaluate, write zoo/<id>/{model.pt,card.json}, and the results table.

    .venv/bin/python bench/zoo_cards.py [--only ID ...] [--table docs/results.md]
    .venv/bin/python bench/zoo_cards.py --from-zoo [--only ID ...]   # re-evaluate the committed zoo/<id>/model.pt
    .venv/bin/python bench/zoo_cards.py --from-long --only ID ...     # publish a finished bench/train_zoo_long.py run

Every number in a card and in docs/results.md comes from this script (it calls the same evaluation as
`nsr-edge eval`, with the reference protocol: 48 px tiles for the body, skip conv on the whole image). Runs come from
bench/train_zoo.py (runs/zoo/<id>/model.pt); `--from-zoo` re-evaluates the published checkpoints instead (their
model.pt and sha256 untouched: only the card's results, evaluation note and date change); `--from-long` publishes the
continuation of a zoo model (runs/zoo_long/<id>/last.pt, finished) with both stages of its budget in the card.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from train_zoo import RUNS, zoo_jobs  # noqa: E402
from train_zoo_long import (  # noqa: E402
    DISTILLED_FINAL_JOBS, DISTILLED_JOBS, FINAL_LR, HARD_JOBS, RUNS as LONG_RUNS, command as long_command,
    published_run, start_run, steps_of)

from nsr_edge import __version__  # noqa: E402
from nsr_edge.checkpoint import Checkpoint, load_checkpoint, save_checkpoint  # noqa: E402
from nsr_edge.runtime.files import file_sha256  # noqa: E402
from nsr_edge.costs import cost_summary  # noqa: E402
from nsr_edge.evaluate import EvalTarget, evaluate_sets, method_restorer, model_restorer  # noqa: E402
from nsr_edge.hub import ZOO_DIR  # noqa: E402
from nsr_edge.runtime.tasks import TaskSpec  # noqa: E402

# Published reference points we can cite. The reference code's README (EDSR+NSR, 16 blocks, 64 channels, trained on
# DIV2K at full scale) gives x2 only; the paper's other rows are not reproduced here.
PAPER = {
    ("sr", 2): {"set5": 38.11, "bsd100": 32.22},
}
PAPER_SOURCE = "github.com/ychfan/pt_ir README, EDSR+NSR x2 (4.9M params, DIV2K, 30 epochs)"
# The classic small SR network our zoo should beat (issue 15): FSRCNN (Dong et al., ECCV 2016), Y-PSNR as published
# (about 12k parameters; trained on 91 images + General-100 with the authors' own long schedule).
CLASSIC = {
    ("sr", 2): {"set5": 37.00, "set14": 32.63, "bsd100": 31.53},
    ("sr", 3): {"set5": 33.16, "set14": 29.43, "bsd100": 28.53},
    ("sr", 4): {"set5": 30.71, "set14": 27.59, "bsd100": 26.98},
}


EVALUATION = ("nsr-edge eval: Y (BT.601) PSNR/SSIM on 8-bit outputs, scale px shaved (SR); gray PSNR/SSIM (denoise, "
              "JPEG); Gaussian-window SSIM; reference protocol (pt_ir): images with both sides >= 192 px run the body on "
              "48 px tiles (4 px reflect pad, stride 32, edge strips 0.3) and the skip conv once on the whole image "
              "(zero padding), smaller images run whole")


def task_key(task: TaskSpec) -> tuple:
    return (task.name, task.scale if task.name == "sr" else task.noise if task.name == "denoise" else task.quality)


def baseline_rows(task: TaskSpec) -> list[dict]:
    method = "bicubic" if task.name == "sr" else "identity"
    target = EvalTarget(method, method_restorer(method, task))
    return [r.summary() for r in evaluate_sets(target, task, list(task.eval_sets), [], None)]


def _relative(value):
    """Checkpoint paths recorded in provenance, relative to the repository (cards are committed)."""
    return value.removeprefix(str(ROOT) + "/") if isinstance(value, str) else value


def publish(job, ckpt: Checkpoint, results: list[dict]) -> dict:
    task = TaskSpec.from_dict(ckpt.provenance["task"])
    model = ckpt.build()
    costs = cost_summary(model, task.scale, tile=48)
    train_form = costs["macs_per_pixel"]["training"]
    card = {
        "id": job.id,
        "task": task.name,
        "scale": task.scale,
        "noise": task.noise if task.name == "denoise" else None,
        "quality": task.quality if task.name == "jpeg" else None,
        "channels": task.channels,
        "arch": ckpt.config.arch,
        "params": costs["params"],
        # Per output pixel, training form (NSR: one mixed bank per pixel), 48 px tiles. Per-form figures below.
        "macs_per_pixel": train_form["per_output_pixel"],
        "macs_per_pixel_by_form": costs["macs_per_pixel"],
        "baseline_of": job.baseline_of,
        "baseline_kind": job.baseline_kind,
        "results": results,
        "evaluation": EVALUATION,
        "config": ckpt.config.to_dict(),
        "training": {k: _relative(ckpt.provenance.get(k)) for k in
                     ("dataset", "steps", "batch_size", "patch_size", "seed", "train_seconds", "threads", "device",
                      "trained_by", "torch", "sparsity", "init_from", "distill_from", "distill_weight")},
        "train_command": "nsr-edge " + shlex.join(job.command()[3:]).replace(str(RUNS) + "/", "runs/zoo/"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip() + ", 2 cores, CPU only",
        "published": datetime.date.today().isoformat(),
        "nsr_edge": __version__,
    }
    out = ZOO_DIR / job.id
    out.mkdir(parents=True, exist_ok=True)
    slim = Checkpoint(ckpt.config, ckpt.state_dict, {**ckpt.provenance, "zoo_id": job.id}, None)
    save_checkpoint(slim, out / "model.pt", force=True)
    card["sha256"] = file_sha256(out / "model.pt")
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def _stage(kind: str, command: str, training: dict, cpu_seconds: float | None, **extra) -> dict:
    return {"stage": kind, "command": command, "cpu_seconds": cpu_seconds,
            **{k: training.get(k) for k in ("steps", "batch_size", "patch_size", "train_seconds", "threads")}, **extra}


def earlier_stages(job) -> list[dict]:
    """What a long run started from: for an x2 continuation the zoo model's own training (its card, before the
    continuation replaces it); for x3/x4 every stage of the published x2 model of the same kind; for a hard top-1
    fine-tune every stage of the soft model it fine-tunes."""
    start = start_run(job.id)
    if start:
        card = json.loads((ZOO_DIR / start / "card.json").read_text())
        if "training_stages" not in card:
            raise SystemExit(f"{job.id}: starts from the {start} continuation: publish {start} first "
                             f"(--from-long --only {start})")
        # each stage names the zoo model whose run it was: its own where the start model carries it over already
        return [{"model": start, **st} for st in card["training_stages"]]
    old = json.loads((ZOO_DIR / job.id / "card.json").read_text())
    return (old.get("training_stages") or [_stage(
        "zoo", old["train_command"], old["training"], old["training"].get("train_cpu_seconds"), sha256=old["sha256"],
        note="published as zoo/<id> until the continuation replaced it (git history); CPU time not recorded by "
             "this run: its wall time at 1 thread is counted")])[:1]


def run_stage(run_id: str, ckpt: Checkpoint, kind: str) -> dict:
    """One bench/train_zoo_long.py run as a card's training stage, with the command that reproduces it once the zoo
    holds the model (an x2 continuation starts from the first stage that bench/train_zoo.py retrains)."""
    cmd = long_command(run_id)[3:]
    if not start_run(run_id):
        cmd[cmd.index("--init-from") + 1] = f"runs/zoo/{run_id}/model.pt"
    return _stage(kind,
                  "nsr-edge " + shlex.join(cmd).replace(str(ROOT) + "/", ""),  # runs/zoo_long/..., zoo/...
                  ckpt.provenance, ckpt.provenance.get("train_cpu_seconds"),
                  reproduce=f".venv/bin/python bench/train_zoo_long.py {run_id}",
                  **({"init_fresh": ckpt.provenance["init_fresh"]} if "init_fresh" in ckpt.provenance else {}))


def publish_long(job, ckpt: Checkpoint, results: list[dict], own: Checkpoint) -> dict:
    """Publish a finished bench/train_zoo_long.py run (``ckpt``: its final stage's when it has one, else ``own``, the
    job's own run); the card lists every stage of its training budget."""
    card_path = ZOO_DIR / job.id / "card.json"
    replaced_sha256 = json.loads(card_path.read_text())["sha256"]  # what fine-tunes of the old zoo model started from
    before = earlier_stages(job)
    start = start_run(job.id)
    kind = ("continuation" if not start else f"hard top-1 fine-tune of {start}" if job.id in HARD_JOBS
            else f"x{ckpt.config.scale} from the x2 body")
    final = published_run(job.id)
    if final in DISTILLED_JOBS:  # the job's distilled copy, published in place of its own run
        ours = [run_stage(final, ckpt, f"{kind}, distilled from {DISTILLED_JOBS[final][1]}")]
    elif final in DISTILLED_FINAL_JOBS:  # the distilled copy, then a later stage of it (``own``: the copy's run)
        later = DISTILLED_FINAL_JOBS[final]
        first_teacher = DISTILLED_JOBS[later.continued][1]
        ours = [run_stage(later.continued, own, f"{kind}, distilled from {first_teacher}"),
                *teacher_stages(later.teacher),
                run_stage(final, ckpt, f"distilled from {later.teacher or first_teacher}, lr {later.lr:g}")]
    elif final == job.id:
        ours = [run_stage(job.id, ckpt, kind)]
    else:  # the job's own run, then its final stage (whose checkpoint is the one published)
        ours = [run_stage(job.id, own, kind),
                run_stage(final, ckpt, f"final stage at lr {FINAL_LR:g}")]
    card = publish(job, ckpt, results)
    card["training"]["init_from"] = (f"zoo/{job.id}/model.pt as first published (training_stages[0])"
                                     if not start else f"zoo/{start}/model.pt")
    card["training_stages"] = [*before, *ours]
    card["train_command"] = " && ".join(st["command"] for st in card["training_stages"])
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    _pin_fine_tunes(job.id, replaced_sha256)
    return card


def teacher_stages(teacher: str | None) -> list[dict]:
    """A distillation teacher other than the model a run starts from: every stage of its training, marked as the
    teacher's, since the student could not have been trained without them (they count in its budget)."""
    if not teacher:
        return []
    return [{"teacher": teacher, **st} for st in json.loads((ZOO_DIR / teacher / "card.json").read_text())
            .get("training_stages", [])]


def _pin_fine_tunes(zoo_id: str, first_sha256: str) -> None:
    """Cards of models fine-tuned from zoo/<id>/model.pt (the hard-routed ones) name the first stage they started
    from, since that file now holds the continuation."""
    for path in ZOO_DIR.glob("*/card.json"):
        card = json.loads(path.read_text())
        if (card.get("training") or {}).get("init_from") == f"zoo/{zoo_id}/model.pt":
            card["training"]["init_from"] = f"zoo/{zoo_id}/model.pt as first published (sha256 {first_sha256})"
            path.write_text(json.dumps(card, indent=2) + "\n")


def budget_hours(card: dict) -> str:
    """Training CPU hours as the card states them; "<=": the wall time of a 1-thread run that did not record its CPU
    time (an upper bound: on this shared machine wall time includes waiting for the core)."""
    stages = card.get("training_stages") or [{"cpu_seconds": (card.get("training") or {}).get("train_cpu_seconds"),
                                              **(card.get("training") or {})}]
    if any(not st.get("cpu_seconds") and st.get("threads") != 1 for st in stages):
        return "-"
    bound = any(not st.get("cpu_seconds") for st in stages)
    hours = sum(st.get("cpu_seconds") or st.get("train_seconds") or 0 for st in stages) / 3600
    return f"{'<=' if bound else ''}{hours:.2f}"


def results_table(cards: list[dict], baselines: dict[tuple, list[dict]]) -> str:
    lines = ["# Zoo results", "",
             "Produced by `bench/zoo_cards.py` (same evaluation as `nsr-edge eval`). Y-PSNR (dB) / SSIM; see each",
             "card in `zoo/<id>/card.json` for RGB PSNR, training budget and the command that trained it.",
             "Reference protocol (pt_ir): on images with both sides >= 192 px the body runs on 48 px tiles and the skip",
             "conv once on the whole image (docs/training.md; figures before 2026-12-01 ran the whole network per tile).",
             ""]
    by_task: dict[tuple, list[dict]] = {}
    for c in cards:
        t = TaskSpec(c["task"], c["scale"], c["noise"] or 0.0, c["quality"] or 0, c["channels"])
        by_task.setdefault(task_key(t), []).append(c)
    for key, group in by_task.items():
        sets = [r["dataset"] for r in group[0]["results"]]
        name = {"sr": f"Super-resolution x{key[1]}", "denoise": f"Gray denoising, sigma {key[1]:g}",
                "jpeg": f"Gray JPEG deblocking, quality {key[1]}"}[key[0]]
        lines += [f"## {name}", "", "| model | params | MACs/px | train CPU-h | " + " | ".join(sets) + " |",
                  "|---|---:|---:|---:|" + "---:|" * len(sets)]
        base = baselines.get(key, [])
        if base:
            label = "bicubic" if key[0] == "sr" else "input (unrestored)"
            lines.append(f"| {label} | - | - | - | " + " | ".join(
                f"{b['psnr_y']:.2f} / {b['ssim_y']:.4f}" for b in base) + " |")
        for c in sorted(group, key=lambda c: (c["baseline_kind"] or "", c["id"])):
            kind = {None: " (NSR)", "hard-routing": " (NSR, hard top-1 routing)"}.get(
                c["baseline_kind"], f" (dense, {c['baseline_kind']})")
            lines.append(f"| `{c['id']}`{kind} | {c['params']:,} | {c['macs_per_pixel']:,.0f} | {budget_hours(c)} | "
                         + " | ".join(
                f"{r['psnr_y']:.2f} / {r['ssim_y']:.4f}" for r in c["results"]) + " |")
        if key in CLASSIC:
            lines.append("| FSRCNN (published, for reference) | ~12,000 | - | - | " + " | ".join(
                f"{CLASSIC[key][s]:.2f}" if s in CLASSIC[key] else "-" for s in sets) + " |")
        if key in PAPER:
            lines.append("| paper-scale EDSR+NSR (reference README) | 4,877,812 | - | - | " + " | ".join(
                f"{PAPER[key][s]:.2f}" if s in PAPER[key] else "-" for s in sets) + " |")
        lines.append("")
    if any(c["baseline_kind"] == "hard-routing" for c in cards):
        distilled = [c["id"] for c in cards if "distilled" in ((c.get("training_stages") or [{}])[-1].get("stage") or "")]
        lines += ["Hard top-1 rows are fine-tunes of the NSR model above them (extra steps on 48 px patches, in their "
                  "cards" + (f"; {', '.join(f'`{i}`' for i in distilled)}: with L1 to that soft model's output added "
                             "to the loss (distillation; the teacher's forward passes are in their CPU-h)" if distilled
                             else "") + "): compare them with the NSR model at equal training budget in "
                  "docs/hard_routing.md.", ""]
        for c in cards:  # a later stage distilled from another zoo model: say so, its budget counts the teacher
            if teachers := sorted({st["teacher"] for st in c.get("training_stages") or [] if "teacher" in st}):
                lines += [f"`{c['id']}` then got a last stage distilled from "
                          + ", ".join(f"`{t}`" for t in teachers) + " (a stronger model of its scale): its CPU-h count "
                          "every stage of that teacher's training too.", ""]
    if any("training_stages" in c for c in cards):
        lines += ["Models with two stages were trained as zoo models, then continued with a longer schedule "
                  "(bench/train_zoo_long.py: 48 px patches, cosine from 5e-4); their dense baselines got the same "
                  "continuation; the x3 models (NSR and both baselines alike) then a final stage at a lower learning rate. "
                  "Train CPU-h is the whole budget (every stage; `training_stages` in the card).", ""]
    lines += ["Train CPU-h: the CPU time of the training runs behind the model, 1 thread; `<=`: a run that recorded only "
              "its wall time (an upper bound on a shared machine). A hard top-1 row without `training_stages` counts "
              "its fine-tune alone.", ""]
    lines += [f"Reference row: {PAPER_SOURCE}. Our models are ~20x smaller and trained for minutes on 2 CPU cores.",
              f"Machine: {platform.machine()}, 2 cores, CPU only; torch {torch.__version__}.", ""]
    return "\n".join(lines)


def evaluate_checkpoint(zoo_id: str, ckpt: Checkpoint) -> list[dict]:
    task = TaskSpec.from_dict(ckpt.provenance["task"])
    target = EvalTarget(zoo_id, model_restorer(ckpt.build(), task.scale))
    return [r.summary() for r in evaluate_sets(target, task, list(task.eval_sets), [], None)]


def reevaluate(zoo_id: str) -> dict | None:
    """Evaluate the committed zoo/<id>/model.pt again and rewrite its card's results (the checkpoint is not touched)."""
    card_path, ckpt_path = ZOO_DIR / zoo_id / "card.json", ZOO_DIR / zoo_id / "model.pt"
    if not card_path.is_file() or not ckpt_path.is_file():
        print(f"{zoo_id}: not in the zoo")
        return None
    card = json.loads(card_path.read_text())
    if file_sha256(ckpt_path) != card.get("sha256"):
        raise SystemExit(f"{zoo_id}: model.pt does not match its card's sha256; publish it from its run instead")
    before = {r["dataset"]: r["psnr_y"] for r in card["results"]}
    results = evaluate_checkpoint(zoo_id, load_checkpoint(ckpt_path))
    card.update(results=results, evaluation=EVALUATION, evaluated=datetime.date.today().isoformat())
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    print(f"{zoo_id}: " + ", ".join(f"{r['dataset']} {before.get(r['dataset'], float('nan')):.3f} -> {r['psnr_y']:.3f}"
                                    for r in results), flush=True)
    return card


def finished_run(run_id: str) -> Checkpoint:
    run = LONG_RUNS / run_id / "last.pt"
    ckpt = load_checkpoint(run) if run.is_file() else None
    if ckpt is None or ckpt.provenance.get("steps") != steps_of(run_id):
        raise SystemExit(f"{run_id}: {run.relative_to(ROOT)} is not a finished run "
                         f"({ckpt.provenance.get('steps') if ckpt else 0} of {steps_of(run_id)} steps)")
    return ckpt


def publish_continuation(job) -> dict | None:
    final = published_run(job.id)
    # a final stage is published only on top of its finished start run; a distilled copy replaces the job's own run
    # (and a later stage of a distilled copy needs that copy's finished run)
    first = (DISTILLED_FINAL_JOBS[final].continued if final in DISTILLED_FINAL_JOBS
             else final if final in DISTILLED_JOBS else job.id)
    own = finished_run(first)
    ckpt = own if final == first else finished_run(final)
    results = evaluate_checkpoint(job.id, ckpt)
    card = publish_long(job, ckpt, results, own)
    print(f"{job.id}: " + ", ".join(f"{r['dataset']} {r['psnr_y']:.3f}" for r in results), flush=True)
    return card


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--table", default=str(ROOT / "docs" / "results.md"))
    ap.add_argument("--from-long", action="store_true",
                    help="publish the finished continuation runs/zoo_long/<id>/last.pt of each --only model")
    ap.add_argument("--from-zoo", action="store_true",
                    help="re-evaluate the committed zoo/<id>/model.pt (not runs/zoo) and update only the cards' results")
    args = ap.parse_args()
    if args.from_long and not args.only:
        ap.error("--from-long publishes the models named with --only (their baselines must get the same continuation)")
    torch.set_num_threads(1)
    cards, baselines = [], {}
    for job in zoo_jobs():
        if args.only and job.id not in args.only:
            card_path = ZOO_DIR / job.id / "card.json"
            if card_path.is_file():
                cards.append(json.loads(card_path.read_text()))
            continue
        if args.from_zoo:
            card = reevaluate(job.id)
            if card is not None:
                cards.append(card)
            continue
        if args.from_long:
            card = publish_continuation(job)
            if card is not None:
                cards.append(card)
            continue
        run = RUNS / job.id / "model.pt"
        if not run.is_file():
            print(f"{job.id}: not trained yet (no {run})")
            continue
        ckpt = load_checkpoint(run)
        results = evaluate_checkpoint(job.id, ckpt)
        cards.append(publish(job, ckpt, results))
        print(f"{job.id}: " + ", ".join(f"{r['dataset']} {r['psnr_y']:.3f}" for r in results), flush=True)
    for c in cards:
        t = TaskSpec(c["task"], c["scale"], c["noise"] or 0.0, c["quality"] or 0, c["channels"])
        if task_key(t) not in baselines:
            baselines[task_key(t)] = baseline_rows(t)
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    Path(args.table).write_text(results_table(cards, baselines))
    print(f"wrote {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
