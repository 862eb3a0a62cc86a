"""The NSR paper's Fig. 5 on ExecuTorch/XNNPACK: one sparse conv3x3 layer, 64 input channels, k = 1/2/4/8/16 banks,
at fixed FLOPs (every bank 64->64: parameters grow k x) and at fixed model size (the k banks together hold the
parameters of one dense 64->64 conv: every bank 64->64/k), 1 thread.

Variants per k: the dense conv of equal MACs (one bank), the dense conv of equal parameters (all banks as one static
conv), output mixing (all banks + the gate multiply and sum over banks, what the `output-mix` strategy runs), and host
dispatch (one static batch-1 program per bank in one multi-method .pte, the bank picked per tile on the host). Random
weights and random (uniform) routing: latency only. Timed on batches of 16 tiles 64x64 (per-tile calls), all variants
of a row interleaved in the same rounds: min and median.

    .venv/bin/python bench/fig5.py [--ks 1 2 4 8 16] [--rounds 7] [--out docs/fig5.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

C, TILE, BATCH = 64, 64, 16


class OutputMix(nn.Module):
    """k banks as one conv, gates broadcast per channel, sum over banks (gates are an input: one-hot per tile)."""

    def __init__(self, k: int, cout: int) -> None:
        super().__init__()
        self.k, self.cout = k, cout
        self.conv = nn.Conv2d(C, k * cout, 3, padding=1)
        self.register_buffer("expand", torch.repeat_interleave(torch.eye(k), cout, dim=1))  # (k, k*cout)

    def forward(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        y = self.conv(x) * torch.matmul(gates, self.expand).reshape(1, -1, 1, 1)
        out = y[:, 0 : self.cout]
        for i in range(1, self.k):
            out = out + y[:, i * self.cout : (i + 1) * self.cout]
        return out


def lower(modules: dict[str, nn.Module], examples: dict[str, tuple], int8: bool) -> bytes:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    exported = {}
    for name, m in modules.items():
        m.eval()
        args = examples[name]
        if int8:
            q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            prepared = prepare_pt2e(torch.export.export(m, args).module(), q)
            with torch.no_grad():
                for _ in range(4):
                    prepared(*(torch.rand_like(a) - 0.5 if a.dim() == 4 else a for a in args))
            m = convert_pt2e(prepared)
        exported[name] = torch.export.export(m, args)
    return to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch().buffer


def build_row(k: int, setting: str, int8: bool):
    """(pte bytes, {variant: callable(tiles, banks)}) for one k and setting."""
    torch.manual_seed(k)
    cout = C if setting == "flops" else C // k
    x = torch.rand(1, C, TILE, TILE) - 0.5
    g = torch.zeros(1, k)
    g[0, 0] = 1
    mods: dict[str, nn.Module] = {"eqM": nn.Conv2d(C, cout, 3, padding=1), "eqP": nn.Conv2d(C, k * cout, 3, padding=1)}
    ex: dict[str, tuple] = {"eqM": (x,), "eqP": (x,)}
    if k > 1:
        mods["outmix"] = OutputMix(k, cout)
        ex["outmix"] = (x, g)
        for i in range(k):
            mods[f"bank{i}"] = nn.Conv2d(C, cout, 3, padding=1)
            ex[f"bank{i}"] = (x,)
    return lower(mods, ex, int8), list(mods)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", type=int, nargs="*", default=[1, 2, 4, 8, 16])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "docs/fig5.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    import executorch.kernels.quantized  # noqa: F401

    portable_lib._unsafe_reset_threadpool(1)
    rng = np.random.default_rng(0)
    tiles = [torch.rand(1, C, TILE, TILE) - 0.5 for _ in range(BATCH)]
    rows = []
    load_before = os.getloadavg()
    for setting in ("flops", "size"):
        for int8 in (False, True):
            for k in args.ks:
                if setting == "size" and C % k:
                    continue
                t0 = time.time()
                pte, names = build_row(k, setting, int8)
                program = Runtime.get().load_program(pte)
                methods = {n: program.load_method(n) for n in names}
                banks = rng.integers(0, k, BATCH)
                onehot = [torch.nn.functional.one_hot(torch.tensor([b]), k).float() for b in banks]

                def run(variant: str) -> None:
                    if variant == "dispatch":
                        for t, b in zip(tiles, banks):
                            methods[f"bank{b}"].execute([t])
                    elif variant == "outmix":
                        for t, g in zip(tiles, onehot):
                            methods["outmix"].execute([t, g])
                    else:
                        for t in tiles:
                            methods[variant].execute([t])

                variants = ["eqM", "eqP"] + (["outmix", "dispatch"] if k > 1 else [])
                times: dict[str, list[float]] = {v: [] for v in variants}
                for v in variants:
                    run(v)
                for r in range(args.rounds):
                    for v in (variants if r % 2 == 0 else variants[::-1]):
                        s = time.perf_counter()
                        run(v)
                        times[v].append(time.perf_counter() - s)
                row = {"setting": setting, "dtype": "INT8" if int8 else "FP32", "k": k,
                       **{v: (1e3 * min(t), 1e3 * float(np.median(t))) for v, t in times.items()}}
                rows.append(row)
                print(row, f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    load_after = os.getloadavg()

    versions = {d: metadata.version(d) for d in ("torch", "executorch", "torchao")}
    lines = [
        "# Fig. 5 on ExecuTorch/XNNPACK: one sparse conv3x3 layer, 64 input channels, 1 thread", "",
        f"Produced by `bench/fig5.py` on {platform.machine()} ({os.cpu_count()} cores), Python "
        f"{platform.python_version()}, " + ", ".join(f"{k} {v}" for k, v in versions.items()) + f". Load average "
        f"{load_before[0]:.1f} before / {load_after[0]:.1f} after (ratios come from the same "
        "interleaved rounds).",
        f"ms per batch of {BATCH} tiles {TILE}x{TILE} (one call per tile), median (min); {args.rounds} rounds. "
        "Fixed FLOPs: every bank 64->64 (params k x). Fixed model size: every bank 64->64/k (params of one 64->64).",
        "eqM = dense conv of one bank's MACs; eqP = dense conv with all banks' parameters (k*Cout outputs); "
        "outmix = output mixing; dispatch = host picks the tile's bank program (uniform random routing).", "",
        "| setting | dtype | k | eqM | eqP | output mix | dispatch | dispatch / eqP | dispatch / eqM |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(r, v):
        return f"{r[v][1]:.1f} ({r[v][0]:.1f})" if v in r else "-"

    for r in rows:
        disp = r.get("dispatch")
        lines.append(f"| {'fixed FLOPs' if r['setting'] == 'flops' else 'fixed size'} | {r['dtype']} | {r['k']} | "
                     f"{cell(r, 'eqM')} | {cell(r, 'eqP')} | {cell(r, 'outmix')} | {cell(r, 'dispatch')} | "
                     f"{(disp[1] / r['eqP'][1]) if disp else 1:.2f} | {(disp[1] / r['eqM'][1]) if disp else 1:.2f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
