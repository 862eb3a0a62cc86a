"""Whole-model NSR on ExecuTorch/XNNPACK: host dispatch (hard routing) vs output mixing vs the dense models of equal
parameters and equal MACs. Latency (1 thread, per 64 px tile, interleaved rounds in one run: min and median) and
Set5 Y-PSNR through the deploy tiling, each artifact run by its real runner in a child process.

    .venv/bin/python bench/dispatch.py [--work runs/bench_dispatch] [--rounds 15] [--out docs/dispatch.md]

Artifacts are converted with `nsr-edge convert`'s pipeline (cached in --work: delete a folder to convert it again).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nsr_edge.converters.pipeline import ConvertOptions, convert  # noqa: E402
from nsr_edge.runtime.card import artifact_path, load_card, tile_spec  # noqa: E402
from nsr_edge.runtime.runners.child import RunnerProcess  # noqa: E402

ST = "runs/hard/nsr_sr_x2_st/model.pt"
SHARED = "runs/hard/nsr_sr_x2_shared_st/model.pt"


def eqparams_model() -> str:
    return "dense_sr_x2_eqparams" if (ROOT / "zoo/dense_sr_x2_eqparams/model.pt").is_file() else \
        "runs/zoo/dense_sr_x2_eqparams/last.pt"


def variants() -> list[tuple[str, dict]]:
    eqp = eqparams_model()
    out = []
    for recipe in ("fp32", "int8-ptq"):
        q = "INT8" if recipe != "fp32" else "FP32"
        out += [
            (f"dense eqP {q}", dict(model=eqp, target="executorch", recipe=recipe)),
            (f"dense eqM {q}", dict(model="dense_sr_x2_eqmacs", target="executorch", recipe=recipe)),
            (f"NSR soft output-mix {q}", dict(model="nsr_sr_x2", target="executorch", recipe=recipe)),
            (f"NSR ST output-mix {q}", dict(model=ST, target="executorch", recipe=recipe)),
            (f"NSR ST dispatch/layer {q}", dict(model=ST, target="executorch-dispatch", recipe=recipe, strategy="hard")),
            (f"NSR shared-ST dispatch/block {q}", dict(model=SHARED, target="executorch-dispatch", recipe=recipe,
                                                       strategy="hard")),
        ]
    return [(n, v) for n, v in out if (ROOT / v["model"]).exists() or not v["model"].startswith("runs/")]


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "runs/bench_dispatch"))
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--runs-per-round", type=int, default=4)
    ap.add_argument("--psnr-limit", type=int, default=None, help="first N Set5 images (default all 5)")
    ap.add_argument("--skip-psnr", action="store_true")
    ap.add_argument("--convert-only", action="store_true")
    ap.add_argument("--only", nargs="*", help="substrings of variant names")
    ap.add_argument("--out", default=str(ROOT / "docs/dispatch_bench.md"))
    args = ap.parse_args()
    os.chdir(ROOT)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    chosen = [(n, v) for n, v in variants() if not args.only or any(s in n for s in args.only)]
    folders = {}
    for name, v in chosen:
        folder = work / f"{slug(name)}_t{args.tile}"
        if not (folder / "model.json").is_file():
            t0 = time.time()
            print(f"converting {name} ...", file=sys.stderr, flush=True)
            convert(ConvertOptions(tile=args.tile, calibration_tiles=64, progress=False, **v), str(folder), force=True)
            print(f"  {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
        folders[name] = folder
    if args.convert_only:
        return 0

    # ---------------------------------------------------------------- latency: interleaved rounds, one process each
    x = np.random.default_rng(0).random((1, 3, args.tile, args.tile), dtype=np.float32)
    procs = {}
    try:
        for name, folder in folders.items():
            card = load_card(folder)
            procs[name] = RunnerProcess(card["runner"], str(artifact_path(folder, card)), "forward", 1)
        times: dict[str, list[float]] = {n: [] for n in procs}
        for p in procs.values():
            p.time(x, 2, 2)
        load_before = os.getloadavg()
        for r in range(args.rounds):
            order = list(procs) if r % 2 == 0 else list(reversed(procs))
            for n in order:
                times[n] += procs[n].time(x, args.runs_per_round, 1)
        load_after = os.getloadavg()
    finally:
        for p in procs.values():
            p.close()
    lat = {n: {"min_ms": 1e3 * min(t), "median_ms": 1e3 * float(np.median(t)), "n": len(t)} for n, t in times.items()}

    (work / "latency.json").write_text(json.dumps({"latency": lat, "load": [load_before, load_after]}, indent=1))

    # ---------------------------------------------------------------- accuracy: Set5 through the deploy tiling
    psnr: dict[str, dict] = {}
    soft_fp32 = None
    if not args.skip_psnr:
        from nsr_edge.commands.deploy import load_inputs, reference_fn
        from nsr_edge.runtime.tasks import TaskSpec
        from nsr_edge.runtime.validate import validate_images

        cache: dict[str, float] = {}
        for name, folder in folders.items():
            card = load_card(folder)
            task = TaskSpec.from_dict(card["model"]["task"])
            _, inputs = load_inputs(task, "set5", None, None, args.psnr_limit)
            try:
                ref = reference_fn(card)
            except Exception as e:  # noqa: BLE001 - e.g. a still-training checkpoint changed since conversion
                print(f"{name}: no FP32 reference ({e})", file=sys.stderr)
                ref = None
            with RunnerProcess(card["runner"], str(artifact_path(folder, card)), "forward", 1) as proc:
                rep = validate_images(inputs, task, tile_spec(card), proc.run, ref, progress=False)
            s = rep["summary"]
            psnr[name] = {"psnr_y": s["psnr_y"], "fp32_model": s["psnr_y_fp32"] or float("nan"), "drop_db": s["drop_db"]}
            if card["model"]["id"] == "nsr_sr_x2":
                soft_fp32 = s["psnr_y_fp32"]
            print(f"{name}: Set5 {s['psnr_y']:.3f} (its FP32 model {psnr[name]['fp32_model']:.3f})", file=sys.stderr,
                  flush=True)
        del cache

    # ---------------------------------------------------------------- report
    def ratio(a: str, b: str, key: str) -> str:
        return f"{lat[a][key] / lat[b][key]:.2f}" if a in lat and b in lat else "-"

    versions = {d: metadata.version(d) for d in ("torch", "executorch", "torchao", "numpy")}
    lines = [
        "# Whole-model NSR dispatch on ExecuTorch/XNNPACK (SR x2, tile 64, 1 thread)", "",
        f"Produced by `bench/dispatch.py` on {platform.machine()} ({os.cpu_count()} cores), Python "
        f"{platform.python_version()}, " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        f"Load average {load_before[0]:.1f} before / {load_after[0]:.1f} after the timed rounds (other jobs were "
        "training on this machine: absolute times are indicative, ratios come from the same interleaved rounds).",
        f"{args.rounds} interleaved rounds x {args.runs_per_round} runs per variant, one child process per artifact, "
        "one 64x64 tile per run (dispatch: the whole host orchestration).", "",
        "| variant | calls/tile | min ms | median ms | x eqP (median) | x eqM (median) | Set5 Y-PSNR | its FP32 model | "
        "vs soft FP32 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in procs:
        q = "INT8" if "INT8" in name else "FP32"
        card = load_card(folders[name])
        calls = (card.get("target_extra") or {}).get("dispatch", {}).get("calls_per_tile", 1)
        p = psnr.get(name, {})
        vs_soft = f"{p['psnr_y'] - soft_fp32:+.3f}" if p and soft_fp32 is not None else "-"
        lines.append(f"| {name} | {calls} | {lat[name]['min_ms']:.2f} | {lat[name]['median_ms']:.2f} | "
                     f"{ratio(name, f'dense eqP {q}', 'median_ms')} | {ratio(name, f'dense eqM {q}', 'median_ms')} | "
                     f"{p.get('psnr_y', float('nan')):.3f} | {p.get('fp32_model', float('nan')):.3f} | {vs_soft} |")
    lines += ["", "Ratios by min time: " + "; ".join(
        f"{n}: x eqP {ratio(n, 'dense eqP ' + ('INT8' if 'INT8' in n else 'FP32'), 'min_ms')}, "
        f"x eqM {ratio(n, 'dense eqM ' + ('INT8' if 'INT8' in n else 'FP32'), 'min_ms')}"
        for n in procs if "NSR" in n) + ".", ""]
    Path(args.out).write_text("\n".join(lines) + "\n")
    (work / "results.json").write_text(json.dumps({"latency": lat, "psnr": psnr, "soft_fp32": soft_fp32,
                                                   "load": [load_before, load_after]}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
