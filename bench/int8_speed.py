"""INT8 vs FP32 speed of two ExecuTorch artifacts on a loaded machine: both programs in ONE process, runs alternated.

    bench/quiet_run.sh .venv/bin/python bench/int8_speed.py FP32_DIR INT8_DIR [--pairs 300] [--threads 1] \
        [--json out.json] [--own-autogroup]

The per-variant breakdown (several INT8 recipes, Y-PSNR, per-op groups) is bench/int8_breakdown.py.

Background load slows whichever run it lands on; alternating FP32 and INT8 runs of the same tile in one process
exposes both to the same load, so the ratio of medians, the ratio of minima (the least disturbed runs) and the median
of per-pair ratios are all reported. A second pass traces a few runs of each program with ETDump and sums the
XNNPACK convolution events (the per-op time the Inspector reports inside the delegate), which is the ratio of the
kernels themselves, with the float/int8 conversions and the rest of the graph left out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nsr_edge.etdevtools import per_op_times  # noqa: E402
from nsr_edge.runtime.card import artifact_path, load_card  # noqa: E402
from nsr_edge.runtime.runners.child import RunnerProcess  # noqa: E402
from nsr_edge.runtime.runners.executorch_runner import open_session  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fp32")
    ap.add_argument("int8")
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    ap.add_argument("--own-autogroup", action="store_true",
                    help="time in a new scheduler autogroup at nice -20 (bench/dispatch.py own_autogroup)")
    args = ap.parse_args()
    if args.own_autogroup:
        from bench.dispatch import own_autogroup

        own_autogroup()
    cards = {k: load_card(d) for k, d in (("fp32", args.fp32), ("int8", args.int8))}
    paths = {k: str(artifact_path(d, cards[k])) for k, d in (("fp32", args.fp32), ("int8", args.int8))}
    # a native abort here would end this process: the INT8 program is first run once in a child, as a probe
    shape = cards["int8"].methods[0].input_shape
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    with RunnerProcess("executorch", paths["int8"], "forward", args.threads) as p:
        p.run(x)
    load0 = os.getloadavg()
    sessions = {k: open_session(paths[k], "forward", args.threads) for k in ("fp32", "int8")}
    for _ in range(args.warmup):
        for s in sessions.values():
            s.time_once(x)
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    for i in range(args.pairs):
        order = ("fp32", "int8") if i % 2 == 0 else ("int8", "fp32")  # alternate who goes first, too
        for k in order:
            times[k].append(sessions[k].time_once(x) * 1000)
    load1 = os.getloadavg()
    f, q = np.asarray(times["fp32"]), np.asarray(times["int8"])
    out = {
        "tile": shape, "threads": sessions["fp32"].threads, "pairs": args.pairs,
        "fp32_ms": {"median": float(np.median(f)), "min": float(f.min()), "p10": float(np.percentile(f, 10))},
        "int8_ms": {"median": float(np.median(q)), "min": float(q.min()), "p10": float(np.percentile(q, 10))},
        "speedup_median": float(np.median(f) / np.median(q)), "speedup_min": float(f.min() / q.min()),
        "speedup_p10": float(np.percentile(f, 10) / np.percentile(q, 10)),
        "speedup_median_of_pairs": float(np.median(f / q)),
        "load_avg_before": [round(v, 2) for v in load0], "load_avg_after": [round(v, 2) for v in load1],
        "cpus": os.cpu_count(),
    }
    for s in sessions.values():
        s.close()
    conv = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in ("fp32", "int8"):
            etdump = str(Path(tmp) / f"{k}.etdp")
            with RunnerProcess("executorch", paths[k], "forward", args.threads, etdump=etdump) as p:
                p.time(x, 20, 3)
                p.write_etdump()
            ops = per_op_times(etdump, Path(k == "fp32" and args.fp32 or args.int8) / "etrecord.bin")
            conv[k] = {"conv_ms": round(sum(o["ms"] for o in ops["ops"] if "Convolution" in o["name"]), 4),
                       "traced_total_ms": ops.get("traced_total_ms"),
                       "top": [(o["name"], o["ms"]) for o in ops["ops"][:6]]}
    out["etdump"] = conv
    if conv["int8"]["conv_ms"]:
        out["conv_speedup"] = round(conv["fp32"]["conv_ms"] / conv["int8"]["conv_ms"], 3)
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
