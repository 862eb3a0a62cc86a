"""Validate an artifact on real images: run it through the card's tiling and compare it with the FP32 PyTorch model
(its reference) and with the ground truth (the task's published metrics), per image and overall.

The artifact runs in a child process (`runners.child.RunnerProcess`); the FP32 reference is any function from a
batch of tiles to output tiles, supplied by the caller (the `nsr-edge validate` command passes the PyTorch model;
a device passes stored outputs or nothing). Tolerances are explicit and make `check` return failures.

numpy only: this module runs on a device.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from . import metrics
from .evaluation import Image, score_images, task_metrics
from .errors import UserError
from .images import to_uint8
from .tasks import TaskSpec
from .tiling import TileSpec, run_tiled

if TYPE_CHECKING:
    from .card import ModelCard

TileFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Tolerances:
    """Each None is unchecked. drop_db: FP32 model's task PSNR minus the artifact's (mean over images)."""

    max_drop_db: float | None = None
    min_psnr_vs_reference: float | None = None  # dB, mean over images, outputs clipped to [0, 1]
    max_abs_vs_reference: float | None = None  # largest |artifact - reference| over all images, [0, 1] units


def progress_iter(items: Sequence[Any], desc: str, enabled: bool):
    """tqdm on stderr when it is installed (the toolkit), plain iteration otherwise (a bare device runtime)."""
    if enabled:
        try:
            from tqdm import tqdm

            return tqdm(items, desc=desc, file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            pass
    return items


def scores(output: np.ndarray, gt: np.ndarray, task: TaskSpec) -> dict[str, float]:
    """Task PSNR/SSIM of a float CHW output (rounded to 8 bit) with the published protocol of `evaluation`."""
    m = task_metrics(to_uint8(output), gt if gt.ndim == 3 else gt[:, :, None], task)
    return {"psnr_y": m["psnr_y"], "ssim_y": m["ssim_y"]}


def _finite(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


class NonFiniteOutput(UserError):
    """The artifact produced NaN or infinite values: validation fails, whatever the tolerances."""


def check_finite(name: str, out: np.ndarray, what: str = "the artifact's output") -> None:
    bad = ~np.isfinite(out)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise NonFiniteOutput(f"image {name}: {what} holds {int(bad.sum())} non-finite values "
                              f"(first {float(out[first])} at CHW index {first}); the artifact is broken")


def validate_images(
    inputs: Sequence[Image],
    task: TaskSpec,
    spec: TileSpec,
    artifact: TileFn,
    reference: TileFn | None,
    batch_size: int = 1,
    allow_small: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """``inputs``: (name, network input float32 CHW, ground truth uint8 HWC) per image (`evaluation.task_images`).
    Runs the shared evaluation loop (`evaluation.score_images`) with the artifact through the card's tiling, and the
    FP32 reference beside it. Returns ``{"summary": {...}, "images": [...]}``; summary keys: psnr_y, ssim_y,
    psnr_y_fp32, ssim_y_fp32, drop_db, psnr_vs_reference, max_abs_vs_reference, images. A non-finite output (of the
    artifact or the reference) raises `NonFiniteOutput`."""
    scale = task.scale if task.name == "sr" else 1
    for name, x, _ in inputs:  # before any work
        h, w = x.shape[1:]
        if min(h, w) < spec.tile and not allow_small:
            raise UserError(f"image {name} is {w}x{h} (input pixels), smaller than the artifact's {spec.tile}px tile; "
                            "convert with a smaller --tile, or pass --allow-small to pad it")

    def compare(name: str, x: np.ndarray, out: np.ndarray, gt: np.ndarray) -> dict[str, Any]:
        check_finite(name, out)
        row: dict[str, Any] = {"size": [int(x.shape[2]), int(x.shape[1])]}
        if reference is not None:
            ref = run_tiled(x, reference, spec, scale=scale, batch_size=None)
            check_finite(name, ref, "the FP32 reference's output")
            ref_m = scores(ref, gt, task)
            a, b = np.clip(out, 0, 1), np.clip(ref, 0, 1)
            row["psnr_y_fp32"] = ref_m["psnr_y"]
            row["ssim_y_fp32"] = ref_m["ssim_y"]
            row["psnr_vs_reference"] = metrics.psnr(a, b, data_range=1.0)
            row["max_abs_vs_reference"] = float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64))))
        return row

    restore = lambda x: run_tiled(x, artifact, spec, scale=scale, batch_size=batch_size)  # noqa: E731
    results = score_images(progress_iter(inputs, "validating", progress), task, restore, compare)
    rows = []
    for r in results:
        row = {"name": r.name, "size": r.extra.pop("size"), "psnr_y": r.psnr_y, "ssim_y": r.ssim_y, **r.extra}
        if "psnr_y_fp32" in row:
            row["drop_db"] = row["psnr_y_fp32"] - row["psnr_y"]
        rows.append({k: (_finite(v) if isinstance(v, float) else v) for k, v in row.items()})
    return {"summary": summarize(rows), "images": rows}


# runner -> (modules, any one of which runs it; what to install). Core ML needs nothing here: the MIL evaluator is
# numpy (a Core ML-delegated .pte needs executorch, which its runner says).
RUNTIME_PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "executorch": (("executorch",), "pip install executorch (it brings torch; or the toolkit: pip install 'nsr-edge[full]')"),
    "dispatch": (("executorch",), "pip install executorch (it brings torch; or the toolkit: pip install 'nsr-edge[full]')"),
    "onnxruntime": (("onnxruntime",), "pip install onnxruntime"),
    "litert": (("ai_edge_litert", "tflite_runtime"), "pip install ai-edge-litert (or tflite-runtime==2.14.0 with numpy<2)"),
}


def require_runtime(runner: str) -> None:
    """One line, before any child process starts, when the runtime the card's ``runner`` needs is not installed."""
    import importlib.util

    modules, hint = RUNTIME_PACKAGES.get(runner, ((), ""))
    if modules and not any(importlib.util.find_spec(m) is not None for m in modules):
        raise UserError(f"this artifact runs on {runner} (the card's runner), which is not installed here: {hint}")


def validate_artifact(
    artifact_dir: str,
    card: "ModelCard",
    images: dict[str, Sequence[Image]],
    make_reference: Callable[[], TileFn | None] | None,
    threads: int = 1,
    allow_small: bool = False,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Validate an artifact folder on one or more prepared image sets (label -> `evaluation.task_images` output):
    the artifact's runner runs in a child process (a native abort is one line), started once for all sets.
    ``make_reference`` builds the FP32 reference tile function (or None for task metrics only); it is called once the
    artifact has loaded, so a broken artifact fails before a reference model is built. Returns label ->
    `validate_images` report."""
    from .card import artifact_path, tile_spec
    from .runners.child import RunnerProcess

    path = artifact_path(artifact_dir, card)
    task, spec = card.task, tile_spec(card)
    require_runtime(card.runner)
    with RunnerProcess(card.runner, str(path), "forward", threads) as proc:
        ref = make_reference() if make_reference is not None else None
        return {label: validate_images(inputs, task, spec, proc.run, ref, batch_size=proc.input_shape[0],
                                       allow_small=allow_small, progress=progress)
                for label, inputs in images.items()}


def validate_stored(artifact_dir: str, card: "ModelCard", threads: int = 1, in_process: bool = False) -> dict[str, Any]:
    """Run the artifact on the reference tiles stored beside it (``reference.npz``, `reference_outputs`) and compare
    its outputs with the FP32 PyTorch outputs stored there: what a device without PyTorch can check.

    The artifact runs through its runner in a child process (a native abort is one line), or in this process with
    ``in_process`` (where child processes cannot be spawned, e.g. under an emulator). Returns
    ``{"summary": {...}, "tiles": [...], "reference": {...}, "finite": bool}``; summary keys (the `validate_images`
    names where they mean the same): ``psnr_vs_reference`` (dB over all stored tiles, outputs clipped to [0, 1];
    None for identical outputs, counted in ``psnr_vs_reference_identical_images`` as `summarize` does),
    ``max_abs_vs_reference``, ``tiles``, ``finite`` and ``non_finite`` (values that were NaN or infinite: then the
    two comparisons are None and `check` fails the run). One-line `UserError` for a missing or mismatching
    reference file (`reference_outputs.load_reference_outputs`)."""
    from .card import artifact_path
    from .reference_outputs import load_reference_outputs

    inputs, ref = load_reference_outputs(artifact_dir, card)  # before the runtime starts
    path = str(artifact_path(artifact_dir, card))
    require_runtime(card.runner)
    if in_process:
        from .runners import get_runner

        with get_runner(card.runner).open_session(path, "forward", threads) as session:
            out = session.run(inputs)
    else:
        from .runners.child import RunnerProcess

        with RunnerProcess(card.runner, path, "forward", threads) as proc:
            out = proc.run(inputs)
    if out.shape != ref.shape:
        raise UserError(f"{path}: the artifact's output tiles {list(out.shape)} are not the stored reference's "
                        f"{list(ref.shape)}")
    bad = int((~np.isfinite(out)).sum())
    rows = []
    for i in range(len(inputs)):
        row: dict[str, Any] = {"tile": i, "psnr_vs_reference": None, "max_abs_vs_reference": None}
        if np.isfinite(out[i]).all():
            row["psnr_vs_reference"] = _finite(metrics.psnr(np.clip(out[i], 0, 1), np.clip(ref[i], 0, 1), data_range=1.0))
            row["max_abs_vs_reference"] = metrics.max_abs(out[i], ref[i])
        rows.append(row)
    s: dict[str, Any] = {"psnr_vs_reference": None, "max_abs_vs_reference": None, "tiles": int(len(inputs)),
                         "finite": bad == 0, "non_finite": bad}
    if bad == 0:
        s["max_abs_vs_reference"] = metrics.max_abs(out, ref)
        s["psnr_vs_reference"] = _finite(metrics.psnr(np.clip(out, 0, 1), np.clip(ref, 0, 1), data_range=1.0))
        if s["psnr_vs_reference"] is None:
            s["psnr_vs_reference_identical_images"] = int(len(inputs))
    ro = card.reference_outputs
    return {"summary": s, "tiles": rows, "finite": bad == 0,
            "reference": {"file": ro.file, "dataset": ro.dataset, "tiles": int(ro.tiles), "model": ro.model}}


def format_stored(report: dict[str, Any], title: str = "") -> str:
    """One paragraph for `validate_stored`'s report."""
    s, ref = report["summary"], report["reference"]
    lines = [title] if title else []
    lines.append(f"vs the stored FP32 reference ({ref['file']}: {ref['tiles']} tiles of {ref['dataset']}, "
                 f"{ref['model']}):")
    if not s["finite"]:
        lines.append(f"  the artifact's output holds {s['non_finite']} non-finite values")
        return "\n".join(lines)
    pvr = s["psnr_vs_reference"]
    lines.append(f"  PSNR {('inf' if pvr is None else f'{pvr:.2f}')} dB, max |artifact - FP32| "
                 f"{s['max_abs_vs_reference']:.2e}")
    return "\n".join(lines)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(key: str) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return round(float(np.mean(vals)), 6) if vals else None

    has_ref = any("psnr_y_fp32" in r for r in rows)
    s = {"psnr_y": mean("psnr_y"), "ssim_y": mean("ssim_y"), "psnr_y_fp32": mean("psnr_y_fp32") if has_ref else None,
         "ssim_y_fp32": mean("ssim_y_fp32") if has_ref else None, "drop_db": None,
         "psnr_vs_reference": mean("psnr_vs_reference") if has_ref else None, "max_abs_vs_reference": None,
         "images": len(rows)}
    if has_ref:
        s["drop_db"] = round(s["psnr_y_fp32"] - s["psnr_y"], 6)
        s["max_abs_vs_reference"] = max(r["max_abs_vs_reference"] for r in rows)
        if any(r.get("psnr_vs_reference") is None for r in rows):  # identical outputs give inf: report it as such
            s["psnr_vs_reference_identical_images"] = sum(1 for r in rows if r.get("psnr_vs_reference") is None)
    return s


def validation_record(dataset: str, summary: dict[str, Any], tol: Tolerances, passed: bool, runner: str):
    """The card's record of a validation run (`card.ValidationRecord`: one shape for every writer)."""
    from .card import ValidationRecord, now_utc, portable

    summary = {k: v for k, v in summary.items() if not isinstance(v, bool)}  # numbers only (the card's schema)
    return ValidationRecord(dataset=portable(dataset), images=int(summary["images"]), summary=summary, passed=passed,
                            runner=runner, recorded=now_utc(), tolerances=dict(vars(tol)))


def check(summary: dict[str, Any], tol: Tolerances) -> list[str]:
    """Tolerance violations as one line each (empty: pass). A tolerance whose metric could not be computed fails:
    a check that cannot be made never passes."""
    fails = []
    for value, metric, flag in ((tol.max_drop_db, "drop_db", "--max-drop-db"),
                                (tol.min_psnr_vs_reference, "psnr_vs_reference", "--min-psnr-vs-reference"),
                                (tol.max_abs_vs_reference, "max_abs_vs_reference", "--max-abs")):
        if value is not None and not math.isfinite(value):
            fails.append(f"{flag} {value} is not a number a metric can be compared with")
        elif value is not None and summary.get(metric) is None and not (
                metric == "psnr_vs_reference" and summary.get("psnr_vs_reference_identical_images")):
            fails.append(f"{flag} needs {metric}, which this run could not compute (no FP32 reference?)")
    if fails:
        return fails
    if tol.max_drop_db is not None and summary["drop_db"] > tol.max_drop_db:
        fails.append(f"PSNR drop {summary['drop_db']:.4f} dB > {tol.max_drop_db} dB")
    if tol.min_psnr_vs_reference is not None and summary.get("psnr_vs_reference") is not None:
        if summary["psnr_vs_reference"] < tol.min_psnr_vs_reference:
            fails.append(f"PSNR vs FP32 reference {summary['psnr_vs_reference']:.2f} dB < {tol.min_psnr_vs_reference} dB")
    if tol.max_abs_vs_reference is not None and summary["max_abs_vs_reference"] > tol.max_abs_vs_reference:
        fails.append(f"max |artifact - FP32| {summary['max_abs_vs_reference']:.3g} > {tol.max_abs_vs_reference:g}")
    return fails


def format_report(report: dict[str, Any], title: str = "") -> str:
    """Human-readable table: one row per image, then the mean."""
    s = report["summary"]
    has_ref = s.get("psnr_y_fp32") is not None
    head = f"{'image':<24}{'PSNR-Y':>9}{'SSIM-Y':>8}"
    if has_ref:
        head += f"{'FP32 PSNR':>11}{'drop dB':>9}{'PSNR vs FP32':>14}{'max|d|':>10}"
    lines = ([title] if title else []) + [head]

    def fmt(r: dict[str, Any], name: str) -> str:
        line = f"{name[:23]:<24}{r['psnr_y']:>9.3f}{r['ssim_y']:>8.4f}"
        if has_ref:
            pvr = r.get("psnr_vs_reference")
            line += (f"{r['psnr_y_fp32']:>11.3f}{r['drop_db']:>9.3f}"
                     f"{('inf' if pvr is None else f'{pvr:.2f}'):>14}{r['max_abs_vs_reference']:>10.2e}")
        return line

    lines += [fmt(r, r["name"]) for r in report["images"]]
    lines.append(fmt(s, f"mean ({s['images']} images)"))
    return "\n".join(lines)


# ------------------------------------------------------------------------- INT8 per-tensor errors (from the card)


def short_tensor_name(name: str) -> str:
    """A litert-torch tensor name made readable: module attributes joined by dots, the innermost type, the op index
    (``.../ResidualBlock_2/.../OutputMixingConv_2;1`` -> ``body.2.body.2 (OutputMixingConv);1``); the first of
    several fused names; other names unchanged."""
    first = name.split(";;")[0]
    if "/" not in first:
        return first
    path, _, index = first.partition(";")
    segments = [seg.rsplit(".", 1)[-1] for seg in path.split("/")]
    attrs = [seg.partition("_")[2] for seg in segments[1:]]
    kind = segments[-1].partition("_")[0]
    return f"{'.'.join(attrs)} ({kind})" + (f";{index}" if index else ";")


def _db(v: float | None) -> str:
    return "-inf" if v is None else f"{v:.1f}"


def _worst_rows(report: Any, rows: int) -> list[tuple[str, Any]]:
    """(signature, TensorError) over every signature, lowest SNR first (no-signal tensors first)."""
    allrows = [(sig, t) for sig, s in report.signatures.items() for t in s.worst]
    allrows.sort(key=lambda st: (st[1].snr_db is not None, st[1].snr_db or 0.0))
    return allrows[:rows]


def format_tensor_errors(report: Any, rows: int = 10) -> str:
    """The card's `TensorErrorReport` as a short table: a summary per signature (or over all of them when there are
    many: hard dispatch), then the worst ``rows`` tensors."""
    sigs = report.signatures
    lines = [f"INT8 per-tensor error vs the float model ({report.tool} validate, {report.samples} {report.data}; "
             "SNR in dB, float tensor power / squared error, lower is worse):"]
    if len(sigs) <= 3:
        for name, s in sigs.items():
            lines.append(f"  {name}: {s.tensors} tensors ({s.exact} identical), median {_db(s.median_snr_db)} dB, "
                         f"worst {_db(s.worst_snr_db)} dB, worst int8 {_db(s.worst_int8_snr_db)} dB, output "
                         f"{_db(s.output_snr_db)} dB")
    else:
        outs = [(s.output_snr_db, n) for n, s in sigs.items() if s.output_snr_db is not None]
        low = min(outs) if outs else (None, "-")
        lines.append(f"  {len(sigs)} signatures, {sum(s.tensors for s in sigs.values())} tensors "
                     f"({sum(s.exact for s in sigs.values())} identical); lowest output {_db(low[0])} dB ({low[1]})")
    parts: dict[str, float | None] = {}
    for s in sigs.values():
        for part, v in s.int8_parts.items():
            parts[part] = v if part not in parts else min((x for x in (parts[part], v) if x is not None), default=None)
    if parts:
        lines.append("  int8 tensors a --fp32-parts entry would keep float (worst SNR): " + ", ".join(
            f"{p} {_db(v)} dB" for p, v in sorted(parts.items(), key=lambda pv: (pv[1] is not None, pv[1] or 0.0))))
    worst = _worst_rows(report, rows)
    if not worst:
        lines.append("  every tensor is identical in both models")
        return "\n".join(lines)
    multi = len(sigs) > 1
    head = f"  {'SNR dB':>7}  {'kind':<12}  {'op':<15}  {'int8':<4}  {'part':<8}  "
    lines.append(head + ("signature: " if multi else "") + "tensor")
    for sig, t in worst:
        lines.append(f"  {_db(t.snr_db):>7}  {t.kind:<12}  {(t.op or '-'):<15}  {'yes' if t.quantized else 'no':<4}  "
                     f"{(t.part or '-'):<8}  " + (f"{sig}: " if multi else "") + short_tensor_name(t.name))
    if report.file:
        lines.append(f"  (every tensor: {report.file}; part: the --fp32-parts entry that keeps the op float)")
    return "\n".join(lines)


def tensor_errors_line(report: Any) -> str:
    """One line for the end of `convert`: the lowest output SNR and the worst tensor."""
    outs = [s.output_snr_db for s in report.signatures.values() if s.output_snr_db is not None]
    worst = _worst_rows(report, 1)
    where = "no tensor differs"
    if worst:
        sig, t = worst[0]
        where = (f"worst {_db(t.snr_db)} dB at {(sig + ': ') if len(report.signatures) > 1 else ''}"
                 f"{short_tensor_name(t.name)} ({t.op or t.kind}, {'int8' if t.quantized else 'float'})")
    return (f"int8 per-tensor error ({report.tool} validate, {report.samples} {report.data}): output SNR "
            f"{_db(min(outs) if outs else None)} dB, {where}; `nsr-edge validate` lists the worst")


__all__ = ["Tolerances", "NonFiniteOutput", "check_finite", "scores", "validate_images", "validate_artifact",
           "validate_stored", "format_stored", "require_runtime", "RUNTIME_PACKAGES", "summarize", "validation_record", "check", "format_report",
           "short_tensor_name", "format_tensor_errors", "tensor_errors_line"]
