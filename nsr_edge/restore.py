"""Restore one image with a trained model, whatever its channels: what `nsr-edge upscale/denoise/deblock` compute.

A gray model restores the luma (BT.601 Y) of an RGB image and the chroma is carried over (bicubic-upscaled for SR);
an RGB model sees a gray image as R = G = B and the result is made gray again. Float CHW in [0, 1] in and out.
"""

from __future__ import annotations

import numpy as np

from .errors import UserError
from .evaluate import model_restorer
from .hub import ResolvedModel
from .models import ModelConfig
from .runtime.imresize import imresize
from .runtime.images import to_uint8
from .runtime.metrics import rgb_to_y8
from .runtime.tiling import TileSpec


DEFAULT_MAX_MEMORY_GB = 8.0
"""What `upscale`/`denoise`/`deblock`/`eval`/`visualize-routing` may allocate unless ``--max-memory-gb`` says more."""


def tile_bytes(config: ModelConfig, tile: int) -> int:
    """Estimated float32 working memory of one ``tile`` x ``tile`` tile through the network: the input, the widest
    activations of a residual block (C*wm, twice for the ReLU and the mixed kernel's output), the residual stream,
    the tail and skip convs' outputs before and after PixelShuffle. An upper-side estimate (x1.5), not a measurement."""
    per_px = config.channels + 3 * config.width + 2 * config.inner_width + 3 * config.channels * config.scale ** 2
    return int(1.5 * 4 * tile * tile * per_px)


def plan_batch(config: ModelConfig, spec: TileSpec, image_hw: tuple[int, int] | None, max_gb: float,
               batch_size: int = 16, option: str = "--tile") -> int:
    """The tile batch that fits in ``max_gb`` GiB with the image's own arrays (input, tiles, output tiles, output;
    ``image_hw`` None: not counted), at most ``batch_size``; a one-line `UserError` when not even one tile fits."""
    limit = max_gb * 2**30
    image = 0
    if image_hw is not None:
        h, w = image_hw
        c, s = config.channels, config.scale
        overlap = (spec.tile / max(1, spec.stride)) ** 2  # tiles cover the image more than once
        image = int(4 * c * h * w * ((1 + s * s) * overlap + 2 * s * s))
    per_tile = tile_bytes(config, spec.tile)
    fits = int((limit - image) // per_tile)
    if fits < 1:
        gib = (image + per_tile) / 2**30
        raise UserError(f"{option} {spec.tile} needs about {gib:.1f} GiB ({per_tile / 2**30:.2f} GiB per tile"
                        + (f", {image / 2**30:.1f} GiB for the image" if image else "")
                        + f"), more than --max-memory-gb {max_gb:g}; use a smaller tile or raise --max-memory-gb")
    return max(1, min(batch_size, fits))


def restore_image(resolved: ResolvedModel, image: np.ndarray, spec: TileSpec, batch_size: int = 16,
                  max_gb: float = DEFAULT_MAX_MEMORY_GB) -> np.ndarray:
    """``image`` float32 CHW (1 or 3 channels) -> the restored image with the same channels, ``scale`` x the size.
    Tiles run in batches of at most ``batch_size`` that fit in ``max_gb`` GiB (refused when one tile does not)."""
    batch_size = plan_batch(resolved.config, spec, image.shape[1:], max_gb, batch_size)
    channels, scale = resolved.config.channels, resolved.config.scale
    chroma, back_to_gray, data = None, False, image
    if channels == 1 and image.shape[0] == 3:
        chroma, data = image, rgb_to_y8(to_uint8(image)).astype(np.float32)[None] / 255.0
    elif channels == 3 and image.shape[0] == 1:
        data, back_to_gray = np.repeat(image, 3, axis=0), True
    result = model_restorer(resolved.build(), scale, spec, batch_size=batch_size)(data)
    if chroma is not None:
        result = merge_luma(result[0], chroma, scale)
    if back_to_gray:  # a gray input stays gray (the RGB model saw R = G = B)
        result = result.mean(0, keepdims=True)
    return np.clip(result, 0, 1)


def merge_luma(y: np.ndarray, rgb: np.ndarray, scale: int) -> np.ndarray:
    """Replace the BT.601 luma of ``rgb`` (CHW, [0, 1]; bicubic-upscaled by ``scale`` first) by the restored ``y``
    (HW, [0, 1] on the 8-bit Y scale)."""
    if scale > 1:
        rgb = np.stack([imresize(c.astype(np.float64), scale) for c in rgb]).astype(np.float32)
    r, g, b = rgb
    y_old = (16 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    delta = (y - y_old) * 255.0 / (65.481 + 128.553 + 24.966)
    return np.clip(rgb + delta[None], 0, 1)


__all__ = ["restore_image", "merge_luma", "plan_batch", "tile_bytes", "DEFAULT_MAX_MEMORY_GB"]
