"""Restore one image with a trained model, whatever its channels: what `nsr-edge upscale/denoise/deblock` compute.

A gray model restores the luma (BT.601 Y) of an RGB image and the chroma is carried over (bicubic-upscaled for SR);
an RGB model sees a gray image as R = G = B and the result is made gray again. Float CHW in [0, 1] in and out.
"""

from __future__ import annotations

import numpy as np

from .evaluate import model_restorer
from .hub import ResolvedModel
from .runtime.imresize import imresize
from .runtime.images import to_uint8
from .runtime.metrics import rgb_to_y8
from .runtime.tiling import TileSpec


def restore_image(resolved: ResolvedModel, image: np.ndarray, spec: TileSpec, batch_size: int = 16) -> np.ndarray:
    """``image`` float32 CHW (1 or 3 channels) -> the restored image with the same channels, ``scale`` x the size."""
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


__all__ = ["restore_image", "merge_luma"]
