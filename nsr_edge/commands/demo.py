"""`nsr-edge demo --out DIR`: the main job on the bundled default model, end to end.

convert (ExecuTorch FP32 and INT8 PTQ) -> validate (Set5, and Set14 with --more) -> profile (1 thread) -> DIR/report.md
with a table and DIR/psnr_vs_latency.png. Every step is the same code as the individual commands.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import UserError
from ._common import POSITIVE, TILE

DEFAULT_MODEL = "nsr_sr_x2"
REPORT_SCHEMA = "nsr-edge-demo-report"  # in results.json: how `demo --force` knows the folder is its own


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="convert -> validate -> profile the bundled default model; write a report",
                       description="The main job: the default zoo model to ExecuTorch FP32 and INT8, validated on "
                                   "real images and profiled; writes DIR/report.md and DIR/psnr_vs_latency.png.")
    p.add_argument("--out", required=True, help="report folder (must be new or empty unless --force)")
    p.add_argument("--force", action="store_true", help="replace a demo report folder nsr-edge wrote")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"zoo id or checkpoint (default {DEFAULT_MODEL})")
    p.add_argument("--tile", type=TILE, default=64)
    p.add_argument("--recipes", nargs="+", default=["fp32", "int8-ptq"])
    p.add_argument("--datasets", nargs="+", default=["set5"], help="validation sets (default set5)")
    p.add_argument("--runs", type=POSITIVE, default=30)
    p.add_argument("--data-dir")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from .. import hub
    from ..converters.base import atomic_output_dir, check_output_dir
    from ..runtime.files import atomic_write_json
    from ..converters.pipeline import ConvertOptions, convert
    from ..reference import reference_fn
    from ..runtime.card import record_profile, record_validation
    from ..runtime.evaluation import task_images
    from ..runtime.profile import profile_artifact, profile_record
    from ..runtime.validate import Tolerances, validate_artifact, validation_record

    check_output_dir(args.out, args.force, kind="demo")
    if args.model == DEFAULT_MODEL and DEFAULT_MODEL not in hub.zoo_ids():
        raise UserError(f"the default model {DEFAULT_MODEL} is not in zoo/ yet (zoo: {', '.join(hub.zoo_ids()) or 'empty'}); "
                        "pass --model CHECKPOINT")
    rows: list[dict[str, Any]] = []
    with atomic_output_dir(args.out, args.force, kind="demo") as tmp:
        for recipe in args.recipes:
            folder = tmp / f"executorch-{recipe}"
            print(f"[demo] convert {args.model} -> executorch {recipe}", file=sys.stderr)
            _, card = convert(ConvertOptions(args.model, "executorch", recipe, args.tile, data_dir=args.data_dir,
                                             progress=not args.quiet), str(folder))
            fwd = card.delegation.methods["forward"]
            row: dict[str, Any] = {"recipe": recipe, "artifact": folder.name, "bytes": card.artifact.bytes,
                                   "delegation": {"delegated_ops": fwd.delegated_ops, "total_ops": fwd.total_ops},
                                   "sets": {}}
            print(f"[demo] validate {recipe} on {', '.join(args.datasets)}", file=sys.stderr)
            sets = {ds: task_images(card.task, ds, None, args.data_dir)[1] for ds in args.datasets}
            reports = validate_artifact(str(folder), card, sets, lambda: reference_fn(card, args.model),
                                        allow_small=True, progress=not args.quiet)
            for ds, rep in reports.items():
                row["sets"][ds] = rep["summary"]
                record_validation(folder, validation_record(ds, rep["summary"], Tolerances(), True, card.runner))
            print(f"[demo] profile {recipe}", file=sys.stderr)
            row["profile"] = profile_artifact(str(folder), card, threads=1, runs=args.runs, warmup=5)
            record_profile(folder, profile_record(row["profile"]))
            rows.append(row)
        atomic_write_json(tmp / "results.json", {"schema": REPORT_SCHEMA, "model": args.model, "tile": args.tile, "rows": rows})
        plot(rows, args.datasets[0], tmp / "psnr_vs_latency.png", args.model)
        (tmp / "report.md").write_text(report_md(rows, args.model, args.tile, args.datasets, card.tools))
    print(f"wrote {Path(args.out) / 'report.md'}")
    print((Path(args.out) / "report.md").read_text())
    return 0


def plot(rows: list[dict[str, Any]], ds: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in rows:
        x, y = r["profile"]["ms_per_megapixel"], r["sets"][ds]["psnr_y"]
        ax.scatter([x], [y], s=40)
        ax.annotate(f"ET {r['recipe']}", (x, y), textcoords="offset points", xytext=(5, 5))
    fp32 = rows[0]["sets"][ds]["psnr_y_fp32"]
    ax.axhline(fp32, ls="--", lw=0.8, color="gray", label="PyTorch FP32")
    ax.set_xlabel("ms per output megapixel (1 thread, this machine)")
    ax.set_ylabel(f"Y-PSNR on {ds} (dB)")
    ax.set_title(f"{title}: accuracy vs latency")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report_md(rows: list[dict[str, Any]], model: str, tile: int, datasets: list[str], tools: dict[str, str]) -> str:
    lines = [f"# nsr-edge demo: {model} on ExecuTorch", "",
             f"Tile {tile} px, strategy output-mix, XNNPACK, 1 thread. PSNR/SSIM on the Y channel (BT.601, 8-bit, "
             "shave = scale); drop = PyTorch FP32 Y-PSNR minus the artifact's.", "",
             "| recipe | " + " | ".join(f"{d} Y-PSNR (drop)" for d in datasets)
             + " | max abs vs FP32 | median ms / tile | p90 ms | ms / MP | size MB | delegated |",
             "|---" * (len(datasets) + 7) + "|"]
    for r in rows:
        p, s0 = r["profile"], r["sets"][datasets[0]]
        d = r["delegation"]
        lines.append(f"| {r['recipe']} | " + " | ".join(
            f"{r['sets'][ds]['psnr_y']:.3f} ({r['sets'][ds]['drop_db']:+.3f})" for ds in datasets)
            + f" | {s0['max_abs_vs_reference']:.2e} | {p['median_ms']:.2f} | {p['p90_ms']:.2f} | "
              f"{p['ms_per_megapixel']:.0f} | {r['bytes'] / 1e6:.2f} | {d['delegated_ops']}/{d['total_ops']} |")
    fp32 = next((r for r in rows if r["recipe"] == "fp32"), None)
    lines += ["", "PyTorch FP32 (training form) Y-PSNR: "
              + ", ".join(f"{ds} {rows[0]['sets'][ds]['psnr_y_fp32']:.3f}" for ds in datasets) + "."]
    if fp32:
        for r in rows:
            if r is not fp32:
                lines.append(f"{r['recipe']} is {fp32['profile']['median_ms'] / r['profile']['median_ms']:.2f}x "
                             "the speed of fp32 (median per tile).")
    lines += ["", "![PSNR vs latency](psnr_vs_latency.png)", "",
              "Tools: " + ", ".join(f"{k} {v}" for k, v in tools.items()) + ".", "",
              "Artifacts (model.pte + model.json card, with these results recorded) are in the sub-folders."]
    return "\n".join(lines) + "\n"
