"""Lowering strategies measured side by side: latency (1 thread, same tile, interleaved) next to Y-PSNR.

    .venv/bin/python bench/strategies.py [--tile 64] [--sets set5 set14 bsd100] [--rounds 12] [--out docs/strategies.md]

Rows, all for the x2 zoo model `nsr_sr_x2` and its dense baselines, every artifact converted by the real pipeline and
timed with its real runtime (ExecuTorch 1 thread, in a child process):
- training form, eager PyTorch (the reference; FP32);
- output mixing, FP32 and INT8 (`int8-ptq` recipe defaults), XNNPACK;
- kernel mixing, FP32 (dynamic conv weights: ExecuTorch portable kernels);
- hard routing in the deploy graph of `nsr_edge/deploy.py` (per-tile gathered weights: portable kernels in FP32; INT8
  is tried and reported as it ends: in ExecuTorch 1.5.1 it aborts). Its PSNR is the straight-through fine-tune's
  (runs/hard/nsr_sr_x2_st), whose routing is exactly one-hot: hard routing of the soft model collapses (a row says so);
- hard routing as host dispatch over static XNNPACK bank programs (`converters/executorch_dispatch.py`, issue 6),
  FP32 and INT8, when that target is installed; a marked empty slot otherwise;
- the dense baselines of equal MACs and equal parameters, FP32 and INT8.

Latency: every runtime is opened once and the runs are interleaved round-robin (``--rounds`` rounds, a few runs per
round; portable-kernel rows one run every few rounds), so the machine's background load hits all rows alike; median
and min are reported. PSNR: XNNPACK artifacts run through the deploy tiling on every image; rows that run in portable
kernels (hundreds of ms to seconds per tile) take their PSNR from the eager deploy module, which computes the same
function (checked: max |artifact - eager| on a few tiles is reported). `--strategy auto`'s rule (fastest NSR row within
``--max-drop-db`` of the model's FP32 Y-PSNR on the first set) is applied to the measured rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.artifact_cache import is_current  # noqa: E402
from nsr_edge import hub  # noqa: E402
from nsr_edge.converters.base import TARGET_MODULES  # noqa: E402
from nsr_edge.converters.pipeline import ConvertOptions, convert, tool_versions  # noqa: E402
from nsr_edge.deploy import to_deploy  # noqa: E402
from nsr_edge.evaluate import EvalTarget, evaluate_sets, torch_tile_fn  # noqa: E402
from nsr_edge.hub import task_of  # noqa: E402
from nsr_edge.models import count_parameters  # noqa: E402
from nsr_edge.runtime.card import ModelCard, artifact_path, load_card, method_for_tile  # noqa: E402
from nsr_edge.runtime.evaluation import tiled  # noqa: E402
from nsr_edge.runtime.runners.child import RunnerProcess  # noqa: E402
from nsr_edge.runtime.tiling import deploy_spec  # noqa: E402

ST_MODEL = ROOT / "runs" / "hard" / "nsr_sr_x2_st" / "model.pt"
DISPATCH = "executorch-dispatch"


@dataclass
class Row:
    label: str
    model: str  # zoo id or checkpoint path
    strategy: str  # output-mix | kernel-mix | hard | eager | dense
    recipe: str
    target: str = "executorch"
    psnr_model: str | None = None  # whose accuracy the PSNR columns show, when not ``model`` (the ST fine-tune)
    kind: str = "nsr"  # nsr | dense
    note: str = ""
    folder: Path | None = None
    card: ModelCard | None = None
    status: str = "pending"
    path: str = ""  # XNNPACK, portable kernels, eager
    times: list[float] = field(default_factory=list)
    psnr: dict[str, float] = field(default_factory=dict)
    psnr_source: str = ""
    params: int | None = None
    macs_px: float | None = None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def _load(model: str):
    resolved = hub.resolve(model, require_trained=True)
    return resolved, resolved.build().eval()


def eqparams_source() -> tuple[str | None, str]:
    """The equal-params dense baseline: from the zoo, else its finished run, else nothing (still training)."""
    if "dense_sr_x2_eqparams" in hub.zoo_ids():
        return "dense_sr_x2_eqparams", ""
    done = ROOT / "runs" / "zoo" / "dense_sr_x2_eqparams" / "model.pt"
    if done.is_file():
        return str(done), "finished run, not yet published to the zoo"
    return None, "still training (runs/zoo/dense_sr_x2_eqparams): no row yet"


def plan(args) -> tuple[list[Row], list[str]]:
    notes: list[str] = []
    st = str(ST_MODEL) if ST_MODEL.is_file() else None
    rows = [
        Row("NSR training form (eager PyTorch)", "nsr_sr_x2", "eager", "fp32", target="eager", path="eager"),
        Row("NSR output mixing", "nsr_sr_x2", "output-mix", "fp32"),
        Row("NSR output mixing", "nsr_sr_x2", "output-mix", "int8-ptq"),
        Row("NSR kernel mixing", "nsr_sr_x2", "kernel-mix", "fp32"),
    ]
    if st:
        rows += [Row("NSR hard routing, gathered weights (ST fine-tune)", st, "hard", "fp32"),
                 Row("NSR hard routing, gathered weights (ST fine-tune)", st, "hard", "int8-ptq")]
        if DISPATCH in TARGET_MODULES:
            rows += [Row("NSR hard routing, host dispatch (ST fine-tune, issue 6)", st, "hard", r, target=DISPATCH)
                     for r in ("fp32", "int8-ptq")]
        else:
            notes.append("host dispatch (issue 6): converters/executorch_dispatch.py not installed: slot left empty")
    else:
        notes.append(f"{ST_MODEL} missing: no hard-routing rows with one-hot routing")
    rows += [Row("dense, equal MACs", "dense_sr_x2_eqmacs", "dense", r, kind="dense") for r in ("fp32", "int8-ptq")]
    # resolved again when its turn to convert comes (build): it may finish training while the others convert
    rows += [Row("dense, equal params", "dense_sr_x2_eqparams", "dense", r, kind="dense") for r in ("fp32", "int8-ptq")]
    return rows, notes


def build(rows: list[Row], work: Path, tile: int, reuse: bool) -> None:
    for r in rows:
        if r.strategy == "eager":
            continue
        if r.label == "dense, equal params":
            source, r.note = eqparams_source()
            if source is None:
                r.status = f"not available: {r.note}"
                continue
            r.model = source
        r.folder = work / f"{Path(r.model).parent.name if '/' in r.model else r.model}-{r.strategy}-{r.recipe}-{r.target}"
        strategy = "output-mix" if r.strategy == "dense" else r.strategy
        t0 = time.time()
        if reuse and is_current(r.folder):
            r.card, r.status = load_card(r.folder), "converted (reused)"
        try:
            if r.card is None:
                _, r.card = convert(ConvertOptions(r.model, target=r.target, recipe=r.recipe, tile=tile,
                                                   strategy=strategy, progress=False), str(r.folder), force=True)
                r.status = "converted"
            fwd = r.card.delegation.methods["forward"]
            r.path = "XNNPACK" if fwd.fully_delegated else "portable kernels (" + ", ".join(
                f"{f.op} x{f.count}" for f in fwd.fallbacks[:2]) + ")"
            if r.target == DISPATCH:
                r.path = f"XNNPACK bank programs, {r.card.dispatch.calls_per_tile} calls/tile"
        except Exception as e:  # noqa: BLE001 - a row that cannot be built is reported, not fatal
            r.status = f"fails to lower: {_one_line(e)}"
        print(f"[convert] {r.label} {r.recipe}: {r.status} ({time.time() - t0:.0f} s)", flush=True)


def measure_latency(rows: list[Row], tile: int, rounds: int, per_round: int) -> None:
    """Round-robin over every runnable row (eager in this process, artifacts in their child processes)."""
    x = np.random.default_rng(0).random((1, 3, tile, tile), dtype=np.float32)
    torch.set_num_threads(1)
    procs: dict[int, Any] = {}
    eager: dict[int, Any] = {}
    slow: set[int] = set()
    try:
        for i, r in enumerate(rows):
            if r.strategy == "eager":
                eager[i] = _load(r.model)[1]
                continue
            if r.card is None:
                continue
            try:
                p = RunnerProcess(r.card.runner, str(artifact_path(r.folder, r.card)),
                                  method_for_tile(r.card).name, 1)
                first = p.time(x, 1, 1)[0]  # warm-up, and the first sign of an abort
                procs[i] = p
                r.times.append(first)
                if first > 0.25:
                    slow.add(i)
                r.status = "measured"
            except Exception as e:  # noqa: BLE001 - RunnerCrash: e.g. INT8 portable kernels abort
                r.status = (f"aborts at run time: {_one_line(e)}" if "signal" in str(e) else
                            f"fails to run: {_one_line(e)}")
                print(f"[latency] {r.label} {r.recipe}: {r.status}", flush=True)
        xt = torch.from_numpy(x)
        for k in range(rounds):
            for i, r in enumerate(rows):
                if i in eager:
                    with torch.no_grad():
                        for _ in range(per_round):
                            t0 = time.perf_counter()
                            eager[i](xt)
                            r.times.append(time.perf_counter() - t0)
                    r.status = "measured"
                elif i in procs:
                    if i in slow and k % max(1, rounds // 3):
                        continue
                    try:
                        r.times += procs[i].time(x, 1 if i in slow else per_round, 0)
                    except Exception as e:  # noqa: BLE001
                        r.status = (f"aborts at run time: {_one_line(e)}" if "signal" in str(e) else
                                    f"fails to run: {_one_line(e)}")
                        procs.pop(i).close()
            print(f"[latency] round {k + 1}/{rounds}", flush=True)
    finally:
        for p in procs.values():
            p.close()


def measure_psnr(rows: list[Row], tile: int, sets: list[str], limit: int | None) -> None:
    spec = deploy_spec(tile)
    cache: dict[tuple[str, str], dict[str, float]] = {}

    def run_sets(fn, task, batch, which=None):
        from nsr_edge.runtime import datasets

        if limit:
            real = datasets.list_eval_images
            datasets.list_eval_images = lambda *a, **k: real(*a, **k)[:limit]
        try:
            res = evaluate_sets(EvalTarget("x", tiled(fn, spec, task.scale, batch)), task, which or sets, [], None)
        finally:
            if limit:
                datasets.list_eval_images = real
        return {r.dataset: round(r.mean("psnr_y"), 4) for r in res}

    def eager_psnr(model: str, strategy: str) -> dict[str, float]:
        key = (model, strategy)
        if key not in cache:
            resolved, m = _load(model)
            if strategy != "eager":
                m = to_deploy(m, "output-mix" if strategy == "dense" else strategy)
            cache[key] = run_sets(torch_tile_fn(m), task_of(resolved), 16)
        return cache[key]

    def _psnr_row(r: Row) -> None:
        if r.status.startswith("not available"):
            return
        resolved, model = _load(r.model)
        r.params = count_parameters(to_deploy(model, "output-mix"))
        from nsr_edge.costs import macs_per_pixel

        try:
            # the training form mixes kernels per tile: one bank's MACs, like kernel mixing
            lowering = {"eager": "kernel-mix", "dense": "output-mix"}.get(r.strategy, r.strategy)
            r.macs_px = macs_per_pixel(to_deploy(model, lowering), tile)
        except Exception:  # noqa: BLE001
            r.macs_px = None
        t0 = time.time()
        if r.strategy == "eager":
            r.psnr, r.psnr_source = eager_psnr(r.model, "eager"), "eager PyTorch"
        elif r.status != "measured":
            return
        elif r.path.startswith("portable") and r.recipe != "fp32":
            # an int8 program in portable kernels has no eager twin: run the artifact itself, on the first set
            # only (seconds per tile)
            with RunnerProcess(r.card.runner, str(artifact_path(r.folder, r.card))) as p:
                r.psnr = run_sets(p.run, task_of(resolved), 1, sets[:1])
            r.psnr_source = f"the artifact, on its runtime ({sets[0]} only: seconds per tile)"
        elif r.path.startswith("portable"):
            r.psnr = eager_psnr(r.model, r.strategy)
            x = np.random.default_rng(1).random((2, 3, tile, tile), dtype=np.float32)
            m = to_deploy(model, r.strategy)
            with torch.no_grad():
                ref = m(torch.from_numpy(x)).numpy()
            with RunnerProcess(r.card.runner, str(artifact_path(r.folder, r.card))) as p:
                gap = float(np.abs(p.run(x) - ref).max())
            r.psnr_source = f"eager deploy module (same function; artifact vs eager max abs {gap:.1e} on 2 tiles)"
        else:
            with RunnerProcess(r.card.runner, str(artifact_path(r.folder, r.card))) as p:
                r.psnr = run_sets(p.run, task_of(resolved), 1)
            r.psnr_source = "the artifact, on its runtime"
        print(f"[psnr] {r.label} {r.recipe}: {r.psnr} ({time.time() - t0:.0f} s)", flush=True)

    for r in rows:
        try:
            _psnr_row(r)
        except Exception as e:  # noqa: BLE001 - one row's failure must not lose the others' measurements
            r.psnr_source = f"PSNR not measured: {_one_line(e)}"
            print(f"[psnr] {r.label} {r.recipe}: {r.psnr_source}", flush=True)


def stats(r: Row) -> tuple[float | None, float | None, int]:
    if not r.times or r.status != "measured":
        return None, None, 0
    ms = np.asarray(r.times[1:] if len(r.times) > 1 else r.times) * 1000
    return float(np.median(ms)), float(ms.min()), len(ms)


def auto_choice(rows: list[Row], sets: list[str], max_drop: float) -> tuple[Row | None, float | None]:
    """`--strategy auto`'s rule on the measured rows: fastest NSR artifact within max_drop of FP32 on sets[0]."""
    fp32 = next((r.psnr.get(sets[0]) for r in rows if r.strategy == "eager" and r.psnr), None)
    ok = [r for r in rows if r.kind == "nsr" and r.strategy != "eager" and stats(r)[0] is not None and r.psnr
          and fp32 is not None and fp32 - r.psnr[sets[0]] <= max_drop]
    return (min(ok, key=lambda r: stats(r)[0]) if ok else None), fp32


def load_text() -> str:
    try:
        la = os.getloadavg()
        return f"load average {la[0]:.1f} / {la[1]:.1f} / {la[2]:.1f} on {os.cpu_count()} cores"
    except OSError:
        return "load unknown"


def write_doc(rows: list[Row], notes: list[str], args, load_before: str, load_after: str, seconds: float) -> None:
    out = Path(args.out)
    sets = args.sets
    choice, fp32 = auto_choice(rows, sets, args.max_drop_db)
    v = tool_versions()
    lines = [
        "# Lowering strategies, measured (SR x2)", "",
        f"Produced by `bench/strategies.py --tile {args.tile} --rounds {args.rounds}` in one run "
        f"({seconds / 60:.0f} min). Model `nsr_sr_x2` (6 blocks, C=16, wm=2, k=4, d=1) and its dense baselines; "
        f"deploy tiles of {args.tile} px (4 px margins, stride {deploy_spec(args.tile).stride}); Y-PSNR (dB) on the "
        "deploy tiling; latency per tile, 1 thread, all runtimes interleaved round-robin in the same run.", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, CPU only, shared with background training "
        f"({load_before} at the start, {load_after} at the end): absolute times are inflated and noisy, the min "
        "column is the least disturbed; compare rows, not machines.",
        f"Versions: python {v.get('python')}, torch {v.get('torch')}, executorch {v.get('executorch')}, "
        f"torchao {v.get('torchao')}, numpy {v.get('numpy')}.", "",
        "| row | recipe | runs in | params | MACs per input px | median ms | min ms | n | " + " | ".join(sets) + " | PSNR from |",
        "|---|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(sets) + "---|",
    ]
    for r in rows:
        med, mn, n = stats(r)
        lat = (f"{med:.2f} | {mn:.2f} | {n}" if med is not None else
               f"**{r.status.split(':')[0]}** | - | -")
        ps = " | ".join(f"{r.psnr[s]:.3f}" if s in r.psnr else "-" for s in sets)
        src = r.psnr_source or ("-" if r.psnr else "not measured")
        if r.note:
            src += f"; {r.note}"
        lines.append(f"| {r.label} | {r.recipe} | {r.path or '-'} | {r.params or '-':,} | "
                     f"{f'{r.macs_px:,.0f}' if r.macs_px else '-'} | {lat} | {ps} | {src} |"
                     if r.params else
                     f"| {r.label} | {r.recipe} | {r.path or '-'} | - | - | {lat} | {ps} | {src} |")
    if DISPATCH not in TARGET_MODULES:
        lines.append("| NSR hard routing, host dispatch (issue 6) | fp32 / int8 | *slot: "
                     "converters/executorch_dispatch.py not installed yet* | | | | | |" + " |" * len(sets))
    lines += [""]
    for r in rows:
        if r.status.startswith(("fails", "aborts")):
            lines.append(f"- {r.label} {r.recipe}: {r.status}")
    lines += [f"- {n}" for n in notes]
    if choice:
        lines.append(f"- `--strategy auto` rule (fastest NSR row within {args.max_drop_db} dB of the FP32 model on "
                     f"{sets[0]}, FP32 {fp32:.3f} dB): **{choice.label}, {choice.recipe}** "
                     f"({stats(choice)[0]:.2f} ms). The CLI applies the same rule to the candidates it converts "
                     "(`nsr-edge convert --strategy auto`).")
    lines += [
        "- Hard routing in the deploy graph gathers each tile's bank weights at run time: dynamic conv weights, which "
        "XNNPACK does not take, so the convs run in ExecuTorch's portable kernels (the rows above say what its FP32 "
        "and INT8 programs really did here; the field notes saw an INT8 one abort in `quantize_per_channel_out`; with "
        "this stack's XNNPACKQuantizer the convs with computed weights are left unannotated, so the `int8-ptq` hard "
        "program keeps its sparse convs in FP32 portable kernels: effectively FP32). "
        "The runtime that makes hard routing pay is host dispatch over static bank programs (issue 6, "
        "`converters/executorch_dispatch.py`, `--target executorch-dispatch`).",
        "- The hard-routing PSNR columns are the straight-through fine-tune's (`runs/hard/nsr_sr_x2_st`, routing "
        "exactly one-hot at eval). The soft zoo model made hard after training collapses (26.7 dB on Set5, measured "
        "with `bench/hard_routing.py`'s evaluation): hard routing needs a model trained for it (docs/training.md).",
        "", f"![PSNR vs latency]({out.with_suffix('.png').name})", "",
    ]
    out.write_text("\n".join(lines) + "\n")
    data = [{"label": r.label, "recipe": r.recipe, "target": r.target, "model": r.model, "status": r.status,
             "path": r.path, "median_ms": stats(r)[0], "min_ms": stats(r)[1], "runs": stats(r)[2], "psnr_y": r.psnr,
             "psnr_source": r.psnr_source, "params": r.params, "macs_per_px": r.macs_px} for r in rows]
    out.with_suffix(".json").write_text(json.dumps({"rows": data, "versions": v, "load": [load_before, load_after]},
                                                   indent=2) + "\n")
    plot(rows, sets, out.with_suffix(".png"))
    print(f"wrote {out}, {out.with_suffix('.png')}, {out.with_suffix('.json')}")


def plot(rows: list[Row], sets: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = sets[-1]
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        med = stats(r)[0]
        if med is None or key not in r.psnr:
            continue
        marker = {"fp32": "o", "int8-ptq": "s"}.get(r.recipe, "^")
        color = "tab:gray" if r.kind == "dense" else "tab:red" if r.strategy == "hard" else "tab:blue"
        ax.scatter(med, r.psnr[key], marker=marker, color=color)
        ax.annotate(f"{r.label.replace('NSR ', '')} {r.recipe}", (med, r.psnr[key]), fontsize=6,
                    xytext=(4, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("latency per tile, ms (median, 1 thread, log scale)")
    ax.set_ylabel(f"Y-PSNR on {key} (dB)")
    ax.set_title("SR x2: accuracy vs latency per lowering strategy (o FP32, s INT8)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--sets", nargs="*", default=["set5", "set14", "bsd100"])
    ap.add_argument("--limit", type=int, help="first N images of each set (a quick look; the doc says so)")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--per-round", type=int, default=3)
    ap.add_argument("--max-drop-db", type=float, default=0.05)
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench" / "strategies"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "strategies.md"))
    ap.add_argument("--fresh", action="store_true", help="convert again even where --work holds an artifact")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    load_before = load_text()
    rows, notes = plan(args)
    build(rows, Path(args.work), args.tile, not args.fresh)
    measure_latency(rows, args.tile, args.rounds, args.per_round)
    measure_psnr(rows, args.tile, args.sets, args.limit)
    if args.limit:
        notes.append(f"PSNR on the first {args.limit} images of each set only (--limit)")
    write_doc(rows, notes, args, load_before, load_text(), time.time() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
