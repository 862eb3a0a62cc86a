"""Whole-model NSR on ExecuTorch/XNNPACK: hard routing inside one program (torch.cond, ``--target executorch
--strategy hard``) and by host dispatch vs output mixing vs the dense models of equal parameters and equal MACs. Latency (1 thread, per tile, interleaved rounds in one run: min and median) and Y-PSNR
through the deploy tiling, each artifact run by its real runner in a child process.

    .venv/bin/python bench/dispatch.py [--tile 64] [--sets set5 set14 bsd100] [--rounds 15] [--out docs/dispatch_bench.md]

Timing through `bench/quiet_run.sh ... --own-autogroup`; accuracy outside it (`--psnr-only` before, or
`--report-only` after: the table from the saved timing with the accuracy of more sets).

Artifacts are converted with `nsr-edge convert`'s pipeline (cached in --work: delete a folder to convert it again).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from importlib import metadata
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.artifact_cache import convert_unless_current  # noqa: E402
from nsr_edge.converters.pipeline import ConvertOptions  # noqa: E402
from nsr_edge.runtime.card import load_card  # noqa: E402
from nsr_edge.runtime.profile import machine, time_interleaved  # noqa: E402

def artifact_sources(folders: dict[str, Path]) -> dict[str, str]:
    """Which checkpoint each artifact was converted from (its card's source sha256): a reader of the results can tell
    a since-republished model (bench/front_zoo.py refuses those)."""
    return {name: load_card(folder).model.source.sha256 for name, folder in folders.items()}


def eqparams_model() -> str:
    return "dense_sr_x2_eqparams" if (ROOT / "zoo/dense_sr_x2_eqparams/model.pt").is_file() else \
        "runs/zoo/dense_sr_x2_eqparams/last.pt"


def variants(st: str | None, shared: str) -> list[tuple[str, dict]]:
    """(name, ConvertOptions fields). ``st``: a per-layer hard-routed model (optional), ``shared``: a shared-routing
    hard-routed model (the zoo's nsr_sr_x2_hard by default)."""
    eqp = eqparams_model()
    out = []
    for recipe in ("fp32", "int8-ptq"):
        q = "INT8" if recipe != "fp32" else "FP32"
        out += [
            (f"dense eqP {q}", dict(model=eqp, target="executorch", recipe=recipe)),
            (f"dense eqM {q}", dict(model="dense_sr_x2_eqmacs", target="executorch", recipe=recipe)),
            (f"NSR soft output-mix {q}", dict(model="nsr_sr_x2", target="executorch", recipe=recipe)),
            (f"NSR hard output-mix {q}", dict(model=shared, target="executorch", recipe=recipe)),
            (f"NSR hard dispatch/block {q}", dict(model=shared, target="executorch-dispatch", recipe=recipe,
                                                  strategy="hard")),
            (f"NSR hard in-program/block {q}", dict(model=shared, target="executorch", recipe=recipe,
                                                    strategy="hard")),
        ]
        if recipe != "fp32":  # the gate multiply and bank sums of output mixing in int8 (docs/int8_breakdown.md)
            out.append(("NSR soft output-mix mix-int8 INT8", dict(model="nsr_sr_x2", target="executorch",
                                                                  recipe="int8-ptq-mix")))
        if st:
            out.append((f"NSR hard dispatch/layer {q}", dict(model=st, target="executorch-dispatch", recipe=recipe,
                                                             strategy="hard")))
    # ONNX Runtime (FP32): conv weights may be computed, so kernel mixing runs as is (exact soft routing)
    out += [
        ("dense eqP FP32 ORT", dict(model=eqp, target="onnxruntime")),
        ("dense eqM FP32 ORT", dict(model="dense_sr_x2_eqmacs", target="onnxruntime")),
        ("NSR soft output-mix FP32 ORT", dict(model="nsr_sr_x2", target="onnxruntime")),
        ("NSR soft kernel-mix FP32 ORT", dict(model="nsr_sr_x2", target="onnxruntime", strategy="kernel-mix")),
        ("NSR hard top-1 kernel gather FP32 ORT", dict(model=shared, target="onnxruntime", strategy="hard")),
    ]
    return out


def own_autogroup(nice: int = -20) -> None:
    """Put this process (and the runner processes it starts) in a new session, hence a new scheduler autogroup, at
    autogroup nice ``nice``. With autogroups (Linux's default for desktop/VM kernels) a nice-19 job of another
    session gets the same CPU share as a timing run; bench/quiet_run.sh pauses training but not the other sessions'
    conversions and tests. Only this process's own group changes; nothing of anyone else's is touched."""
    try:
        os.setsid()
    except OSError:
        pass  # already a session leader: its group is ours alone anyway
    try:
        Path("/proc/self/autogroup").write_text(str(nice))
    except OSError as e:
        print(f"own-autogroup: could not set autogroup nice ({e}); timing in the shared group", file=sys.stderr)


def sched_note() -> str:
    """How the timed processes were scheduled against other sessions' jobs (the kernel's autogroups: a nice-19 job
    of another session competes as an equal unless the timing session's own autogroup is raised)."""
    try:
        group = Path("/proc/self/autogroup").read_text().split()
    except OSError:
        return ""
    return f" (timed processes in their own scheduler autogroup at nice {group[-1]})" if len(group) == 3 else ""


def baseline(name: str, kind: str) -> str:
    """The dense model of equal params (kind "eqP") or MACs ("eqM") on the same runtime and precision as ``name``."""
    q = "INT8" if "INT8" in name else "FP32"
    return f"dense {kind} {q}" + (" ORT" if name.endswith(" ORT") else "")


def artifact_folder(work: Path, name: str, model: str, tile: int) -> Path:
    """Where this bench keeps variant ``name`` of ``model`` (a zoo id, or a checkpoint named by its run folder)."""
    return work / f"{slug(name)}_{slug(Path(model).parent.name if '/' in model else model)}_t{tile}"


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "runs/bench_dispatch"))
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--shared-model", default="nsr_sr_x2_hard",
                    help="hard-routed shared-routing model (block dispatch)")
    ap.add_argument("--layer-model", default=None, help="hard-routed per-layer-routing model (layer dispatch), optional")
    ap.add_argument("--sets", nargs="*", default=["set5"], help="accuracy sets (deploy tiling)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--runs-per-round", type=int, default=4)
    ap.add_argument("--psnr-limit", type=int, default=None, help="first N Set5 images (default all 5)")
    ap.add_argument("--skip-psnr", action="store_true")
    ap.add_argument("--psnr-only", action="store_true",
                    help="convert and validate (cached per artifact in bench_psnr.json), no timing: run this outside "
                         "bench/quiet_run.sh, then the timing run inside it reads the cache")
    ap.add_argument("--convert-only", action="store_true")
    ap.add_argument("--report-only", action="store_true",
                    help="no timing: the table from the last timed run's latency.json in --work (its command, load and "
                         "rounds stated), with the accuracy of --sets (validated first where not cached)")
    ap.add_argument("--own-autogroup", action="store_true",
                    help="time in a new scheduler autogroup at nice -20 (other sessions' nice-19 jobs then yield)")
    ap.add_argument("--only", nargs="*", help="substrings of variant names")
    ap.add_argument("--out", default=str(ROOT / "docs/dispatch_bench.md"))
    args = ap.parse_args()
    os.chdir(ROOT)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    chosen = [(n, v) for n, v in variants(args.layer_model, args.shared_model)
              if not args.only or any(s in n for s in args.only)]
    folders = {}
    for name, v in chosen:
        folders[name] = convert_unless_current(
            artifact_folder(work, name, v["model"], args.tile), ConvertOptions(tile=args.tile, calibration_tiles=64, progress=False, **v), name)
    if args.convert_only:
        return 0
    if args.own_autogroup and not args.psnr_only and not args.report_only:
        own_autogroup()

    # ---------------------------------------------------------------- latency: interleaved rounds, one process each
    timed_by = f"bench/dispatch.py {shlex.join(sys.argv[1:])}"
    rounds, runs_per_round, sched, timed_on = args.rounds, args.runs_per_round, sched_note(), machine()
    if args.report_only:  # the last timed run, as it was recorded
        saved = json.loads((work / "latency.json").read_text())
        lat = {n: v for n, v in saved["latency"].items() if n in folders}
        (load_before, load_after), timed_by = saved["load"], saved["command"]
        rounds, runs_per_round, sched = saved["rounds"], saved["runs_per_round"], saved["sched"]
        timed_on = saved.get("machine", "a machine not recorded (latency.json predates the field)")
    elif not args.psnr_only:
        lat, load_before, load_after = time_interleaved(folders, args.rounds, args.runs_per_round)
        (work / "latency.json").write_text(json.dumps(
            {"latency": lat, "load": [load_before, load_after], "command": timed_by, "rounds": rounds,
             "runs_per_round": runs_per_round, "sched": sched, "machine": timed_on}, indent=1))

    # ---------------------------------------------------------------- accuracy: each set through the deploy tiling
    psnr: dict[str, dict[str, dict]] = {}  # variant -> set -> {"psnr_y", "fp32_model"}
    soft_fp32: dict[str, float] = {}
    if not args.skip_psnr:
        from nsr_edge.reference import reference_fn
        from nsr_edge.runtime.evaluation import task_images
        from nsr_edge.runtime.validate import validate_artifact

        for name, folder in folders.items():
            card = load_card(folder)
            cache = folder / "bench_psnr.json"  # accuracy does not change between runs: validate once
            cached = json.loads(cache.read_text()) if cache.is_file() else {}
            todo = [d for d in args.sets if d not in cached or cached[d].get("limit") != args.psnr_limit]
            if todo:
                sets = {d: task_images(card.task, d, limit=args.psnr_limit)[1] for d in todo}
                reports = validate_artifact(str(folder), card, sets, lambda: reference_fn(card), progress=False)
                for dataset, rep in reports.items():
                    s = rep["summary"]
                    cached[dataset] = {"psnr_y": s["psnr_y"], "fp32_model": s["psnr_y_fp32"], "limit": args.psnr_limit}
                cache.write_text(json.dumps(cached, indent=1) + "\n")
            psnr[name] = {d: cached[d] for d in args.sets}
            if card.model.id == "nsr_sr_x2":
                soft_fp32.update({d: cached[d]["fp32_model"] for d in args.sets})
            print(f"{name}: " + ", ".join(f"{d} {v['psnr_y']:.3f} (FP32 model {v['fp32_model']:.3f})"
                                          for d, v in psnr[name].items()), file=sys.stderr, flush=True)

    if args.psnr_only:
        return 0

    # ---------------------------------------------------------------- report
    def ratio(a: str, b: str, key: str = "min_ms") -> str:
        return f"{lat[b][key] / lat[a][key]:.2f}" if a in lat and b in lat else "-"

    versions = {d: metadata.version(d) for d in ("torch", "executorch", "torchao", "numpy")}
    lines = [
        f"# Whole-model NSR on ExecuTorch/XNNPACK (SR x2, tile {args.tile}, 1 thread)", "",
        f"Produced by `{timed_by}`"
        + (f" (timing), then `bench/dispatch.py {shlex.join(sys.argv[1:])}` (this table: accuracy of the same "
           "artifacts, no timing)" if args.report_only else "")
        + f"; timed on {timed_on} ({os.cpu_count()} cores), "
        + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        f"Load average {load_before[0]:.1f} before / {load_after[0]:.1f} after the timed rounds{sched}. "
        f"{rounds} interleaved rounds x {runs_per_round} runs per variant, one child process per artifact, "
        f"one {args.tile} px tile per run (dispatch: the whole host orchestration). Speed-ups are eqP (or eqM) time / "
        "variant time, by the min over all runs (the uncontended cost on a shared machine); medians are listed.",
        f"Accuracy: Y-PSNR through the deploy tiling ({args.tile} px tiles), each artifact run by its runtime; "
        "\"vs soft\" is against the soft-routed FP32 NSR model (nsr_sr_x2) on the same tiling.", "",
        "| variant | calls/tile | min ms | median ms | speed-up vs eqP | vs eqM | "
        + " | ".join(f"{d} Y-PSNR | vs soft" for d in args.sets) + " |",
        "|---|---:|---:|---:|---:|---:|" + "---:|---:|" * len(args.sets),
    ]
    for name in lat:
        card = load_card(folders[name])
        calls = card.dispatch.calls_per_tile if card.dispatch else 1
        cells = []
        for d in args.sets:
            v = psnr.get(name, {}).get(d)
            cells += [f"{v['psnr_y']:.3f}" if v else "-",
                      f"{v['psnr_y'] - soft_fp32[d]:+.3f}" if v and d in soft_fp32 else "-"]
        lines.append(f"| {name} | {calls} | {lat[name]['min_ms']:.2f} | {lat[name]['median_ms']:.2f} | "
                     f"{ratio(name, baseline(name, 'eqP'))} | {ratio(name, baseline(name, 'eqM'))} | " + " | ".join(cells) + " |")
    lines.append("")
    Path(args.out).write_text("\n".join(lines) + "\n")
    sources = artifact_sources(folders)
    (work / "results.json").write_text(json.dumps({"latency": lat, "psnr": psnr, "soft_fp32": soft_fp32,
                                                   "tile": args.tile, "load": [load_before, load_after],
                                                   "sources": sources, "machine": timed_on}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
