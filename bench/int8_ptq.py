"""Where does INT8 PTQ lose accuracy, and which recipe loses least? Measured on the PT2E-simulated module.

    .venv/bin/python bench/int8_ptq.py --model nsr_sr_x2 --tile 64 --sets set5 set14 [--configs base skip ...]

Each configuration is the `int8-ptq` recipe with some parts kept in float, a calibration size and an activation
observer; every one is calibrated on the same training tiles (sr291 through the deploy tiler) and evaluated on the
same deploy tiling as the artifact. The drop is the FP32 deploy model's Y-PSNR minus the simulated INT8 module's
(PT2E `convert_pt2e` output run eagerly: the same q/dq arithmetic the XNNPACK delegate implements, up to rounding).

Besides the recipe's ``fp32_parts`` (routing, first, last, skip, output, residual: converters/base.py) a configuration
may keep in float ``block<i>`` (every node of residual block i, for per-block sensitivity).
Prints one line per configuration and writes a JSON with all numbers (``--json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nsr_edge import hub, quant  # noqa: E402
from nsr_edge.converters.base import FP32_PARTS  # noqa: E402
from nsr_edge.deploy import to_deploy  # noqa: E402
from nsr_edge.evaluate import EvalTarget, evaluate_sets, torch_tile_fn  # noqa: E402
from nsr_edge.hub import task_of  # noqa: E402
from nsr_edge.runtime.evaluation import tiled  # noqa: E402
from nsr_edge.runtime.tiling import deploy_spec  # noqa: E402

# name -> (fp32 parts incl. the extra kinds above, calibration tiles, activation observer)
CONFIGS: dict[str, tuple[tuple[str, ...], int, str]] = {
    "none": ((), 64, "histogram"),
    "routing": (("routing",), 64, "histogram"),
    "routing+skip": (("routing", "skip"), 64, "histogram"),
    "routing+first+last+skip": (("routing", "first", "last", "skip"), 64, "histogram"),
    "all4+256tiles": (("routing", "first", "last", "skip"), 256, "histogram"),
    "all4+minmax": (("routing", "first", "last", "skip"), 64, "minmax"),
    "all4+adds": (("routing", "first", "last", "skip", "residual"), 64, "histogram"),
    "all4+output": (("routing", "first", "last", "skip", "output"), 64, "histogram"),
    "routing+output": (("routing", "output"), 64, "histogram"),
    "routing+skip+output": (("routing", "skip", "output"), 64, "histogram"),
    "all4+output+256tiles": (("routing", "first", "last", "skip", "output"), 256, "histogram"),
    "all4+output+adds": (("routing", "first", "last", "skip", "output", "residual"), 64, "histogram"),
    "routing+output+adds": (("routing", "output", "residual"), 64, "histogram"),
}


def _extended_filter(model, parts):
    """`quant.node_filter` for the recipe parts, plus the bench-only ``block<i>``."""
    base = quant.node_filter(model, tuple(p for p in parts if p in FP32_PARTS))
    block_prefixes = tuple(f"body.{p[5:]}" for p in parts if p.startswith("block"))

    def allowed(node):
        if not base(node):
            return False
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        fqns = [str(v[0]) for v in stack]
        return not any(f == p or f.startswith(p + ".") for f in fqns for p in block_prefixes)

    return allowed


def quantizer_for(model, parts, observer):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)

    config = get_symmetric_quantization_config(is_per_channel=True)
    if observer == "minmax":
        from dataclasses import replace as dc_replace

        from torchao.quantization.pt2e import MinMaxObserver

        act = dc_replace(config.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
        config = dc_replace(config, input_activation=act, output_activation=act)
    q = XNNPACKQuantizer().set_global(config)
    q.set_filter_function(_extended_filter(model, parts))
    return q


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="nsr_sr_x2")
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--sets", nargs="*", default=["set5", "set14"])
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS),
                    help=f"names from {', '.join(CONFIGS)}, or 'blocks' for per-block sensitivity")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write all numbers here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    resolved = hub.resolve(args.model, require_trained=True)
    task = task_of(resolved)
    model = to_deploy(resolved.build(), "output-mix")
    spec = deploy_spec(args.tile)
    configs = dict(CONFIGS)
    names = []
    for n in args.configs:
        if n == "blocks":  # per-block sensitivity: only block i quantized (everything else, routing too, in float)
            for i in range(1, resolved.config.blocks + 1):
                others = tuple(f"block{j}" for j in range(1, resolved.config.blocks + 1) if j != i)
                configs[f"only block{i}"] = (("routing", "first", "last", "skip", "output") + others, 64, "histogram")
                names.append(f"only block{i}")
        else:
            names.append(n)

    def score(m, batch=32):
        res = evaluate_sets(EvalTarget("m", tiled(torch_tile_fn(m), spec, task.scale, batch)), task, args.sets, [], None)
        return {r.dataset: r.mean("psnr_y") for r in res}

    t0 = time.time()
    fp32 = score(model)
    print("fp32", " ".join(f"{k} {v:.3f}" for k, v in fp32.items()), flush=True)
    tiles_cache: dict[int, np.ndarray] = {}
    out = {"model": args.model, "tile": args.tile, "fp32": fp32, "configs": {},
           "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s)", "torch": torch.__version__}
    for name in names:
        parts, count, observer = configs[name]
        if count not in tiles_cache:
            tiles_cache[count] = quant.calibration_tiles(task, args.tile, count, 0, None, None, False)
        q = quant.quantize_ptq(model, quantizer_for(model, parts, observer), tiles_cache[count], False)
        s = score(q, batch=1)
        drops = {k: round(fp32[k] - v, 4) for k, v in s.items()}
        out["configs"][name] = {"fp32_parts": list(parts), "calibration_tiles": count, "observer": observer,
                                "psnr_y": s, "drop_db": drops}
        print(f"{name:<28}", " ".join(f"{k} drop {v:.3f}" for k, v in drops.items()),
              f"({time.time() - t0:.0f} s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
