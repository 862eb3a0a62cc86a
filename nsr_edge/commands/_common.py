"""Helpers shared by the sub-command modules."""

from __future__ import annotations

import argparse
import json
from typing import Any


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def add_architecture_options(p: argparse.ArgumentParser) -> None:
    """Config overrides for a preset or architecture. Names follow the reference code's flags."""
    g = p.add_argument_group("architecture options (presets and architecture names only)")
    g.add_argument("--scale", type=int, help="upscaling factor (1 for denoising / deblocking)")
    g.add_argument("--blocks", type=int, help="number of residual blocks")
    g.add_argument("--channels", type=int, dest="width", help="residual units C (the reference's num_residual_units)")
    g.add_argument("--width-multiplier", type=float, help="block expansion C -> C*wm -> C")
    g.add_argument("--groups", type=int, dest="banks", help="kernel banks k (the reference's num_sparsity_groups)")
    g.add_argument("--cardinality", type=int, help="cardinal groups d (the reference's num_sparsity_cardinals)")
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
    except ValueError as e:
        raise UserError(f"--tile {tile}: {e}") from None


def finite_float(text: str) -> float:
    """argparse type: a float that is a number (``nan`` and ``inf`` make every comparison meaningless)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value
