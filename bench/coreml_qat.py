"""int8-qat for Core ML: coremltools' LinearQuantizer (trace) vs PT2E with ExecuTorch's CoreMLQuantizer (export).

Both start from the same trained model and fine-tune the same number of steps on the same training patches; each
result is converted to an .mlpackage, checked with the MIL evaluator's quantization lint, and scored (Y-PSNR, Set5,
deploy tiling) with the MIL evaluator. Prints JSON.

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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--set", default="set5")
    ap.add_argument("--flows", nargs="+", default=["linear_quantizer", "pt2e_coreml_quantizer"])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)


    from nsr_edge.converters.coreml import (
        CoreMLOptions,
        _qat_on_deploy,
        deploy_for_coreml,
        export_for_coreml,
        to_mlmodel,
    )
    from nsr_edge.runtime.tasks import TaskSpec

    from nsr_edge import hub
    from nsr_edge.data import PatchSampler, make_pairs

    resolved = hub.resolve(args.model, require_trained=True)
    model = resolved.build().eval()
    scale = resolved.config.scale
    task = TaskSpec("sr", scale)
    deployed = deploy_for_coreml(model)
    opts = CoreMLOptions(precision="fp16", tile=args.tile)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = make_pairs(task, task.train_set, None, limit=64)

    def batches():
        sampler = PatchSampler(pairs, task, args.tile, args.batch, 1)
        return lambda step: sampler(step)

    results = {}
    if "linear_quantizer" in args.flows:
        t0 = time.time()
        ml_lq = _qat_on_deploy(deployed, opts, 3, batches(), args.steps, args.lr)
        results["linear_quantizer"] = {"convert_s": round(time.time() - t0, 1), "mlmodel": ml_lq}
    if "pt2e_coreml_quantizer" in args.flows:
        results["pt2e_coreml_quantizer"] = pt2e_flow(deployed, opts, args, batches)
    ref_ml = to_mlmodel(export_for_coreml(deployed, CoreMLOptions(precision="fp32", tile=args.tile), 3),
                        CoreMLOptions(precision="fp32", tile=args.tile), 3)
    results["fp32"] = {"mlmodel": ref_ml}
    report = score(results, args, scale, out)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def pt2e_flow(deployed, opts, args, batches) -> dict:
    from coremltools.optimize.torch.quantization.quantization_config import (
        LinearQuantizerConfig,
    )
    from executorch.backends.apple.coreml.quantizer import CoreMLQuantizer
    from nsr_edge.converters.coreml import to_mlmodel
    from torchao.quantization.pt2e import (
        move_exported_model_to_eval,
        move_exported_model_to_train,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from nsr_edge.quant import export_for_quant

    t0 = time.time()
    qc = LinearQuantizerConfig.from_dict({"global_config": {"quantization_scheme": "symmetric",
                                                            "weight_per_channel": True}})
    example = torch.rand(args.batch, 3, args.tile, args.tile)
    gm = export_for_quant(deployed, example, dynamic_batch=True)
    prepared = prepare_qat_pt2e(gm, CoreMLQuantizer(qc))
    move_exported_model_to_train(prepared)
    for p in prepared.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam([p for p in prepared.parameters() if p.requires_grad], lr=args.lr)
    sample = batches()
    for step in range(args.steps):
        x, y = sample(step)
        loss = torch.nn.functional.l1_loss(prepared(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    move_exported_model_to_eval(prepared)
    converted = convert_pt2e(prepared)
    ep = torch.export.export(converted, (torch.rand(1, 3, args.tile, args.tile),)).run_decompositions({})
    return {"convert_s": round(time.time() - t0, 1), "mlmodel": to_mlmodel(ep, opts, 3)}


def score(results, args, scale, out) -> dict:
    from nsr_edge.converters.coreml import save_mlpackage
    from nsr_edge.runtime import datasets, tiling
    from nsr_edge.runtime.coreml_mil import MilEvaluator, load_mlpackage
    from nsr_edge.runtime.images import to_uint8
    from nsr_edge.runtime.metrics import gray_to_rgb, psnr_y

    spec = tiling.deploy_spec(args.tile)
    eval_pairs = datasets.list_eval_images(args.set, scale)
    report = {"model": args.model, "steps": args.steps, "set": args.set}
    for name, r in results.items():
        ev = MilEvaluator(load_mlpackage(save_mlpackage(r.pop("mlmodel"), out / f"{name}.mlpackage", force=True)),
                          backend="torch")
        r["lint_problems"] = len(ev.lint_quantization())
        fn = lambda t, ev=ev: np.concatenate([ev.run({"input": s[None]})["output"] for s in t])
        scores = []
        for pair in eval_pairs:
            x, gt = datasets.make_input(pair, "sr", scale)
            o = tiling.run_tiled(x, fn, spec, scale, batch_size=16)
            scores.append(psnr_y(to_uint8(o), gray_to_rgb(gt), shave=scale))
        r["psnr_y"] = round(float(np.mean(scores)), 4)
        report[name] = r
        print(name, r, file=sys.stderr)
    return report


if __name__ == "__main__":
    sys.exit(main())
