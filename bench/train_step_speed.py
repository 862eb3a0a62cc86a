"""CPU seconds per training step, eager vs `nsr-edge train --compile` (torch.compile), for the x2 zoo models.

    bench/quiet_run.sh .venv/bin/python bench/train_step_speed.py [--rounds 5] [--steps 10] [--out docs/train_speed.md]

The step is the one `nsr-edge train` runs (L1 loss, backward, Adam) on the long runs' batch (16 x 48 px, SR x2),
1 thread. Eager and compiled copies of each model are timed in interleaved rounds (process CPU time per step, so
other load on a shared machine costs less than wall time would); the compile itself is timed once, with an empty
inductor cache (a temporary TORCHINDUCTOR_CACHE_DIR: what a fresh machine pays; without it, a rerun
reuses inductor's cache under /tmp and compiles faster). Random inputs: the cost of a step does not depend on the pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

CACHE = tempfile.mkdtemp(prefix="nsr-edge-inductor.")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = CACHE  # before torch is imported: a cold compile, as on a fresh machine

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nsr_edge.checkpoint import load_checkpoint  # noqa: E402
from nsr_edge.hub import zoo_checkpoint  # noqa: E402
from nsr_edge.models import build_model  # noqa: E402

MODELS = ["nsr_sr_x2", "dense_sr_x2_eqmacs", "dense_sr_x2_eqparams"]
BATCH, PATCH = 16, 48


class Stepper:
    def __init__(self, zoo_id: str, compiled: bool):
        cfg = load_checkpoint(zoo_checkpoint(zoo_id)).config
        torch.manual_seed(0)
        self.model = build_model(cfg).train()
        self.net = torch.compile(self.model) if compiled else self.model
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.x = torch.rand(BATCH, cfg.channels, PATCH, PATCH)
        self.y = torch.rand(BATCH, cfg.channels, PATCH * cfg.scale, PATCH * cfg.scale)

    def step(self) -> None:
        loss = F.l1_loss(self.net(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def cpu_per_step(self, steps: int) -> float:
        t = time.process_time()
        for _ in range(steps):
            self.step()
        return (time.process_time() - t) / steps


def main() -> int:
    try:
        return measure()
    finally:
        shutil.rmtree(CACHE, ignore_errors=True)


def measure() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "docs" / "train_speed.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    import torch._inductor.config as inductor

    inductor.compile_threads = 1  # as `nsr-edge train --compile`
    load = os.getloadavg()[0]
    runs = {}
    for zoo_id in MODELS:
        for compiled in (False, True):
            s = Stepper(zoo_id, compiled)
            t = time.process_time()
            s.step()  # compiles (compiled) / warms up (eager)
            s.step()
            first = time.process_time() - t
            runs[(zoo_id, compiled)] = (s, first, [])
            print(f"{zoo_id} {'compiled' if compiled else 'eager'}: first two steps {first:.1f} CPU-s", flush=True)
    for r in range(args.rounds):
        for key, (s, _, times) in runs.items():
            times.append(s.cpu_per_step(args.steps))
        print(f"round {r + 1}/{args.rounds}", flush=True)
    rows = []
    for zoo_id in MODELS:
        eager, compiled = (runs[(zoo_id, c)] for c in (False, True))
        e, c = statistics.median(eager[2]), statistics.median(compiled[2])
        rows.append({"model": zoo_id, "eager_cpu_s": round(e, 3), "compiled_cpu_s": round(c, 3),
                     "speedup": round(e / c, 2), "compile_cpu_s": round(compiled[1] - 2 * c, 1)})
    after = os.getloadavg()[0]
    lines = ["# Training step cost: eager vs `--compile`", "",
             f"Produced by `bench/quiet_run.sh .venv/bin/python bench/train_step_speed.py --rounds {args.rounds} "
             f"--steps {args.steps}` on {platform.machine()} ({os.cpu_count()} cores, shared), Python "
             f"{platform.python_version()}, torch {torch.__version__}; 1 thread, batch {BATCH} x {PATCH} px (the long "
             f"runs' batch), SR x2; median over {args.rounds} interleaved rounds of {args.steps} steps, process CPU "
             f"time. Load average {load:.1f} before / {after:.1f} after.", "",
             "| model | eager CPU-s/step | compiled CPU-s/step | speed-up | compile, empty cache (CPU-s, at each start) |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| `{r['model']}` | {r['eager_cpu_s']:.3f} | {r['compiled_cpu_s']:.3f} | {r['speedup']:.2f}x | "
              f"{r['compile_cpu_s']:.0f} |" for r in rows]
    lines += ["", "Compiling happens at every start and resume of a run (less when inductor's cache under /tmp "
              "still holds the graphs); the run's recorded CPU seconds include it. With 15,000-step runs the "
              "compile is noise next to the per-step saving. The models are compiled one after the other in one "
              "process, so the later ones reuse some of the first one's kernels (a run compiles one model).", ""]
    Path(args.out).write_text("\n".join(lines))
    print(json.dumps(rows))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
