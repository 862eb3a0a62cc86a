"""Core ML numerics of issue 5, measured on Linux with the MIL reference evaluator.

For one trained SR model: convert to FP32 / FP16 / W8 / W8A8 ``model.mlpackage``s through the shared pipeline
(`nsr_edge.converters.pipeline.Conversion`, exactly what `nsr-edge convert --target coreml` runs; W8A8 calibrated
on the pipeline's training tiles through the MIL evaluator), run every package with the evaluator through the deploy
tiling on Set5 / Set14 / B100, and report Y-PSNR per set next to eager FP32 PyTorch, plus the FP32 package's max
|error| vs eager and the FP16 package's PSNR against the FP32 package output (on the [0, 1] float outputs, before
8-bit rounding). W8 / W8A8 compute in fp16, as the target converts them.

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
from typing import Any

import numpy as np
import torch

warnings.filterwarnings("ignore")


def convert_package(model: str, recipe: str, tile: int, out: Path, **options: Any) -> tuple[Any, dict[str, Any]]:
    """``nsr-edge convert --target coreml`` into ``out`` (replaced); the package's MIL evaluator (torch backend)
    and the model card."""
    from nsr_edge.converters.pipeline import ConvertOptions, convert
    from nsr_edge.runtime.coreml_mil import MilEvaluator, load_artifact

    path, _ = convert(ConvertOptions(model, target="coreml", recipe=recipe, tile=tile, progress=False, **options),
                      str(out), force=True)
    card = json.loads((path / "model.json").read_text())
    return MilEvaluator(load_artifact(path / card["artifact"]["file"]), backend="torch"), card


def mil_tiles(ev: Any):
    """A tiled-inference function (N, C, T, T) -> outputs running the package one tile at a time."""
    def fn(tiles: np.ndarray) -> np.ndarray:
        return np.concatenate([ev.run({"input": t[None]})["output"] for t in tiles])
    return fn


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="zoo id or checkpoint")
    ap.add_argument("--sets", nargs="+", default=["set5", "set14", "bsd100"])
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--recipes", nargs="+", default=["fp32", "fp16", "w8", "w8a8"])
    ap.add_argument("--calibration-tiles", type=int, default=64)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import coremltools
    import executorch
    from nsr_edge.runtime import datasets, tiling
    from nsr_edge.runtime.evaluation import _match_channels
    from nsr_edge.runtime.images import to_uint8
    from nsr_edge.runtime.metrics import gray_to_rgb, psnr_y

    from nsr_edge import hub

    resolved = hub.resolve(args.model, require_trained=True)
    model = resolved.build().eval()
    scale = resolved.config.scale
    spec = tiling.deploy_spec(args.tile)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    packages, cards = {}, {}
    for recipe in args.recipes:
        packages[recipe], cards[recipe] = convert_package(args.model, recipe, args.tile, out / recipe,
                                                          calibration_tiles=args.calibration_tiles)
        print(f"converted {recipe} ({time.time() - t0:.0f} s)", file=sys.stderr)

    def eager(tiles: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(tiles))).numpy()

    report: dict = {
        "model": args.model, "tile": args.tile, "precision_under_int8": "fp16",
        "calibration": {r: c["target_extra"]["coreml"].get("calibration") for r, c in cards.items()
                        if "calibration" in c["target_extra"]["coreml"]},
        "fp32_parts": {r: c["target_extra"]["coreml"]["fp32_parts"] for r, c in cards.items()},
        "artifact_sha256": {r: c["artifact"]["sha256"] for r, c in cards.items()},
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
            outs = {r: tiling.run_tiled(x, mil_tiles(ev), spec, scale, batch_size=16) for r, ev in packages.items()}
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
