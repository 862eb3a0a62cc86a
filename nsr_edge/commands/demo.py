"""`nsr-edge demo --out DIR`: the main job on the bundled default model, end to end.

The default model on every runtime that runs here (ExecuTorch FP32/INT8, LiteRT FP32/INT8, ONNX Runtime with exact
kernel mixing, Core ML through the MIL evaluator, hard-routed dispatch) beside its dense baselines, each converted,
validated on real images and profiled -> DIR/report.md, DIR/psnr_vs_latency.png and DIR/restored.png (one real image:
LR | bicubic | NSR | ground truth). The work is `nsr_edge.demo`; this module parses and prints.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from ..errors import UserError
from ._common import POSITIVE, TILE

DEFAULT_MODEL = "nsr_sr_x2"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the default model on every runtime here, validated and profiled; a report",
                       description="The main job: the default zoo model on every runtime that runs here, beside its "
                                   "dense baselines, validated on real images and profiled; writes DIR/report.md, "
                                   "DIR/psnr_vs_latency.png and DIR/restored.png.")
    p.add_argument("--out", required=True, help="report folder (must be new or empty unless --force)")
    p.add_argument("--force", action="store_true", help="replace a demo report folder nsr-edge wrote")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"zoo id or checkpoint (default {DEFAULT_MODEL})")
    p.add_argument("--lineup", choices=("full", "executorch"), default="full",
                   help="full: every runtime and the baselines (default); executorch: FP32 and INT8 only (quick)")
    p.add_argument("--tile", type=TILE, default=64)
    p.add_argument("--datasets", nargs="+", default=["set5"], help="validation sets (default set5)")
    p.add_argument("--runs", type=POSITIVE, default=20, help="timed runs per artifact (default 20)")
    p.add_argument("--data-dir")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from .. import hub
    from ..converters.base import atomic_output_dir, check_output_dir
    from ..demo import REPORT_SCHEMA, comparison_image, lineup, plot, report_md, run_lineup
    from ..runtime.files import atomic_write_json

    check_output_dir(args.out, args.force, kind="demo")
    if args.model == DEFAULT_MODEL and DEFAULT_MODEL not in hub.zoo_ids():
        raise UserError(f"the default model {DEFAULT_MODEL} is not in zoo/ yet (zoo: {', '.join(hub.zoo_ids()) or 'empty'}); "
                        "pass --model CHECKPOINT")
    warnings.filterwarnings("ignore")  # library deprecation chatter; errors still surface as exceptions
    rows = lineup(args.model, args.lineup)
    load_before = os.getloadavg()[0]
    with atomic_output_dir(args.out, args.force, kind="demo") as tmp:
        results = run_lineup(rows, tmp, args.tile, args.datasets, args.runs, args.data_dir, not args.quiet)
        load = (load_before, os.getloadavg()[0])
        ok = [r for r in results if r.get("status") == "ok"]
        if not ok:
            raise UserError("demo: no artifact could be converted and validated: "
                            + "; ".join(f"{r['label']}: {r['status']}" for r in results))
        shown = next((r for r in ok if r["target"] == "executorch" and r["recipe"] == "int8-ptq"), ok[0])
        print(f"[demo] restoring one {args.datasets[0]} image with {shown['label']}", file=sys.stderr)
        picture = comparison_image(tmp / shown["artifact"], args.datasets[0], tmp / "restored.png",
                                   data_dir=args.data_dir)
        atomic_write_json(tmp / "results.json", {"schema": REPORT_SCHEMA, "model": args.model, "tile": args.tile,
                                                 "load_average": load, "rows": results, "picture": picture})
        plot(results, args.datasets[0], tmp / "psnr_vs_latency.png", args.model)
        from ..converters.pipeline import tool_versions

        (tmp / "report.md").write_text(report_md(results, args.model, args.tile, args.datasets, tool_versions(),
                                                 picture, load))
    print(f"wrote {Path(args.out) / 'report.md'}")
    print((Path(args.out) / "report.md").read_text())
    return 0
