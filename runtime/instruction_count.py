"""The device side of ``nsr-edge profile --device arm-emu:CPU``: run an artifact's inference calls between
instruction-count markers (`insn_markers`) and report the guest instructions per tile, by class. Never seconds.

    python -m nsr_edge.runtime.instruction_count ARTIFACT_DIR --json [--runs N] [--tiles N] [--warmup N]
        [--threads 1] [--device-name NAME] [--transport arm-emu] [--in-process]   (device_cli's profile options)

Runs inside qemu-user with the nsr-edge plugin loaded (``-plugin insn_count.so -d plugin -D $NSR_EDGE_INSN_LOG``;
`nsr_edge.devices.arm_emu` starts it so). The runner session is opened in this process (no child processes under
qemu-user); after ``--warmup`` uncounted calls (lazy initialisation, weight packing), each of ``--tiles`` input tiles
(the stored reference tiles, ``reference.npz``, else seeded uniform noise) is run ``--runs`` times, each call alone
in one marked region: the input conversion (`Session._prepare`) and the output conversion stay outside, exactly what
``profile`` times on a real device. The plugin writes one log line per region; this module reads them back from the
log (qemu flushes each line) and prints one JSON object: ``instruction_count`` (the fields of
`card.InstructionCountRecord`, without ``device``/``recorded``, which the host fills) and ``regions`` (every counted
call). Exit codes as device_cli: 0 done, 2 one-line error.

Torch-free: numpy and the artifact's runtime only.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import insn_markers
from .errors import UserError

LOG_ENV = "NSR_EDGE_INSN_LOG"
CLASSES = ("scalar", "simd", "dot", "i8mm", "sve")
_LINE = re.compile(r"^nsr-edge-insn region (\d+) label=(\d+) (.*)$")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"bad arguments: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m nsr_edge.runtime.instruction_count", description=__doc__.split("\n\n")[0])
    p.add_argument("command", nargs="?", default="profile", choices=("profile",),
                   help="accepted so that device_cli's profile argv runs here unchanged")
    p.add_argument("artifact")
    p.add_argument("--json", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=5, help="counted calls per tile (capped at 5)")
    p.add_argument("--warmup", type=int, default=2, help="uncounted calls first (capped at 3)")
    p.add_argument("--tiles", type=int, default=int(os.environ.get("NSR_EDGE_INSN_TILES") or 2),
                   help="distinct input tiles counted (default $NSR_EDGE_INSN_TILES or 2)")
    p.add_argument("--device-name", default="arm-emu")
    p.add_argument("--transport", default="arm-emu")
    p.add_argument("--in-process", action="store_true", help="accepted: the session is always in this process")
    p.add_argument("--save-outputs")
    p.add_argument("--log", default=os.environ.get(LOG_ENV), help=f"the plugin's log (default ${LOG_ENV})")
    return p


def read_regions(path: str) -> list[dict[str, int]]:
    """The plugin's region lines: ``{"region", "label", "total", "scalar", "simd", "dot", "i8mm", "sve"}``."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = _LINE.match(line.strip())
            if m:
                row = {"region": int(m.group(1)), "label": int(m.group(2))}
                row.update({k: int(v) for k, v in (kv.split("=", 1) for kv in m.group(3).split())})
                rows.append(row)
    return rows


def input_tiles(artifact_dir: str, card: Any, shape: tuple[int, ...], n: int) -> tuple[np.ndarray, str]:
    """``n`` input tiles of ``shape[1:]``: the stored reference tiles where the card has them, else seeded noise."""
    if getattr(card, "reference_outputs", None) is not None:
        from .reference_outputs import load_reference_outputs

        inputs, _ = load_reference_outputs(artifact_dir, card)
        if tuple(inputs.shape[1:]) == tuple(shape[1:]) and len(inputs):
            reps = -(-n // len(inputs))
            return np.ascontiguousarray(np.concatenate([inputs] * reps)[:n], dtype=np.float32), "reference tiles"
    rng = np.random.default_rng(0)
    return rng.random((n, *shape[1:]), dtype=np.float32), "uniform noise (seed 0)"


def count(artifact_dir: str, threads: int = 1, runs: int = 3, warmup: int = 1, tiles: int = 2,
          log: str | None = None) -> dict[str, Any]:
    from .card import load_card, tile_spec
    from .runners import get_runner

    if not log:
        raise UserError(f"no instruction-count log: run under qemu with the nsr-edge plugin (${LOG_ENV})")
    runs, warmup, tiles = max(1, min(int(runs), 5)), max(0, min(int(warmup), 3)), max(1, int(tiles))
    card = load_card(artifact_dir)
    from .card import artifact_path

    path = str(artifact_path(artifact_dir, card))
    before = len(read_regions(log)) if os.path.exists(log) else 0
    with get_runner(card.runner).open_session(path, "forward", threads) as session:
        shape = tuple(session.input_shape)
        batch = int(shape[0])
        xs, source = input_tiles(artifact_dir, card, (1, *shape[1:]), tiles * batch)
        for _ in range(warmup):
            session._execute(session._prepare(xs[:batch]))
        prepared = [session._prepare(xs[t * batch:(t + 1) * batch]) for t in range(tiles)]
        # Python's cyclic GC would run at whatever call its allocation count triggers it (a few 100k instructions
        # landing in a different region each run): collected once, then off while counting.
        gc.collect()
        gc.disable()
        try:
            for t in range(tiles):
                for _ in range(runs):
                    insn_markers.start(t)
                    session._execute(prepared[t])
                    insn_markers.stop(t)
        finally:
            gc.enable()
        threads_used = session.threads
    regions = read_regions(log)[before:]
    if len(regions) != tiles * runs:
        raise UserError(f"the instruction-count plugin logged {len(regions)} regions, expected {tiles * runs}: "
                        "is qemu running with -plugin insn_count.so -d plugin?")
    spec = tile_spec(card)
    scale = int(card.task.scale) if hasattr(card.task, "scale") else 1
    per_call = [r["total"] for r in regions]
    # per tile: the median of its counted calls (a one-off allocator event lands in one call of one run, at a varying
    # call), then the mean over the tiles; spread: the largest (max - min) / min of one tile's calls.
    medians, spreads = {}, []
    for t in range(tiles):
        mine = [r for r in regions if r["label"] == t]
        tot = [r["total"] for r in mine]
        mid = sorted(mine, key=lambda r: r["total"])[len(mine) // 2]
        medians[t] = mid
        spreads.append((max(tot) - min(tot)) / min(tot) if min(tot) else 0.0)
    per_tile = float(np.mean([m["total"] for m in medians.values()])) / batch
    stride_out = int(spec.stride) * max(1, scale)
    classes = {c: round(float(np.mean([m.get(c, 0) for m in medians.values()]) / batch)) for c in CLASSES}
    record = {"method": "forward", "tile": int(spec.tile), "cpu": os.environ.get("NSR_EDGE_ARM_CPU", ""),
              "per_tile": round(per_tile), "per_megapixel": per_tile / (stride_out * stride_out) * 1e6,
              "runs": len(regions), "spread": float(max(spreads)), "classes": classes}
    return {"command": "profile", "kind": "instruction_count", "instruction_count": record, "regions": regions,
            "tiles": {"count": tiles, "batch": batch, "source": source, "input_shape": list(shape)},
            "threads": threads_used, "per_call_min": int(min(per_call)), "per_call_max": int(max(per_call)),
            "artifact": {"target": card.target, "recipe": card.recipe.get("name"), "strategy": card.strategy,
                         "tile": int(spec.tile), "runner": card.runner}}


def main(argv: Sequence[str] | None = None) -> int:
    from .device_cli import json_main

    def body() -> tuple[dict[str, Any], int]:
        args = build_parser().parse_args(argv)
        if args.threads != 1:
            raise UserError("instruction counts are taken with --threads 1 (the plugin's counters are shared by all "
                            "threads)")
        result = count(args.artifact, args.threads, args.runs, args.warmup, args.tiles, args.log)
        from .card import load_card
        from .device_info import describe_device, runtime_version

        card = load_card(args.artifact)
        result["device"] = describe_device(args.device_name, args.transport, runtime_version(card.runner),
                                           result["threads"], emulated=True).__dict__
        return result, 0

    return json_main(body)


if __name__ == "__main__":
    sys.exit(main())
