"""Which runtime to pick for NSR on CPU: the same model on every target that runs here (ExecuTorch/XNNPACK, LiteRT,
ONNX Runtime; FP32 and INT8 PTQ; hard-routed dispatch on ExecuTorch and LiteRT), profiled interleaved (1 thread, the
same tile, several rounds: median and min per tile) and validated on Set5 (Y-PSNR through the deploy tiling, each
artifact run by its real runner in a child process). Writes one table to docs/runtimes.md.

    .venv/bin/python bench/runtimes.py [--models nsr_sr_x2 dense_sr_x2_eqmacs dense_sr_x2_eqparams] [--rounds 10]

Resumable: every artifact is converted once into --work (``out/bench_runtimes/<variant>``; delete a folder to convert
it again) and its Set5 result is cached beside it (``set5.json``, keyed by the card's artifact digest), so a rerun
only re-times. ``--only`` restricts to variants whose name contains one of the given substrings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.artifact_cache import convert_unless_current  # noqa: E402
from nsr_edge.converters.pipeline import ConvertOptions
from nsr_edge.runtime.card import artifact_path, load_card
from nsr_edge.runtime.profile import cpu_model, time_interleaved

# (label, target, recipe, strategy) per runtime; hard-routed models get the dispatch targets instead
SOFT = [("ExecuTorch FP32", "executorch", "fp32", "output-mix"),
        ("ExecuTorch INT8", "executorch", "int8-ptq", "output-mix"),
        ("LiteRT FP32", "litert", "fp32", "output-mix"),
        ("LiteRT INT8", "litert", "int8-ptq", "output-mix"),
        ("ORT FP32", "onnxruntime", "fp32", "output-mix"),
        ("ORT INT8", "onnxruntime", "int8-ptq", "output-mix")]
SPARSE_ONLY = [("ORT FP32 kernel-mix", "onnxruntime", "fp32", "kernel-mix")]  # exact soft routing at ~1 bank's MACs
HARD = [("ExecuTorch dispatch FP32", "executorch-dispatch", "fp32", "hard"),
        ("ExecuTorch dispatch INT8", "executorch-dispatch", "int8-ptq", "hard"),
        ("LiteRT dispatch FP32", "litert", "fp32", "hard"),
        ("LiteRT dispatch INT8", "litert", "int8-ptq", "hard")]
BASELINE = "ExecuTorch FP32"
NOTES = "<!-- notes: written by hand, kept by reruns -->"


def variants(models: list[str], hard_model: str | None) -> list[tuple[str, str, dict]]:
    """(model id, label, ConvertOptions fields) for every row of the table."""
    out = []
    for m in models:
        rows = SOFT + (SPARSE_ONLY if m.startswith("nsr_") else [])
        out += [(m, label, dict(model=m, target=t, recipe=r, strategy=s)) for label, t, r, s in rows]
    if hard_model:
        out += [(hard_model, label, dict(model=hard_model, target=t, recipe=r, strategy=s)) for label, t, r, s in HARD]
    return out


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()


def converted(work: Path, model: str, label: str, options: dict, tile: int) -> Path:
    return convert_unless_current(work / f"{slug(model)}__{slug(label)}_t{tile}",
                                  ConvertOptions(tile=tile, progress=False, **options), f"{model} {label}")


def set5(folder: Path, limit: int | None) -> dict:
    """Set5 Y-PSNR of the artifact and of its own FP32 PyTorch model, cached by the artifact's digest."""
    from nsr_edge.runtime.evaluation import task_images
    from nsr_edge.runtime.validate import validate_artifact

    from nsr_edge.reference import reference_fn

    card = load_card(folder)
    cache = folder / "set5.json"
    key = {"sha256": card.artifact.sha256, "limit": limit}
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["result"]
    images = {"set5": task_images(card.task, "set5", limit=limit)[1]}
    s = validate_artifact(str(folder), card, images, lambda: reference_fn(card), progress=False)["set5"]["summary"]
    result = {"psnr_y": s["psnr_y"], "psnr_y_fp32": s["psnr_y_fp32"], "max_abs": s.get("max_abs_vs_reference")}
    cache.write_text(json.dumps({"key": key, "result": result}, indent=1))
    return result


def profile(folders: dict[str, Path], tile: int, rounds: int, runs: int) -> tuple[dict, tuple, tuple]:
    """One child process per artifact, all loaded at once; rounds alternate the order (interleaved)."""
    lat, before, after = time_interleaved(folders, rounds, runs, warmup=3)
    return lat, before, after


def ort_ops(path: Path, tile: int, runs: int = 50) -> dict:
    """What ORT runs for one .onnx after its graph optimisations (1 thread): op counts of the optimised graph
    (``optimized_model_filepath``) and the time per op type from ORT's profiler (mean per run, microseconds)."""
    import tempfile
    from collections import Counter, defaultdict

    import onnx
    import onnxruntime as ort

    x = np.random.default_rng(0).random((1, 3, tile, tile), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        o = ort.SessionOptions()
        o.intra_op_num_threads, o.inter_op_num_threads = 1, 1
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        o.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        o.log_severity_level = 3
        o.enable_profiling, o.profile_file_prefix = True, str(Path(tmp) / "prof")
        s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        for _ in range(runs):
            s.run(None, {name: x})
        events = json.loads(Path(s.end_profiling()).read_text())
        ops = Counter(n.op_type for n in onnx.load(o.optimized_model_filepath).graph.node)
    total: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            total[e["args"]["op_name"]] += e["dur"] / runs
    return {"optimized_ops": dict(ops.most_common()),
            "mean_us_per_run": {op: round(t, 1) for op, t in sorted(total.items(), key=lambda kv: -kv[1])}}


def versions() -> dict[str, str]:
    out = {}
    for d in ("torch", "executorch", "litert-torch", "ai-edge-litert", "ai-edge-quantizer", "onnxruntime", "onnx",
              "numpy"):
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = "absent"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["nsr_sr_x2"], help="soft/dense models (every runtime)")
    ap.add_argument("--hard-model", default="nsr_sr_x2_hard", help="hard-routed model for the dispatch rows ('' none)")
    ap.add_argument("--work", default=str(ROOT / "out/bench_runtimes"))
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--runs-per-round", type=int, default=5)
    ap.add_argument("--psnr-limit", type=int, default=None, help="first N Set5 images (default all 5)")
    ap.add_argument("--only", nargs="*", help="substrings of '<model> <label>'")
    ap.add_argument("--convert-only", action="store_true")
    ap.add_argument("--ort-ops", action="store_true", help="only print what ORT runs for the ORT rows (optimised "
                    "graph op counts, profiler time per op type) as JSON")
    ap.add_argument("--out", default=str(ROOT / "docs/runtimes.md"))
    args = ap.parse_args()
    os.chdir(ROOT)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = [(m, label, v) for m, label, v in variants(args.models, args.hard_model or None)
            if not args.only or any(s in f"{m} {label}" for s in args.only)]
    folders = {f"{m} | {label}": converted(work, m, label, v, args.tile) for m, label, v in rows}
    if args.convert_only:
        return 0
    if args.ort_ops:
        print(json.dumps({n: ort_ops(artifact_path(f, load_card(f)), args.tile) for n, f in folders.items()
                          if load_card(f).runner == "onnxruntime"}, indent=1))
        return 0
    lat, load_before, load_after = profile(folders, args.tile, args.rounds, args.runs_per_round)
    acc = {}
    for name, folder in folders.items():
        acc[name] = set5(folder, args.psnr_limit)
        print(f"{name}: {lat[name]['median_ms']:.2f} ms, Set5 {acc[name]['psnr_y']:.3f}", file=sys.stderr, flush=True)

    base = next((n for n in lat if n.endswith(f"| {BASELINE}") and n.startswith(args.models[0])), None)
    v = versions()
    lines = [
        f"# Cross-runtime table: which runtime for NSR on CPU (SR x2, tile {args.tile}, 1 thread)", "",
        "Written by `bench/runtimes.py`; command:", "",
        "```bash", f".venv/bin/python bench/runtimes.py {shlex.join(sys.argv[1:])}", "```", "",
        f"Machine: {cpu_model()}, {platform.machine()}, {os.cpu_count()} cores (shared), Python "
        f"{platform.python_version()}; " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        f"Load average (1 min) {load_before[0]:.2f} before / {load_after[0]:.2f} after the timed rounds "
        f"(5 min: {load_before[1]:.2f} / {load_after[1]:.2f}).", "",
        f"Latency: every artifact loaded in its own runner process (1 thread), {args.rounds} interleaved rounds x "
        f"{args.runs_per_round} calls of one {args.tile} px tile (the order reversed every other round); median and "
        f"min ms per tile over the {args.rounds * args.runs_per_round} calls. Dispatch rows time the whole host "
        f"orchestration of a tile. Ratio: {BASELINE} of `{args.models[0]}` (median) / the row's median, so > 1 is "
        "faster than ExecuTorch FP32.",
        "Accuracy: Set5 Y-PSNR through the deploy tiling, each artifact in its real runtime; drop = the artifact's "
        "model in FP32 PyTorch minus the artifact (for `nsr_sr_x2_hard` that is the hard model's own FP32).", "",
        "| model | runtime | recipe | strategy | median ms | min ms | vs ExecuTorch FP32 | Set5 Y-PSNR | drop dB |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for (m, label, opts), name in zip(rows, folders):
        ratio = f"{lat[base]['median_ms'] / lat[name]['median_ms']:.2f}x" if base else "-"
        a = acc[name]
        lines.append(f"| `{m}` | {label} | {opts['recipe']} | {opts['strategy']} | {lat[name]['median_ms']:.2f} | "
                     f"{lat[name]['min_ms']:.2f} | {ratio} | {a['psnr_y']:.3f} | {a['psnr_y_fp32'] - a['psnr_y']:+.3f} |")
    lines.append("")
    out = Path(args.out)
    old = out.read_text() if out.is_file() else ""
    notes = old[old.index(NOTES):] if NOTES in old else NOTES + "\n"  # hand-written reading, kept across reruns
    out.write_text("\n".join(lines) + "\n" + notes)
    (work / "results.json").write_text(json.dumps({"latency": lat, "set5": acc, "tile": args.tile, "versions": v,
                                                   "load": [load_before, load_after], "argv": sys.argv[1:]}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
