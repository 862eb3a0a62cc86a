"""Routing visualisation in the spirit of the paper's Fig. 6: which kernel bank each tile picks, per layer."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .layers import SparseConv2d
from .runtime.tiling import TileSpec, plan_tiles, split


@dataclass
class RoutingMaps:
    """Per sparse conv (with its own router): top bank and its probability for every tile."""

    layers: list[str]
    top_bank: np.ndarray  # (layers, tiles) int, bank of the first cardinal group
    confidence: np.ndarray  # (layers, tiles) float, probability of that bank
    plan: list  # tile placements
    banks: int


@torch.no_grad()
def routing_maps(model: nn.Module, image_chw: np.ndarray, spec: TileSpec) -> RoutingMaps:
    routers = [(name, m) for name, m in model.named_modules() if isinstance(m, SparseConv2d) and m.has_router]
    if not routers:
        raise UserError("this model has no sparse (routed) layers to visualise")
    tiles, plan = split(image_chw, spec)
    probs: list[torch.Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda mod, inp: probs.append(torch.softmax(mod.routing_logits(inp[0]), 1)))
             for _, m in routers]
    model.eval()
    try:
        model(torch.from_numpy(tiles))
    finally:
        for h in hooks:
            h.remove()
    stacked = torch.stack([p[:, :, 0] for p in probs])  # (layers, tiles, k), first cardinal group
    conf, top = stacked.max(-1)
    return RoutingMaps([n for n, _ in routers], top.numpy(), conf.numpy(), plan, routers[0][1].banks)


def paint(maps: RoutingMaps, layer: int, hw: tuple[int, int], spec: TileSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel bank index and confidence, painting each tile's core (later tiles over earlier ones)."""
    bank = np.full(hw, -1, dtype=np.int64)
    conf = np.zeros(hw, dtype=np.float32)
    core = spec.tile - 2 * spec.pad
    for t, p in enumerate(maps.plan):
        y0, x0 = max(p.y + spec.pad, 0), max(p.x + spec.pad, 0)
        bank[y0 : y0 + core, x0 : x0 + core] = maps.top_bank[layer, t]
        conf[y0 : y0 + core, x0 : x0 + core] = maps.confidence[layer, t]
    return bank, conf


def render(image_chw: np.ndarray, maps: RoutingMaps, spec: TileSpec, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = image_chw.shape[1:]
    n = len(maps.layers)
    cols = min(4, n + 1)
    rows = int(np.ceil((n + 1) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows * h / max(w, 1) + 0.6), squeeze=False)
    gray = image_chw.mean(0)
    rgb = np.clip(image_chw.transpose(1, 2, 0), 0, 1) if image_chw.shape[0] == 3 else gray
    axes[0, 0].imshow(rgb, cmap="gray" if rgb.ndim == 2 else None)
    axes[0, 0].set_title("input", fontsize=9)
    colors = plt.get_cmap("tab10")(np.arange(maps.banks))[:, :3]
    for i in range(n):
        ax = axes[(i + 1) // cols, (i + 1) % cols]
        bank, conf = paint(maps, i, (h, w), spec)
        overlay = colors[np.clip(bank, 0, None)] * 0.65 + gray[..., None] * 0.35
        ax.imshow(np.clip(overlay, 0, 1))
        used = np.bincount(maps.top_bank[i], minlength=maps.banks) / maps.top_bank.shape[1]
        ax.set_title(f"{maps.layers[i]}\nmean p(top) {maps.confidence[i].mean():.2f}; "
                     + " ".join(f"{u:.0%}" for u in used), fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[b]) for b in range(maps.banks)]
    fig.legend(handles, [f"bank {b}" for b in range(maps.banks)], loc="lower center", ncol=maps.banks, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    tmp = out.with_name(f".{out.name}.p{os.getpid()}-figure.tmp")  # the name runtime.files cleans up after a crash
    try:
        fig.savefig(tmp, dpi=110, format="png")
        tmp.replace(out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def tile_count(h: int, w: int, spec: TileSpec) -> int:
    return len(plan_tiles(h, w, spec))
