"""int8-qat for Core ML through the shared pipeline: PT2E QAT with ExecuTorch's ``CoreMLQuantizer`` (the target's
``pt2e_quantizer``) run by nsr_edge/quant.py's resumable QAT, next to the FP32 package.

Both come from ``nsr-edge convert --target coreml`` (`nsr_edge.converters.pipeline`); each package is checked with
the MIL evaluator's quantization lint and scored (Y-PSNR, Set5, deploy tiling) with the MIL evaluator. Prints JSON.
(coremltools' ``LinearQuantizer`` flow, compared here before, is no longer a target path: docs/coreml.md.)

    .venv/bin/python bench/coreml_qat.py --model CKPT --steps 100 --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from coreml_accuracy import convert_package, mil_tiles


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--set", default="set5")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from nsr_edge import hub

    scale = hub.resolve(args.model, require_trained=True).config.scale
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, recipe, options in (
        ("fp32", "fp32", {}),
        ("pt2e_coreml_quantizer", "int8-qat",
         {"qat_steps": args.steps, "qat_dir": str(out / "qat-state"),
          "recipe_overrides": {"qat_lr": args.lr, "qat_batch": args.batch, "qat_patch": args.tile}}),
    ):
        t0 = time.time()
        ev, card = convert_package(args.model, recipe, args.tile, out / name, **options)
        results[name] = {"convert_s": round(time.time() - t0, 1), "evaluator": ev,
                         "qat": (card.get("quantization") or {}).get("qat")}
    report = score(results, args, scale)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def score(results, args, scale) -> dict:
    from nsr_edge.runtime import datasets, tiling
    from nsr_edge.runtime.images import to_uint8
    from nsr_edge.runtime.metrics import gray_to_rgb, psnr_y

    spec = tiling.deploy_spec(args.tile)
    eval_pairs = datasets.list_eval_images(args.set, scale)
    report = {"model": args.model, "steps": args.steps, "set": args.set}
    for name, r in results.items():
        ev = r.pop("evaluator")
        r["lint_problems"] = len(ev.lint_quantization())
        scores = []
        for pair in eval_pairs:
            x, gt = datasets.make_input(pair, "sr", scale)
            o = tiling.run_tiled(x, mil_tiles(ev), spec, scale, batch_size=16)
            scores.append(psnr_y(to_uint8(o), gray_to_rgb(gt), shave=scale))
        r["psnr_y"] = round(float(np.mean(scores)), 4)
        report[name] = r
        print(name, r, file=sys.stderr)
    return report


if __name__ == "__main__":
    sys.exit(main())
