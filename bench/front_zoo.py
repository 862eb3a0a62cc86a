"""The accuracy-latency front at the zoo's budget (issue 15 item 3, the long-budget point): the published SR x2
models (about 1-3 CPU-hours each, not docs/front.md's 12 CPU-minutes) as ExecuTorch INT8 artifacts, plus the
equal-budget control that makes the hard model's comparison fair.

    .venv/bin/python bench/train_zoo_long.py dense_sr_x2_eqmacs_plus10k --compile   # the control (bench run)
    .venv/bin/python bench/train_zoo_long.py dense_sr_x2_eqmacs_plus10k_kd --compile  # its distilled control
    .venv/bin/python bench/train_zoo_long.py nsr_sr_x2_hard_kd_eqp5k --compile   # both distilled runs, +5k steps
    .venv/bin/python bench/train_zoo_long.py dense_sr_x2_eqmacs_plus10k_kd_eqp5k --compile  # from the eqP teacher
    .venv/bin/python bench/front_zoo.py runs          # each finished bench run: FP32 eval, INT8 artifact, INT8 Y-PSNR
    bench/quiet_run.sh .venv/bin/python bench/front_zoo.py time --dispatch-work out/issue12/dispatch  # shared latency?
    .venv/bin/python bench/front_zoo.py report --dispatch-work out/issue12/dispatch   # docs/front_zoo.{md,png}

(--dispatch-work: the --work folder of the bench/dispatch.py run whose latencies the table uses.)

Latency and INT8 accuracy of the zoo models come from bench/dispatch.py's last run (its results.json: one
interleaved timing run of every artifact, 64 px tiles, 1 thread; INT8 Y-PSNR through the deploy tiling), FP32
accuracy and training budget from the zoo cards. Why a control: `nsr_sr_x2_hard` is the continued `nsr_sr_x2`
fine-tuned for 10,000 more steps; the published equal-MACs dense model did not get those steps, so the control
(`dense_sr_x2_eqmacs_plus10k`, bench/train_zoo_long.py) is that dense model given the same 10,000 steps with the same
lr, schedule and patches. The zoo's hard model is the distilled fine-tune (issue 15 item 4: L1 to the soft
`nsr_sr_x2`'s output added to the loss), so the control it is compared with is distilled alike (`_kd`). Each bench run's INT8 program is a timed artifact's program
with other weights: its latency is that artifact's (XNNPACK's int8 conv time does not depend on weight values; hard
routing picks one of k banks of one shape), stated as such in the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from front import mark_pareto  # noqa: E402
from generated_doc import write_keeping_hand_written  # noqa: E402
from train_zoo_long import (  # noqa: E402
    DISTILLED_FINAL_JOBS, RUNS as LONG_RUNS, copied_job, published_run, start_run)
from zoo_cards import budget_hours  # noqa: E402


@dataclass(frozen=True)
class BenchRun:
    """A bench/train_zoo_long.py run shown beside the zoo models: a zoo model's graph with other weights."""
    shares: str  # the dispatch-bench artifact whose program (hence latency) it has
    kind: str
    strategy: str = "output-mix"  # `nsr-edge convert --strategy` for its INT8 artifact (a dense model: the default)


# The zoo's nsr_sr_x2_hard is the distilled hard fine-tune (bench/train_zoo_long.py PUBLISHED_DISTILLED): its
# equal-budget control is the dense model given the same steps and teacher; the undistilled control shows what the
# teacher gives a dense model.
# Since 2 December 2026 22:30 UTC it is the `_eqp5k` run: the distilled run continued with the stronger teacher the
# zoo's x3 hard model got (the dense model of equal parameters), and its control the distilled dense run continued
# alike. The earlier stages of both stay as bench rows: what each step gave the hard model and the dense one.
BENCH_RUNS = {
    "dense_sr_x2_eqmacs_plus10k": BenchRun("dense eqM INT8", "dense, equal MACs, +10k steps"),
    "dense_sr_x2_eqmacs_plus10k_kd": BenchRun("dense eqM INT8", "dense, equal MACs, +10k steps distilled"),
    "dense_sr_x2_eqmacs_plus10k_kd_eqp5k": BenchRun("dense eqM INT8", "dense, equal MACs, distilled, +5k from eqP"),
    "nsr_sr_x2_hard_kd": BenchRun("NSR hard in-program/block INT8", "NSR hard top-1, +10k distilled",
                                  strategy="hard"),
    # the last stage of the comparison repeated with another seed (same start): that stage's noise
    "dense_sr_x2_eqmacs_plus10k_kd_eqp5k_seed1": BenchRun("dense eqM INT8", "dense, equal MACs, +5k from eqP, seed 1"),
    "nsr_sr_x2_hard_kd_eqp5k_seed1": BenchRun("NSR hard in-program/block INT8", "NSR hard top-1, +5k from eqP, seed 1",
                                              strategy="hard"),
}
CONTROL = "dense_sr_x2_eqmacs_plus10k_kd_eqp5k"  # the zoo hard model's equal-budget control
WORK = ROOT / "runs" / "front_zoo"
SETS_FP32 = ("set5", "set14", "bsd100")
SETS_INT8 = ("set5", "set14")
DOC, PNG = ROOT / "docs" / "front_zoo.md", ROOT / "docs" / "front_zoo.png"
# The fronts the table marks: the plotted means, and Set5 alone (5 images: the set FSRCNN's headline number uses).
FRONT_KEYS = ("mean_fp32", "mean_int8", "set5_fp32", "set5_int8")
# ExecuTorch INT8 artifacts of bench/dispatch.py -> the zoo model behind each (the ORT and FP32 rows are left out).
ARTIFACTS = {
    "dense eqP INT8": ("dense_sr_x2_eqparams", "dense, equal params", "one program"),
    "dense eqM INT8": ("dense_sr_x2_eqmacs", "dense, equal MACs", "one program"),
    "NSR soft output-mix INT8": ("nsr_sr_x2", "NSR soft", "one program, output mixing"),
    "NSR hard in-program/block INT8": ("nsr_sr_x2_hard", "NSR hard top-1", "one program, routing inside"),
    "NSR hard dispatch/block INT8": ("nsr_sr_x2_hard", "NSR hard top-1", "host dispatch, 7 calls"),
}


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def cmd_runs(args) -> int:
    """For each finished bench run: FP32 Y-PSNR (the zoo evaluation) and its INT8 artifact's Y-PSNR on the deploy
    tiling (as bench/dispatch.py measures the zoo models), in WORK/<run>.json."""
    import torch

    torch.set_num_threads(1)
    WORK.mkdir(parents=True, exist_ok=True)
    for run_id in args.only or BENCH_RUNS:
        if not (LONG_RUNS / run_id / "model.pt").is_file():
            print(f"{run_id}: not finished, skipped (.venv/bin/python bench/train_zoo_long.py {run_id} --compile)")
            continue
        out = score_run(run_id)
        (WORK / f"{run_id}.json").write_text(json.dumps(out, indent=1) + "\n")
        print(run_id, json.dumps(out))
    return 0


def score_run(run_id: str) -> dict:
    from nsr_edge.checkpoint import load_checkpoint
    from nsr_edge.converters.pipeline import ConvertOptions
    from nsr_edge.reference import reference_fn
    from nsr_edge.runtime.card import load_card
    from nsr_edge.runtime.evaluation import task_images
    from nsr_edge.runtime.validate import validate_artifact
    from zoo_cards import evaluate_checkpoint
    from bench.artifact_cache import convert_unless_current

    run = LONG_RUNS / run_id / "model.pt"
    ckpt = load_checkpoint(run)
    fp32 = {r["dataset"]: r["psnr_y"] for r in evaluate_checkpoint(run_id, ckpt)}
    folder = convert_unless_current(
        WORK / f"{run_id}_int8_t64", ConvertOptions(model=str(run), target="executorch", recipe="int8-ptq", tile=64,
                                                    calibration_tiles=64, strategy=BENCH_RUNS[run_id].strategy,
                                                    progress=False), f"{run_id} INT8")
    card = load_card(folder)
    sets = {d: task_images(card.task, d)[1] for d in SETS_INT8}
    reports = validate_artifact(str(folder), card, sets, lambda: reference_fn(card, run), progress=False)
    return {"fp32": fp32, "int8": {d: rep["summary"]["psnr_y"] for d, rep in reports.items()},
            "cpu_seconds": ckpt.provenance.get("train_cpu_seconds"), "steps": ckpt.provenance.get("steps")}


def shared_program(dispatch_work: Path, artifact: str) -> Path:
    """The folder where bench/dispatch.py keeps ``artifact`` (its naming)."""
    from dispatch import artifact_folder, variants

    return artifact_folder(dispatch_work, artifact, dict(variants(None, "nsr_sr_x2_hard"))[artifact]["model"], 64)


def cmd_time(args) -> int:
    """Check the shared-program latency: each scored bench run's INT8 artifact and the dispatch-bench artifact whose
    program it has, timed together in one interleaved run (WORK/latency_check.json)."""
    import time as _time

    from nsr_edge.runtime.profile import time_interleaved

    folders = {}
    for run_id, b in BENCH_RUNS.items():
        if (WORK / f"{run_id}.json").is_file():
            folders[f"{run_id} INT8"] = WORK / f"{run_id}_int8_t64"
            folders[b.shares] = shared_program(Path(args.dispatch_work), b.shares)
    if not folders:
        raise SystemExit("front_zoo time: no bench run scored yet (run: bench/front_zoo.py runs)")
    lat, before, after = time_interleaved(folders, args.rounds, args.runs_per_round)
    (WORK / "latency_check.json").write_text(json.dumps(
        {"latency": lat, "load": [before, after], "rounds": args.rounds, "runs_per_round": args.runs_per_round,
         "when": _time.strftime("%Y-%m-%d %H:%M UTC", _time.gmtime())}, indent=1) + "\n")
    for n, v in lat.items():
        print(f"{n:40s} min {v['min_ms']:8.2f} ms  median {v['median_ms']:8.2f} ms")
    return 0


def rows(dispatch_work: Path) -> tuple[list[dict], dict]:
    from nsr_edge.hub import zoo_card

    res = _json(dispatch_work / "results.json")
    if not res:
        raise SystemExit(f"no {dispatch_work / 'results.json'}: run bench/dispatch.py first")
    out = []
    for name, (zoo_id, kind, form) in ARTIFACTS.items():
        if name not in res["latency"]:
            continue
        card = zoo_card(zoo_id)
        if res.get("sources", {}).get(name) != card["sha256"]:  # FP32 from the card, INT8 from the artifact: one model
            raise SystemExit(f"{dispatch_work / 'results.json'}: `{name}` was not converted from the zoo's {zoo_id} "
                             "(republished since, or results older than their sources): rerun bench/dispatch.py")
        fp32 = {r["dataset"]: r["psnr_y"] for r in card["results"]}
        out.append({"artifact": name, "model": zoo_id, "kind": kind, "form": form, "lat": res["latency"][name],
                    "fp32": fp32, "int8": {d: v["psnr_y"] for d, v in res["psnr"].get(name, {}).items()},
                    "budget": budget_hours(card), "lat_note": ""})
    check = _json(WORK / "latency_check.json").get("latency", {})
    for run_id, b in BENCH_RUNS.items():
        scored = _json(WORK / f"{run_id}.json")
        if not scored or b.shares not in res["latency"]:
            continue
        hours = bench_run_hours(run_id)
        out.append({"artifact": f"{run_id} INT8", "model": run_id, "kind": b.kind, "form": ARTIFACTS[b.shares][2],
                    "lat": res["latency"][b.shares], "fp32": scored["fp32"], "int8": scored["int8"],
                    "budget": f"<={hours:.2f}", "lat_note": f"same graph as `{b.shares}`" + (
                        f"; timed together: {check[f'{run_id} INT8']['min_ms']:.2f} vs {check[b.shares]['min_ms']:.2f}"
                        if f"{run_id} INT8" in check and b.shares in check else "")})
    for r in out:
        r["mean_fp32"] = sum(r["fp32"][d] for d in SETS_FP32) / len(SETS_FP32)
        r["mean_int8"] = (sum(r["int8"][d] for d in SETS_INT8) / len(SETS_INT8)
                          if all(d in r["int8"] for d in SETS_INT8) else None)
    return out, res


def _hours(card: dict) -> float:
    return float(budget_hours(card).lstrip("<="))


def bench_run_hours(run_id: str) -> float:
    """Every stage behind a scored bench run: the zoo model or bench run it continues, its own CPU seconds and, for a
    later stage with a teacher of its own, that teacher's budget (the zoo's x3 hard card counts it the same way)."""
    from nsr_edge.hub import zoo_card

    start = start_run(run_id)
    published = [card.parent.name for card in sorted((ROOT / "zoo").glob("*/card.json"))
                 if published_run(card.parent.name) == start]  # the zoo model whose run it is, if any
    before = _hours(zoo_card(published[0])) if published else bench_run_hours(start)
    job = copied_job(run_id)  # a seed repeat: the job it repeats
    teacher = DISTILLED_FINAL_JOBS[job].teacher if job in DISTILLED_FINAL_JOBS else None
    if (own := _json(WORK / f"{run_id}.json").get("cpu_seconds")) is None:
        raise SystemExit(f"{run_id}: not scored, its CPU seconds unknown (bench/front_zoo.py runs)")
    return before + own / 3600 + (_hours(zoo_card(teacher)) if teacher else 0.0)


def mark_fronts(rs: list[dict]) -> None:
    mark_pareto(rs, FRONT_KEYS, _q)


def _q(r: dict, key: str) -> float | None:
    if key.startswith("set5_"):
        return (r["fp32"] if key == "set5_fp32" else r["int8"]).get("set5")
    return r.get(key)


def plot(rs: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    panels = [("mean_fp32", "FP32 Y-PSNR, mean of Set5/Set14/BSD100 (dB)"),
              ("mean_int8", "INT8 Y-PSNR, mean of Set5/Set14, 64 px deploy tiles (dB)")]
    colors = {"dense": "tab:blue", "NSR soft": "tab:green", "NSR hard top-1": "tab:orange"}
    # The equal-MACs cluster (dense, hard NSR, the controls), magnified in an inset: around the equal-MACs program's
    # latency (the machines it ran on differed by up to 4x).
    eqm_ms = next(r["lat"]["min_ms"] for r in rs if r["artifact"] == "dense eqM INT8")
    zoom_ms = (0.9 * eqm_ms, 1.2 * eqm_ms)

    def draw(ax, pts: list[dict], key: str, label_all: bool) -> None:
        placed: list[float] = []  # heights (points) of the labels drawn so far, top down
        for r in sorted(pts, key=lambda r: -_q(r, key)):
            color = next(c for k, c in colors.items() if r["kind"].startswith(k))
            marker = "s" if "dispatch" in r["form"] else "^" if "routing inside" in r["form"] else "o"
            ax.scatter(r["lat"]["min_ms"], _q(r, key), marker=marker, color=color, s=45, zorder=3)
            if label_all or not zoom_ms[0] <= r["lat"]["min_ms"] <= zoom_ms[1]:
                below = "dispatch" in r["form"]  # the hard model's two artifacts sit side by side: labels apart
                dy = -9 if below else 3
                if label_all:  # the inset (limits set): points a few hundredths of a dB apart, stack their labels
                    y_pt = ax.transData.transform((r["lat"]["min_ms"], _q(r, key)))[1] * 72 / fig.dpi + dy
                    while any(abs(y_pt - p) < 7 for p in placed):
                        y_pt, dy = y_pt - 7, dy - 7
                    placed.append(y_pt)
                ax.annotate(r["model"] + (" (dispatch)" if below else ""), (r["lat"]["min_ms"], _q(r, key)),
                            fontsize=6 if label_all else 7, xytext=(4, dy), textcoords="offset points")
        front = sorted((r for r in pts if r[f"front_{key}"]), key=lambda r: r["lat"]["min_ms"])
        ax.plot([r["lat"]["min_ms"] for r in front], [_q(r, key) for r in front], "k--", lw=1, zorder=2)
        ax.scatter([r["lat"]["min_ms"] for r in front], [_q(r, key) for r in front], s=180, facecolors="none",
                   edgecolors="k", zorder=4)

    for ax, (key, label) in zip(axes, panels):
        pts = [r for r in rs if _q(r, key) is not None]
        draw(ax, pts, key, label_all=False)
        ax.set_xlabel("ExecuTorch INT8 latency per 64 px tile, 1 thread, min (ms)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        near = [_q(r, key) for r in pts if zoom_ms[0] <= r["lat"]["min_ms"] <= zoom_ms[1]]
        if len(near) > 1:
            inset = ax.inset_axes([0.55, 0.42, 0.43, 0.45])  # upper right: empty
            pad = (max(near) - min(near)) * 0.15
            inset.set_xlim(*zoom_ms)
            inset.set_ylim(min(near) - pad, max(near) + pad)
            draw(inset, pts, key, label_all=True)
            inset.tick_params(labelsize=7)
            inset.grid(alpha=0.3)
            ax.indicate_inset_zoom(inset, edgecolor="0.5")
    handles = [Line2D([], [], marker="o", ls="", color="tab:blue", label="dense (one program)"),
               Line2D([], [], marker="o", ls="", color="tab:green", label="NSR soft (output mixing)"),
               Line2D([], [], marker="^", ls="", color="tab:orange", label="NSR hard, routing in one program"),
               Line2D([], [], marker="s", ls="", color="tab:orange", label="NSR hard, host dispatch"),
               Line2D([], [], ls="--", marker="o", mfc="none", ms=12, color="k", label="Pareto front (ringed)")]
    fig.legend(handles=handles, fontsize=8, loc="lower center", ncol=len(handles))
    fig.suptitle("SR x2 zoo models and equal-budget controls: Y-PSNR vs measured INT8 latency")
    fig.tight_layout(rect=(0, 0.06, 1, 1))  # room for the legend below the panels
    fig.savefig(PNG, dpi=110)


END = "<!-- end of generated part: what follows is written by hand and kept by `bench/front_zoo.py report` -->"


def cmd_report(args) -> int:
    rs, res = rows(Path(args.dispatch_work))
    mark_fronts(rs)
    plot(rs)
    load = res.get("load", [[float("nan")]] * 2)
    timing = _json(Path(args.dispatch_work) / "latency.json")
    L = ["# The accuracy-latency front at the zoo's budget, SR x2 (issue 15 item 3)", "",
         "Produced by `bench/front_zoo.py report` from bench/dispatch.py's last run "
         f"(`{timing.get('command', '-')}`: every artifact in one interleaved run, {timing.get('rounds', '-')} rounds x "
         f"{timing.get('runs_per_round', '-')} runs, one 64 px tile per run, 1 thread, load average "
         f"{load[0][0]:.1f} before / {load[1][0]:.1f} after) and the zoo cards; the bench runs (the control, the distilled runs) from "
         "`bench/front_zoo.py runs`. FP32: the zoo evaluation (reference protocol; hard models hard top-1). INT8: ExecuTorch/XNNPACK PT2E "
         "PTQ, Y-PSNR through the 64 px deploy tiling. Budget: training CPU-hours, every stage (`<=`: a first stage "
         "that recorded wall time only); a distilled run's teacher is the soft `nsr_sr_x2`: counted "
         "in the hard run's budget (its start), not in the dense run's; the `_eqp5k` pair's later teacher, the dense "
         "model of equal parameters, in both.", "",
         f"Timed on: {res.get('machine') or 'not recorded (results.json predates the field)'}; "
         f"{os.cpu_count()} cores (shared).", "",
         "| model | artifact | budget CPU-h | FP32 Set5 / Set14 / BSD100 | FP32 mean | INT8 Set5 / Set14 | INT8 mean "
         "| INT8 ms min | median | on front (FP32 mean / INT8 mean / FP32 Set5 / INT8 Set5) |",
         "|---|---|---:|---|---:|---|---:|---:|---:|---|"]
    for r in sorted(rs, key=lambda r: r["lat"]["min_ms"]):
        i8 = " / ".join(f"{r['int8'][d]:.3f}" for d in SETS_INT8 if d in r["int8"]) or "-"
        L.append(f"| `{r['model']}` ({r['kind']}) | {r['form']} | {r['budget']} | "
                 + " / ".join(f"{r['fp32'][d]:.3f}" for d in SETS_FP32) + f" | {r['mean_fp32']:.3f} | {i8} | "
                 + (f"{r['mean_int8']:.3f}" if r["mean_int8"] is not None else "-")
                 + f" | {r['lat']['min_ms']:.2f}" + (f" ({r['lat_note']})" if r["lat_note"] else "")
                 + f" | {r['lat']['median_ms']:.2f} | "
                 + " / ".join("yes" if r[f"front_{k}"] else "no" for k in FRONT_KEYS)
                 + " |")
    on = {k: [f"{r['model']} ({r['form']})" for r in rs if r["kind"].startswith("NSR hard") and r[f"front_{k}"]]
          for k in FRONT_KEYS}
    L += ["", "![Y-PSNR vs INT8 latency, zoo models](front_zoo.png)", "",
          "Computed from the table: hard NSR artifacts on the FP32-mean front: " + (", ".join(on["mean_fp32"]) or "none")
          + "; on the INT8-mean front: " + (", ".join(on["mean_int8"]) or "none") + "; on the FP32 Set5 front: "
          + (", ".join(on["set5_fp32"]) or "none") + "; on the INT8 Set5 front: " + (", ".join(on["set5_int8"]) or "none")
          + ".", "", END]
    write_keeping_hand_written(DOC, L, END)
    print(f"wrote {DOC} and {PNG}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    runs = sub.add_parser("runs")
    runs.add_argument("--only", nargs="*", choices=list(BENCH_RUNS))
    rep = sub.add_parser("report")
    tim = sub.add_parser("time")
    tim.add_argument("--rounds", type=int, default=15)
    tim.add_argument("--runs-per-round", type=int, default=4)
    for p in (rep, tim):
        p.add_argument("--dispatch-work", default=str(ROOT / "runs" / "bench_dispatch"),
                       help="bench/dispatch.py's --work folder (its results.json and latency.json; its artifacts)")
    args = ap.parse_args()
    os.chdir(ROOT)
    return {"runs": cmd_runs, "time": cmd_time, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
