"""The demo's work (`nsr-edge demo`): one model on every runtime that runs here, beside its dense baselines.

Each row of the lineup is converted, validated on real images with its own runtime (child process) and profiled
(1 thread), with the same library code as `convert`, `validate` and `profile`; a row whose stack is missing or that
fails is reported with its one-line reason instead of stopping the demo. The report is a table, a PSNR-vs-latency
plot and one real image restored (LR | bicubic | NSR | ground truth crops), so a newcomer sees what the model does.
"""

from __future__ import annotations

import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

REPORT_SCHEMA = "nsr-edge-demo-report"  # in results.json: how `demo --force` knows the folder is its own


@dataclass(frozen=True)
class Row:
    """One artifact of the lineup."""

    label: str
    model: str
    target: str
    recipe: str
    strategy: str = "output-mix"

    @property
    def folder(self) -> str:
        """Sub-folder name: the model's id (a checkpoint's file stem, never its path), target, recipe, strategy."""
        model = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(self.model).stem)
        return "-".join((model, self.target, self.recipe, self.strategy))


def lineup(model: str, which: str = "full") -> list[Row]:
    """The rows for ``model``: ExecuTorch FP32/INT8 always; with ``full``, LiteRT, ONNX Runtime (exact kernel mixing),
    Core ML (MIL evaluator), hard-routed dispatch and the dense baselines of equal params / equal MACs where the zoo
    has them (`<model>_hard`, `dense_<task>_eqparams`, `dense_<task>_eqmacs`)."""
    from . import hub

    rows = [Row("ExecuTorch FP32", model, "executorch", "fp32"), Row("ExecuTorch INT8", model, "executorch", "int8-ptq")]
    if which == "executorch":
        return rows
    rows += [Row("LiteRT FP32", model, "litert", "fp32"), Row("LiteRT INT8", model, "litert", "int8-ptq"),
             Row("ONNX Runtime FP32, kernel mixing", model, "onnxruntime", "fp32", "kernel-mix"),
             Row("Core ML FP16 (MIL evaluator)", model, "coreml", "fp16")]
    zoo = set(hub.zoo_ids())
    if f"{model}_hard" in zoo:
        rows.append(Row("hard routing, ExecuTorch dispatch INT8", f"{model}_hard", "executorch-dispatch", "int8-ptq",
                        "hard"))
    base = model.removeprefix("nsr_")
    for kind, label in (("eqparams", "dense, equal params"), ("eqmacs", "dense, equal MACs")):
        if f"dense_{base}_{kind}" in zoo:
            rows.append(Row(f"{label}, ExecuTorch INT8", f"dense_{base}_{kind}", "executorch", "int8-ptq"))
    return rows


def run_row(row: Row, folder: Path, tile: int, datasets: list[str], data_dir: str | None,
            progress: bool) -> dict[str, Any]:
    """Convert and validate one row into ``folder``; the result dict says what failed and why."""
    from .converters.pipeline import ConvertOptions, convert
    from .reference import reference_fn
    from .runtime.card import record_validation
    from .runtime.evaluation import task_images
    from .runtime.validate import Tolerances, validate_artifact, validation_record

    out: dict[str, Any] = {"label": row.label, "model": row.model, "target": row.target, "recipe": row.recipe,
                           "strategy": row.strategy, "artifact": folder.name, "sets": {}}
    try:
        _, card = convert(ConvertOptions(row.model, row.target, row.recipe, tile, strategy=row.strategy,
                                         data_dir=data_dir, progress=progress), str(folder))
    except UserError as e:
        out["status"] = f"not converted: {e}"
        return out
    fwd = card.delegation.methods["forward"]
    out.update(bytes=card.artifact.bytes, delegated=f"{fwd.delegated_ops}/{fwd.total_ops}", backend=card.delegation.backend)
    try:
        sets = {ds: task_images(card.task, ds, None, data_dir)[1] for ds in datasets}
        reports = validate_artifact(str(folder), card, sets, lambda: reference_fn(card, row.model), allow_small=True,
                                    progress=progress)
    except UserError as e:
        out["status"] = f"not validated: {e}"
        return out
    for ds, rep in reports.items():
        out["sets"][ds] = rep["summary"]
        record_validation(folder, validation_record(ds, rep["summary"], Tolerances(), True, card.runner))
    out["status"] = "ok"
    return out


def profile_interleaved(results: list[dict[str, Any]], root: Path, runs: int, rounds: int = 3) -> None:
    """Latency of every converted row, 1 thread, in ``rounds`` interleaved rounds (each artifact timed once per
    round, in turn), so a load change on a shared machine hits every row alike; the row keeps the round with the
    lowest median (its least disturbed) and the card records it."""
    from .runtime.card import load_card, record_profile
    from .runtime.profile import profile_artifact, profile_record

    ok = [r for r in results if r.get("status") == "ok"]
    for rnd in range(1, rounds + 1):
        print(f"[demo] profiling, round {rnd}/{rounds}", file=sys.stderr, flush=True)
        for r in ok:
            if r.get("profile_note"):
                continue
            folder = root / r["artifact"]
            try:
                prof = profile_artifact(str(folder), load_card(folder), threads=1, runs=runs, warmup=3)
            except UserError as e:  # e.g. Core ML latency needs a Mac: the MIL evaluator measures numerics only
                r["profile_note"] = str(e)
                continue
            r.setdefault("round_medians_ms", []).append(prof["median_ms"])
            if "profile" not in r or prof["median_ms"] < r["profile"]["median_ms"]:
                r["profile"] = prof
    for r in ok:
        if r.get("profile"):
            record_profile(root / r["artifact"], profile_record(r["profile"]))


def run_lineup(rows: list[Row], root: Path, tile: int, datasets: list[str], runs: int, data_dir: str | None,
               progress: bool) -> list[dict[str, Any]]:
    results = []
    for i, row in enumerate(rows, 1):
        print(f"[demo {i}/{len(rows)}] {row.label}: {row.model} -> {row.target} {row.recipe} ({row.strategy})",
              file=sys.stderr, flush=True)
        result = run_row(row, root / row.folder, tile, datasets, data_dir, progress)
        if result["status"] != "ok":
            print(f"[demo] {row.label}: {result['status']}", file=sys.stderr)
        results.append(result)
    profile_interleaved(results, root, runs)
    return results


# ----------------------------------------------------------------------------------------------------- the picture


def comparison_image(artifact_dir: Path, dataset: str, path: Path, image: int = -1, crop: int = 64,
                     zoom: int = 3, data_dir: str | None = None) -> dict[str, Any]:
    """One real image of ``dataset`` restored by the artifact: LR (nearest) | bicubic | artifact | ground truth,
    the most textured ``crop`` x ``crop`` window of the ground truth, each magnified ``zoom`` x; PSNR-Y of each."""
    from PIL import Image, ImageDraw

    from .runtime.card import artifact_path, load_card, tile_spec
    from .runtime.evaluation import task_images
    from .runtime.files import atomic_write_bytes
    from .runtime.images import to_uint8
    from .runtime.imresize import bicubic_upscale
    from .runtime.metrics import psnr_y
    from .runtime.runners.child import RunnerProcess
    from .runtime.tiling import run_tiled

    card = load_card(artifact_dir)
    task, spec = card.task, tile_spec(card)
    _, images = task_images(task, dataset, None, data_dir)
    name, x, gt = images[image]
    scale = task.scale if task.name == "sr" else 1
    with RunnerProcess(card.runner, str(artifact_path(artifact_dir, card)), "forward", 1) as proc:
        restored = to_uint8(run_tiled(x, proc.run, spec, scale, proc.input_shape[0]))
    lr8 = to_uint8(x)
    bicubic = bicubic_upscale(lr8, scale) if scale > 1 else lr8
    nearest = np.repeat(np.repeat(lr8, scale, axis=0), scale, axis=1)
    y0, x0 = _textured_window(gt, crop)
    shave = task.shave
    panels = [("LR (nearest)", nearest, None), ("bicubic", bicubic, psnr_y(bicubic, gt, shave)),
              (f"NSR, {card.target} {card.recipe['name']}", restored, psnr_y(restored, gt, shave)),
              ("ground truth", gt, None)]
    side, pad, head = crop * zoom, 8, 18
    canvas = Image.new("RGB", (len(panels) * (side + pad) + pad, side + head + 2 * pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, img, score) in enumerate(panels):
        window = img[y0:y0 + crop, x0:x0 + crop]
        window = np.repeat(window, 3, axis=2) if window.shape[2] == 1 else window
        tile = Image.fromarray(window).resize((side, side), Image.NEAREST)
        left = pad + i * (side + pad)
        canvas.paste(tile, (left, pad + head))
        draw.text((left, pad), label + (f"  {score:.2f} dB" if score is not None else ""), fill="black")
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return {"image": name, "dataset": dataset, "crop": [int(y0), int(x0), crop],
            "psnr_y": {label: (round(s, 3) if s is not None else None) for label, _, s in panels}}


def _textured_window(gt: np.ndarray, crop: int, step: int = 8) -> tuple[int, int]:
    """Top-left of the ``crop`` window with the most gradient energy (where restoration shows)."""
    g = gt.astype(np.float32).mean(axis=2)
    energy = np.abs(np.diff(g, axis=0))[:, :-1] + np.abs(np.diff(g, axis=1))[:-1, :]
    best, where = -1.0, (0, 0)
    for y in range(0, max(1, energy.shape[0] - crop), step):
        for x in range(0, max(1, energy.shape[1] - crop), step):
            e = float(energy[y:y + crop, x:x + crop].sum())
            if e > best:
                best, where = e, (y, x)
    return where


# ----------------------------------------------------------------------------------------------------- the report


def plot(results: list[dict[str, Any]], ds: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        if r.get("profile") and ds in r["sets"]:
            x, y = r["profile"]["ms_per_megapixel"], r["sets"][ds]["psnr_y"]
            ax.scatter([x], [y], s=40, marker="s" if r["model"].startswith("dense") else "o")
            ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("ms per output megapixel (1 thread, this machine; log scale)")
    ax.set_ylabel(f"Y-PSNR on {ds} (dB)")
    ax.set_title(f"{title}: accuracy vs latency (squares: dense baselines)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report_md(results: list[dict[str, Any]], model: str, tile: int, datasets: list[str], tools: dict[str, str],
              picture: dict[str, Any] | None, load: tuple[float, float]) -> str:
    ds0 = datasets[0]
    ref = next((r for r in results if r.get("profile") and r["target"] == "executorch" and r["recipe"] == "fp32"
                and r["model"] == model), None)
    lines = [f"# nsr-edge demo: {model} on every runtime that runs here", "",
             f"Tile {tile} px, 1 thread, load average {load[0]:.2f} before / {load[1]:.2f} after. Latency: every "
             "artifact timed in 3 interleaved rounds, the round with the lowest median kept (on a shared machine "
             "the ratios are the comparable numbers, not the milliseconds). Y-PSNR/SSIM on "
             "the Y channel (BT.601, 8-bit, shave = scale); drop = the row's own FP32 PyTorch model minus the "
             "artifact.", "",
             "| row | model | " + " | ".join(f"{d} Y-PSNR (drop)" for d in datasets)
             + " | max abs vs FP32 | ms / tile | ms / MP | vs ExecuTorch FP32 | MB | fast path |",
             "|---" * (len(datasets) + 8) + "|"]
    for r in results:
        if r.get("status") != "ok":
            lines.append(f"| {r['label']} | `{r['model']}` | " + " | ".join("-" for _ in datasets)
                         + f" | - | - | - | - | - | {r['status']} |")
            continue
        p = r.get("profile")
        speed = f"{ref['profile']['median_ms'] / p['median_ms']:.2f}x" if p and ref else "-"
        lat = f"{p['median_ms']:.2f} | {p['ms_per_megapixel']:.0f}" if p else "needs a device | -"
        lines.append(f"| {r['label']} | `{r['model']}` | " + " | ".join(
            f"{r['sets'][d]['psnr_y']:.3f} ({r['sets'][d]['drop_db']:+.3f})" for d in datasets)
            + f" | {r['sets'][ds0]['max_abs_vs_reference']:.1e} | {lat} | {speed} | {r['bytes'] / 1e6:.2f} | "
              f"{r['backend']} {r['delegated']} |")
    notes = [f"- {r['label']}: latency not measured ({r['profile_note']})" for r in results if r.get("profile_note")]
    lines += ["", *notes, "", "![PSNR vs latency](psnr_vs_latency.png)", ""]
    if picture:
        scores = ", ".join(f"{k} {v:.2f} dB" for k, v in picture["psnr_y"].items() if v is not None)
        lines += [f"One real image ({picture['dataset']} `{picture['image']}`, the most textured {picture['crop'][2]} "
                  f"px crop of the ground truth, magnified; whole-image Y-PSNR: {scores}):", "",
                  "![LR, bicubic, NSR, ground truth](restored.png)", ""]
    lines += ["Tools: " + ", ".join(f"{k} {v}" for k, v in tools.items()) + ".", "",
              "Each sub-folder holds an artifact and its model card (docs/model_card.md), with these validation and "
              "profile results recorded in it."]
    return "\n".join(lines) + "\n"


__all__ = ["REPORT_SCHEMA", "Row", "lineup", "run_row", "profile_interleaved", "run_lineup", "comparison_image", "plot", "report_md"]
