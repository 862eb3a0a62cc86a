"""Core ML numerics of issue 5, measured on Linux with the MIL reference evaluator.

For one trained SR model: convert to FP32 / FP16 / W8 / W8A8 ``.mlpackage``s (W8A8 calibrated on training tiles through
the MIL evaluator), run every package with the evaluator through the deploy tiling on Set5 / Set14 / B100, and report
Y-PSNR per set next to eager FP32 PyTorch, plus the FP32 package's max |error| vs eager and the FP16 package's PSNR
against the FP32 package output (on the [0, 1] float outputs, before 8-bit rounding).

    .venv/bin/python bench/coreml_accuracy.py --model zoo/nsr_sr_x2 [--sets set5 set14 bsd100] [--tile 64] --out DIR
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="zoo id or checkpoint")
    ap.add_argument("--sets", nargs="+", default=["set5", "set14", "bsd100"])
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--recipes", nargs="+", default=["fp32", "fp16", "w8", "w8a8"])
    ap.add_argument("--precision", default="fp16", help="compute precision under w8 / w8a8")
    ap.add_argument("--calibration-tiles", type=int, default=64)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import coremltools
    import executorch
    from nsr_edge.converters.coreml import CoreMLOptions, convert_coreml, save_mlpackage
    from nsr_edge.runtime import datasets, tiling
    from nsr_edge.runtime.coreml_mil import MilEvaluator, load_mlpackage
    from nsr_edge.runtime.evaluation import _match_channels
    from nsr_edge.runtime.images import to_uint8
    from nsr_edge.runtime.metrics import gray_to_rgb, psnr_y
    from nsr_edge.runtime.tasks import TaskSpec

    from nsr_edge import hub
    from nsr_edge.converters.base import get_recipe
    from nsr_edge.quant import calibration_tiles

    resolved = hub.resolve(args.model, require_trained=True)
    model = resolved.build().eval()
    scale = resolved.config.scale
    task = TaskSpec("sr", scale)
    spec = tiling.deploy_spec(args.tile)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    calib = calibration_tiles(task, args.tile, args.calibration_tiles, progress=False)
    packages = {}
    report_parts: dict[str, list[str]] = {}
    for recipe in args.recipes:
        opts = CoreMLOptions(precision=args.precision, tile=args.tile)
        parts = get_recipe(recipe).fp32_parts if recipe in ("w8", "w8a8") else ()
        res = convert_coreml(model, recipe, opts, calibration_tiles=list(calib), fp32_parts=parts)
        report_parts[recipe] = list(parts)
        path = save_mlpackage(res.mlmodel, out / f"{recipe}.mlpackage", force=True)
        packages[recipe] = MilEvaluator(load_mlpackage(path), backend="torch")
        print(f"converted {recipe} ({time.time() - t0:.0f} s)", file=sys.stderr)

    def eager(tiles: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(tiles))).numpy()

    def mil(ev: MilEvaluator):
        def fn(tiles: np.ndarray) -> np.ndarray:
            return np.concatenate([ev.run({"input": t[None]})["output"] for t in tiles])
        return fn

    report: dict = {
        "model": args.model, "tile": args.tile, "precision_under_int8": args.precision,
        "calibration_tiles": len(calib), "fp32_parts": report_parts,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "coremltools": coremltools.__version__, "executorch": getattr(executorch, "__version__", "1.5.1"),
                     "numpy": np.__version__},
        "sets": {},
    }
    for name in args.sets:
        pairs = datasets.list_eval_images(name, scale)
        rows = {k: [] for k in ["eager", *args.recipes]}
        fp32_max_err, fp16_mse, fp16_n = 0.0, 0.0, 0
        for pair in pairs:
            x, gt = datasets.make_input(pair, "sr", scale)
            x = _match_channels(x, resolved.config.channels)
            ref = tiling.run_tiled(x, eager, spec, scale, batch_size=16)
            outs = {r: tiling.run_tiled(x, mil(ev), spec, scale, batch_size=16) for r, ev in packages.items()}
            g = gray_to_rgb(gt)
            rows["eager"].append(psnr_y(to_uint8(ref), g, shave=scale))
            for r, o in outs.items():
                rows[r].append(psnr_y(to_uint8(o), g, shave=scale))
            if "fp32" in outs:
                fp32_max_err = max(fp32_max_err, float(np.abs(outs["fp32"] - ref).max()))
                if "fp16" in outs:
                    fp16_mse += float(((outs["fp16"].astype(np.float64) - outs["fp32"]) ** 2).sum())
                    fp16_n += outs["fp16"].size
        entry = {k: round(float(np.mean(v)), 4) for k, v in rows.items()}
        entry["images"] = len(pairs)
        entry["fp32_package_max_abs_vs_eager"] = fp32_max_err
        if fp16_n:
            entry["fp16_psnr_vs_fp32_package_db"] = round(10 * math.log10(1.0 / (fp16_mse / fp16_n)), 2)
        for r in args.recipes:
            entry[f"{r}_minus_eager_db"] = round(entry[r] - entry["eager"], 4)
        report["sets"][name] = entry
        print(name, json.dumps(entry), file=sys.stderr)
    report["seconds"] = round(time.time() - t0, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
