"""Helpers shared by the sub-command modules: option types that range-check at parse time (one place for every
numeric option) and data-set preflight. The output rules every writing command follows live in `runtime.files`."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any, Callable


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


# ------------------------------------------------------------------------------------------- range-checked options
# argparse reports a type error as "argument --tile: <message>"; cli.NsrArgumentParser.error turns that into
# "--tile must be an integer in 24..4096, got 0" (one line).


def _range_text(lo: float | None, hi: float | None, lo_open: bool = False) -> str:
    if lo is not None and hi is not None and not lo_open:
        return f"in {lo:g}..{hi:g}"
    parts = [f"{'>' if lo_open else '>='} {lo:g}" if lo is not None else "", f"<= {hi:g}" if hi is not None else ""]
    return " and ".join(p for p in parts if p)


def int_in(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer in ``lo..hi`` (either bound may be None)."""

    def parse(text: str) -> int:
        what = f"must be an integer {_range_text(lo, hi)}"
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{what}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def float_in(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Callable[[str], float]:
    """argparse type: a finite float in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``; either bound may be None)."""

    def parse(text: str) -> float:
        rng = _range_text(lo, hi, lo_open)
        what = f"must be a finite number{' ' + rng if rng else ''}"
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}") from None
        if not math.isfinite(value) or (lo is not None and (value <= lo if lo_open else value < lo)) or (
                hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{what}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


finite_float = float_in()
"""argparse type: a float that is a number (``nan`` and ``inf`` make every comparison meaningless)."""

TILE = int_in(24, 4096)  # tile side in input pixels (context margins included); 24 px leaves an 8 px core
THREADS = int_in(1, 1024)
POSITIVE = int_in(1)
NON_NEGATIVE = int_in(0)
NON_NEGATIVE_FLOAT = float_in(0)
POSITIVE_FLOAT = float_in(0, lo_open=True)
NOISE = float_in(0, 255)  # sigma on the 0..255 scale
QUALITY = int_in(1, 100)  # JPEG quality
MAX_MEMORY_GB = float_in(0, lo_open=True)

# Architecture fields (ModelConfig checks how they combine: divisibility, total size).
SCALE = int_in(1, 8)
BLOCKS = int_in(1, 256)
WIDTH = int_in(1, 1024)
WIDTH_MULTIPLIER = float_in(0, 16, lo_open=True)
BANKS = int_in(1, 64)
CARDINALITY = int_in(1, 1024)


def add_architecture_options(p: argparse.ArgumentParser) -> None:
    """Config overrides for a preset or architecture. Names follow the reference code's flags."""
    g = p.add_argument_group("architecture options (presets and architecture names only)")
    g.add_argument("--scale", type=SCALE, help="upscaling factor 1..8 (1 for denoising / deblocking)")
    g.add_argument("--blocks", type=BLOCKS, help="number of residual blocks (1..256)")
    g.add_argument("--channels", type=WIDTH, dest="width",
                   help="residual units C (the reference's num_residual_units; 1..1024)")
    g.add_argument("--width-multiplier", type=WIDTH_MULTIPLIER, help="block expansion C -> C*wm -> C (0 < wm <= 16)")
    g.add_argument("--groups", type=BANKS, dest="banks", help="kernel banks k (the reference's num_sparsity_groups)")
    g.add_argument("--cardinality", type=CARDINALITY,
                   help="cardinal groups d (the reference's num_sparsity_cardinals; divides C and C*wm)")
    g.add_argument("--image-channels", type=int, dest="channels", choices=(1, 3), help="1 gray, 3 RGB")


def architecture_overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("scale", "blocks", "width", "width_multiplier", "banks", "cardinality", "channels")
    return {k: getattr(args, k, None) for k in keys}


def tile_spec(tile: int | None, pad: int = 4):
    """The reference 48 px scheme when no tile is given, else fixed deploy tiles; bad sizes are a user error."""
    from ..errors import UserError
    from ..runtime.tiling import REFERENCE, deploy_spec

    if tile is None:
        return REFERENCE
    try:
        return deploy_spec(tile, pad)
    except ValueError:
        raise UserError(f"--tile must be at least {4 * pad + 1} px (context margins of {pad} px and an overlap of "
                        f"{2 * pad} px on each side), got {tile}") from None


def check_dataset(name: str, what: str, data_dir: str | None = None, scale: int | None = None) -> None:
    """Preflight: the named data set exists and holds images (one line saying ``what`` it is for otherwise)."""
    from ..errors import UserError
    from ..runtime import datasets

    try:
        datasets.list_eval_images(name, scale if scale in datasets.SR_SCALES else 2, data_dir)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"{what} {name}: {e}") from None
