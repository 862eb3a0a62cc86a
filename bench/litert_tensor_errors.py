"""LiteRT INT8 per-tensor errors (the card's ``tensor_errors``) on a zoo model, and whether keeping the worst
int8 tensor's part in float moves Set5 Y-PSNR. No timings: accuracy only, so it needs no quiet machine.

    .venv/bin/python bench/litert_tensor_errors.py [--out out/bench-te] [--dataset set5]

Runs the CLI, as a user would (every number below comes from these commands):
  nsr-edge convert --model nsr_sr_x2 --target litert --quant int8-ptq [--fp32-parts P] --tile 64 --out DIR
  nsr-edge convert --model nsr_sr_x2_hard --target litert --strategy hard --quant int8-ptq --tile 64 --out DIR
  nsr-edge validate DIR --dataset set5 --json
for the default recipe, the hard-dispatch model, a lean recipe (``--fp32-parts routing``), that recipe plus
each part that still holds int8 tensors (the lean card's ``int8_parts``, lowest SNR first), one at a time, and the
default recipe minus each of those parts, one at a time. ``--reuse`` keeps artifacts a previous run converted with the same command. Prints
one markdown row per variant, the worst tensors of each, the machine, the versions and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PY = sys.executable

from nsr_edge.runtime.card import load_card  # noqa: E402
from nsr_edge.runtime.validate import format_tensor_errors  # noqa: E402


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cli(*args: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([PY, "-m", "nsr_edge.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"failed: nsr-edge {' '.join(args)}\n{r.stderr[-1500:]}")
    return r.stdout


def convert(out: Path, model: str, *extra: str, reuse: bool = False) -> dict:
    """The card of ``model`` converted into ``out``; with ``reuse``, the card already there if the same command
    wrote it (recorded beside the folder in ``<out>.args.json``)."""
    args = ["convert", "--model", model, "--target", "litert", "--quant", "int8-ptq", "--tile", "64", *extra]
    record = out.with_name(out.name + ".args.json")
    if not (reuse and record.is_file() and json.loads(record.read_text()) == args and (out / "model.json").is_file()):
        cli(*args, "--quiet", "--force", "--out", str(out))
        record.write_text(json.dumps(args))
    return json.loads((out / "model.json").read_text())


def _db(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _low(sigs: list[dict], key: str) -> str:
    """The lowest value of ``key`` over the signatures (hard dispatch: one per program)."""
    return _db(min((x[key] for x in sigs if x[key] is not None), default=None))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/bench-te")
    ap.add_argument("--dataset", default="set5")
    ap.add_argument("--reuse", action="store_true", help="keep artifacts a previous run converted with the same command")
    args = ap.parse_args()
    root = ROOT / args.out
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, Python "
          f"{platform.python_version()}; " + ", ".join(f"{d} {metadata.version(d)}" for d in (
              "ai-edge-quantizer", "ai-edge-litert", "litert-torch", "torch", "numpy")))
    print(f"load average at start: {load()}")
    variants = [("default", "nsr_sr_x2", ()), ("hard", "nsr_sr_x2_hard", ("--strategy", "hard")),
                ("routing", "nsr_sr_x2", ("--fp32-parts", "routing"))]
    cards = {}
    for name, model, extra in variants:
        cards[name] = convert(root / name, model, *extra, reuse=args.reuse)
    parts = cards["routing"]["tensor_errors"]["signatures"]["serving_default"]["int8_parts"]
    ranked = sorted(parts, key=lambda p: parts[p] if parts[p] is not None else float("-inf"))
    for part in ranked:  # the lean recipe plus each part that holds int8 tensors, lowest SNR first
        cards[f"routing+{part}"] = convert(root / f"routing+{part}", "nsr_sr_x2", "--fp32-parts", f"routing,{part}",
                                           reuse=args.reuse)
    default = cards["default"]["recipe"]["fp32_parts"]
    for part in ranked:  # and the default recipe minus each of them (which one is needed in float?)
        keep = ",".join(p for p in default if p != part)
        cards[f"default-{part}"] = convert(root / f"default-{part}", "nsr_sr_x2", "--fp32-parts", keep,
                                           reuse=args.reuse)
    print("\nlean recipe's int8 parts, lowest SNR first: " + ", ".join(f"{p} {_db(parts[p])} dB" for p in ranked) + "\n")
    print(f"| variant | fp32_parts | tensors (identical) | median / worst / worst int8 / output SNR dB | "
          f"{args.dataset} Y-PSNR | FP32 | drop dB | PSNR vs FP32 |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for name, card in cards.items():
        s = json.loads(cli("validate", str(root / name), "--dataset", args.dataset, "--quiet", "--json"))["summary"]
        sigs = list(card["tensor_errors"]["signatures"].values())
        med = _db(sigs[0]["median_snr_db"]) if len(sigs) == 1 else "-"
        print(f"| {name} | {','.join(card['recipe']['fp32_parts'])} | {sum(x['tensors'] for x in sigs)} "
              f"({sum(x['exact'] for x in sigs)}) | {med} / {_low(sigs, 'worst_snr_db')} / "
              f"{_low(sigs, 'worst_int8_snr_db')} / {_low(sigs, 'output_snr_db')} | {s['psnr_y']:.3f} | "
              f"{s['psnr_y_fp32']:.3f} | {s['drop_db']:.3f} | {s['psnr_vs_reference']:.2f} |")
    for name in cards:  # the table `nsr-edge validate` prints under its scores
        print(f"\n{name}:\n{format_tensor_errors(load_card(root / name).tensor_errors)}")
    print(f"\nload average at end: {load()}")


if __name__ == "__main__":
    main()
