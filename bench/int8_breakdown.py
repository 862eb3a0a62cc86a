"""Where the INT8 time of the soft NSR model goes on ExecuTorch/XNNPACK, and what each INT8 variant buys.

    .venv/bin/python bench/int8_breakdown.py --psnr-only            # convert (cached) + Y-PSNR, no timing
    bench/quiet_run.sh .venv/bin/python bench/int8_breakdown.py --own-autogroup   # timing (PSNR from the cache)

For each variant (the FP32 program and INT8 recipes of ``nsr_sr_x2``, output mixing, tile 64, converted by the real
pipeline and cached in --work): the wall time per tile in ONE interleaved run (one child process per artifact, 1
thread, rounds alternated; min and median), an ETDump per-op breakdown (``--traced`` runs per artifact; per op
instance the min and the median over the runs, summed by kind: int8 convs, float convs, convert (quantize /
dequantize), mul, add, slice/cat, other), and the Y-PSNR drop vs the FP32 PyTorch model on Set5/Set14 through the
deploy tiling, each artifact in its runtime (`validate`). Writes --out (docs/int8_breakdown.md) and --work/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import sys
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.artifact_cache import convert_unless_current  # noqa: E402
from nsr_edge.converters.pipeline import ConvertOptions  # noqa: E402
from bench.dispatch import own_autogroup, sched_note  # noqa: E402
from nsr_edge.runtime.card import artifact_path, load_card  # noqa: E402

GROUPS = ("int8 convs", "float convs", "convert (q/dq)", "mul", "add", "slice/cat", "other")

# name -> (recipe, fp32_parts override or None, QAT steps or None, what it changes)
VARIANTS: dict[str, tuple[str, tuple[str, ...] | None, int | None, str]] = {
    "FP32": ("fp32", None, None, "the reference program"),
    "int8-ptq": ("int8-ptq", None, None,
                 "default: routing (heads + mixing), image-side convs, output, residual in float"),
    "int8-ptq-mix": ("int8-ptq-mix", None, None, "gate multiply, bank slices and sums in int8 (routing heads float)"),
    "mix + image convs int8": ("int8-ptq-mix", ("heads", "output", "residual"), None,
                               "int8-ptq-mix with the first/last/skip convs in int8 too"),
    "mix + residual int8": ("int8-ptq-mix", ("heads", "first", "last", "skip", "output"), None,
                            "int8-ptq-mix with the residual adds in int8 too"),
    "mix + image convs int8, QAT 50": ("int8-qat", ("heads", "output", "residual"), 50,
                                       "the image-convs variant fine-tuned with int8-qat (50 steps)"),
}


def group_of(kind: str) -> str:
    if kind.startswith("Convolution"):
        return "float convs" if "F32" in kind or "F16" in kind else "int8 convs"
    for key, g in (("Convert", "convert (q/dq)"), ("Multiply", "mul"), ("Add", "add"), ("Subtract", "add"),
                   ("Slice", "slice/cat"), ("Concatenate", "slice/cat"), ("Copy", "slice/cat")):
        if kind.startswith(key):
            return g
    return "other"


def per_op(etdump: str, etrecord: Path) -> dict[str, Any]:
    """Per op instance the min and median over the traced runs, summed by kind and by group."""
    from executorch.devtools import Inspector

    from nsr_edge.etdevtools import load_etrecord

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = Inspector(etdump_path=etdump, etrecord=load_etrecord(etrecord) if etrecord.is_file() else None
                       ).to_dataframe()
    kinds: dict[str, dict[str, float]] = {}
    execute: list[float] = []
    for _, r in df.iterrows():
        raw = r.get("raw")
        if r.get("event_block_name") != "Execute" or raw is None or not len(raw):
            continue
        name = str(r.get("event_name"))
        if name == "Method::execute":
            execute = list(raw)
        if name in ("Method::execute", "DELEGATE_CALL"):
            continue
        kind = re.sub(r" #\d+$", "", name)
        k = kinds.setdefault(kind, {"min": 0.0, "median": 0.0, "count": 0})
        k["min"] += float(np.min(raw))
        k["median"] += float(np.median(raw))
        k["count"] += 1
    groups = {g: {"min": 0.0, "median": 0.0, "count": 0} for g in GROUPS}
    for kind, v in kinds.items():
        for f in ("min", "median", "count"):
            groups[group_of(kind)][f] += v[f]
    return {"kinds": kinds, "groups": groups,
            "execute_ms": {"min": float(np.min(execute)), "median": float(np.median(execute))} if execute else None}


def traced(folders: dict[str, Path], runs: int, rounds: int = 5) -> dict[str, dict[str, Any]]:
    """ETDump of every artifact, all traced in ONE interleaved run (like the wall times: one child per artifact,
    ``runs`` split over ``rounds`` rounds, order reversed every other round), so a burst of load hits all alike."""
    from nsr_edge.runtime.runners.child import RunnerProcess

    with tempfile.TemporaryDirectory() as tmp:
        procs: dict[str, Any] = {}
        try:
            for n, f in folders.items():
                card = load_card(f)
                procs[n] = RunnerProcess("executorch", str(artifact_path(f, card)), "forward", 1,
                                         etdump=str(Path(tmp) / f"{f.name}.etdp"))
            x = {n: np.random.default_rng(0).random(p.input_shape, dtype=np.float32) for n, p in procs.items()}
            for n, p in procs.items():
                p.time(x[n], 0, 3)
            per_round = max(1, runs // rounds)
            for r in range(rounds):
                for n in (list(procs) if r % 2 == 0 else list(reversed(procs))):
                    procs[n].time(x[n], per_round, 0)
            for p in procs.values():
                p.write_etdump()
        finally:
            for p in procs.values():
                p.close()
        return {n: per_op(str(Path(tmp) / f"{f.name}.etdp"), f / "etrecord.bin") for n, f in folders.items()}


def cached_psnr(folder: Path) -> dict[str, dict[str, float]]:
    """What `--psnr-only` stored for this artifact (the timing run never validates: it holds the timing lock)."""
    cache = folder / "bench_psnr.json"
    return json.loads(cache.read_text()) if cache.is_file() else {}


def psnr(folder: Path, sets: list[str], limit: int | None) -> dict[str, dict[str, float]]:
    cache = folder / "bench_psnr.json"
    cached = cached_psnr(folder)
    if all(s in cached for s in sets):
        return cached
    from nsr_edge.reference import reference_fn
    from nsr_edge.runtime.evaluation import task_images
    from nsr_edge.runtime.validate import validate_artifact

    card = load_card(folder)
    images = {d: task_images(card.task, d, limit=limit)[1] for d in sets}
    reports = validate_artifact(str(folder), card, images, lambda: reference_fn(card), progress=False)
    out = {d: {"psnr_y": r["summary"]["psnr_y"], "fp32_model": r["summary"]["psnr_y_fp32"]} for d, r in reports.items()}
    cache.write_text(json.dumps(out, indent=1) + "\n")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="nsr_sr_x2")
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--work", default=str(ROOT / "out/int8/bench"))
    ap.add_argument("--variants", nargs="*", default=[v for v in VARIANTS if "QAT" not in v],
                    help=f"any of: {', '.join(VARIANTS)} (default: all but the QAT one)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--runs-per-round", type=int, default=4)
    ap.add_argument("--traced", type=int, default=30, help="ETDump runs per artifact")
    ap.add_argument("--sets", nargs="*", default=["set5", "set14"])
    ap.add_argument("--psnr-limit", type=int, default=None)
    ap.add_argument("--psnr-only", action="store_true", help="convert and validate, no timing")
    ap.add_argument("--own-autogroup", action="store_true",
                    help="time in a new scheduler autogroup at nice -20 (bench/dispatch.py own_autogroup)")
    ap.add_argument("--out", default=str(ROOT / "docs/int8_breakdown.md"))
    args = ap.parse_args()
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        print(f"int8_breakdown: unknown variant(s) {bad}; known: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    os.chdir(ROOT)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    folders: dict[str, Path] = {}
    for name in args.variants:
        recipe, parts, qat_steps, _ = VARIANTS[name]
        folder = work / f"{args.model}_{re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_')}_t{args.tile}"
        folders[name] = convert_unless_current(
            folder, ConvertOptions(model=args.model, recipe=recipe, tile=args.tile, progress=False,
                                   recipe_overrides={"fp32_parts": parts} if parts is not None else {},
                                   qat_steps=qat_steps, qat_dir=str(work / f"{folder.name}.qat")), name)
    if args.psnr_only:
        print(json.dumps({n: psnr(f, args.sets, args.psnr_limit) for n, f in folders.items()}, indent=1))
        return 0
    acc = {n: cached_psnr(f) for n, f in folders.items()}
    if args.own_autogroup:
        own_autogroup()

    from nsr_edge.runtime.profile import time_interleaved

    lat, load0, load1 = time_interleaved(folders, args.rounds, args.runs_per_round)
    ops = traced(folders, args.traced)
    load2 = os.getloadavg()
    results = {"latency": lat, "ops": ops, "psnr": acc, "load": [load0, load1, load2],
               "folders": {n: str(f) for n, f in folders.items()}}
    (work / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    Path(args.out).write_text(report(args, folders, lat, ops, acc, (load0, load1, load2)))
    print(Path(args.out).read_text())
    return 0


def report(args, folders, lat, ops, acc, loads) -> str:
    versions = {d: metadata.version(d) for d in ("torch", "executorch", "torchao", "numpy")}
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    fp = "FP32" if "FP32" in lat else None
    lines = [
        f"# INT8 vs FP32 on ExecuTorch/XNNPACK: where the time goes ({args.model}, output mixing, tile {args.tile}, "
        "1 thread)", "",
        f"Produced by `bench/int8_breakdown.py {shlex.join(sys.argv[1:])}` (PSNR from `--psnr-only`, cached per "
        f"artifact) on {platform.machine()} {cpu} ({os.cpu_count()} cores), Python {platform.python_version()}, "
        + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        f"Load average (1 min) {loads[0][0]:.2f} before / {loads[1][0]:.2f} after the interleaved rounds / "
        f"{loads[2][0]:.2f} after the traced runs{sched_note()}. Wall: {args.rounds} interleaved rounds x {args.runs_per_round} "
        "runs per artifact, one child process each; the ratio uses the min (the least disturbed run on a shared "
        f"machine). ETDump: {args.traced} traced runs per artifact, interleaved in 5 rounds like the wall times; per op "
        "instance the min (and median) over the runs, summed.", "",
        "## Variants: speed and accuracy", "",
        "| variant | recipe / float parts | wall min ms | wall median ms | FP32/variant (min) | traced ms (min) | "
        "FP32/variant traced | " + " | ".join(f"{d} Y-PSNR | drop dB" for d in args.sets) + " |",
        "|---|---|---:|---:|---:|---:|---:|" + "---:|---:|" * len(args.sets),
    ]
    for name, folder in folders.items():
        card = load_card(folder)
        rec = card.recipe
        parts = ",".join(rec.get("fp32_parts") or []) if rec.get("method", "none") != "none" else "-"
        tr = sum(g["min"] for g in ops[name]["groups"].values())
        trf = sum(g["min"] for g in ops[fp]["groups"].values()) if fp else None
        cells = []
        for d in args.sets:
            a = acc[name].get(d)
            cells += [f"{a['psnr_y']:.3f}", f"{a['fp32_model'] - a['psnr_y']:+.3f}"] if a else ["-", "-"]
        lines.append(
            f"| {name} | {rec.get('name')} / {parts} | {lat[name]['min_ms']:.2f} | {lat[name]['median_ms']:.2f} | "
            f"{lat[fp]['min_ms'] / lat[name]['min_ms']:.2f}x | {tr:.2f} | {trf / tr:.2f}x | " + " | ".join(cells) + " |"
            if fp else f"| {name} | {parts} | {lat[name]['min_ms']:.2f} | - | {tr:.2f} | - | " + " | ".join(cells) + " |")
    lines += ["", "Drop: the FP32 PyTorch model's Y-PSNR minus the artifact's, same deploy tiling (positive = worse).",
              "", "## Per-op breakdown (ETDump, ms per tile: sum over op instances of the per-instance min; "
              "instances in brackets)", "",
              "| group | " + " | ".join(folders) + " |", "|---|" + "---:|" * len(folders)]
    for g in GROUPS:
        lines.append(f"| {g} | " + " | ".join(
            f"{ops[n]['groups'][g]['min']:.2f} ({ops[n]['groups'][g]['count']})" for n in folders) + " |")
    lines.append("| **sum** | " + " | ".join(f"**{sum(v['min'] for v in ops[n]['groups'].values()):.2f}**"
                                             for n in folders) + " |")
    lines.append("| Method::execute (min / median) | " + " | ".join(
        f"{ops[n]['execute_ms']['min']:.2f} / {ops[n]['execute_ms']['median']:.2f}" if ops[n]["execute_ms"] else "-"
        for n in folders) + " |")
    lines += ["", "Op kinds (XNNPACK's names; ms = sum of per-instance min, median in brackets):", ""]
    for n in folders:
        kinds = sorted(ops[n]["kinds"].items(), key=lambda kv: -kv[1]["min"])
        lines.append(f"- **{n}**: " + "; ".join(f"{k} x{v['count']} {v['min']:.2f} ({v['median']:.2f})"
                                               for k, v in kinds if v["min"] >= 0.005 or v["median"] >= 0.005))
    lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
