"""Compute cost of a model in each form: multiply-accumulates per pixel, counted from the module tree.

Every layer type we build knows its own cost for one tile (`tile_macs(h, w)`): per-pixel conv work plus the work
done once per tile (routing head, kernel mixing). Per-pixel figures therefore depend on the tile size.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .deploy import STRATEGIES, to_deploy
from .models import count_parameters


def tile_macs(model: nn.Module, h: int, w: int) -> float:
    """Multiply-accumulates of one forward pass over an ``h x w`` LR tile."""
    total = 0.0
    for module in model.children():
        if hasattr(module, "tile_macs"):
            total += module.tile_macs(h, w)
        elif isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += module.out_channels * module.in_channels // module.groups * kh * kw * h * w
        else:
            total += tile_macs(module, h, w)
    return total


def macs_per_pixel(model: nn.Module, tile: int = 48) -> float:
    """MACs per LR (input) pixel at a given tile size; per output pixel divide by scale**2."""
    return tile_macs(model, tile, tile) / (tile * tile)


def cost_summary(model: nn.Module, scale: int, tile: int = 48) -> dict[str, Any]:
    """Parameters and MACs per input and output pixel for the training form and every deploy lowering."""
    forms: dict[str, nn.Module] = {"training": model}
    is_sparse = any(hasattr(m, "banks") and hasattr(m, "mlp") for m in model.modules())
    if is_sparse:
        forms.update({s: to_deploy(model, s) for s in STRATEGIES})
    else:
        forms["deploy"] = to_deploy(model, "output-mix")  # only folds weight norm
    macs = {}
    for name, form in forms.items():
        per_in = macs_per_pixel(form, tile)
        macs[name] = {"per_input_pixel": round(per_in, 1), "per_output_pixel": round(per_in / scale**2, 1)}
    return {"params": count_parameters(model), "tile": tile, "macs_per_pixel": macs}
