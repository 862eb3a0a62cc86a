"""Degradations that make the network inputs of the three tasks, reproducibly.

- SR: MATLAB bicubic downscaling of an HR image cropped to a multiple of the scale.
- Denoising: additive white Gaussian noise on [0, 1] floats, seeded per image from its file name, left unclipped
  (DnCNN-style evaluation feeds the unclipped noisy image).
- JPEG: gray (or BT.601 Y) images through Pillow's libjpeg at a given quality, in memory.

numpy + Pillow only: this module runs on a device.
"""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np
from PIL import Image

from .imresize import bicubic_downscale
from .metrics import rgb_to_y8

__all__ = [
    "crop_to_multiple",
    "bicubic_lr",
    "noise_seed",
    "add_gaussian_noise",
    "jpeg_gray",
    "jpeg_compress",
]


def crop_to_multiple(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right of an HW/HWC image so both sides are multiples of ``scale`` (MATLAB ``modcrop``)."""
    h, w = img.shape[:2]
    if h < scale or w < scale:
        raise ValueError(f"image of {h}x{w} is smaller than the scale {scale}")
    return img[: h - h % scale, : w - w % scale]


def bicubic_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    """LR uint8 image of a uint8 HR image: ``crop_to_multiple`` then MATLAB bicubic ``imresize(hr, 1/scale)``.

    Rounds between the two resize passes like MATLAB on uint8, which reproduces the shipped ``_LR.png`` files.
    The matching HR target is ``crop_to_multiple(hr, scale)``.
    """
    if scale < 1 or int(scale) != scale:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    hr = crop_to_multiple(np.asarray(hr), int(scale))
    if scale == 1:
        return hr.copy()
    return bicubic_downscale(hr, int(scale))


def noise_seed(name: str) -> int:
    """Fixed 32-bit noise seed of an image, from the SHA-256 of its file name (the base name, UTF-8).

    Same file name -> same noise on every machine, whatever folder the set lives in.
    """
    digest = hashlib.sha256(os.path.basename(name).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little")


def add_gaussian_noise(img: np.ndarray, sigma_255: float, seed: int) -> np.ndarray:
    """``img`` (float, [0, 1]) + N(0, (sigma_255/255)^2), float32, *not* clipped.

    Uses the legacy ``np.random.RandomState`` stream, which NumPy keeps frozen across versions, so a device with
    numpy 1.26 and a host with numpy 2.x make the same noisy image for the same seed.
    """
    arr = np.asarray(img, dtype=np.float32)
    noise = np.random.RandomState(seed).standard_normal(arr.shape)
    return (arr + noise * (sigma_255 / 255.0)).astype(np.float32)


def jpeg_gray(img: np.ndarray) -> np.ndarray:
    """The image the JPEG task compresses: gray as is, RGB -> 8-bit BT.601 Y (LIVE1 is evaluated on Y)."""
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        return arr[:, :, 0]
    if arr.ndim == 2:
        return arr
    return rgb_to_y8(arr)


def jpeg_compress(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode a uint8 gray (HW/HW1) or RGB (HWC) image with Pillow's libjpeg at ``quality`` and decode it again.

    Pillow defaults otherwise (baseline, standard IJG tables scaled by quality; 4:2:0 chroma for RGB). Returns the
    decoded uint8 image with the input's shape.
    """
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected uint8, got {arr.dtype}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    squeeze = arr.ndim == 3 and arr.shape[2] == 1
    plane = arr[:, :, 0] if squeeze else arr
    if not (plane.ndim == 2 or (plane.ndim == 3 and plane.shape[2] == 3)):
        raise ValueError(f"expected a gray or RGB image, got shape {arr.shape}")
    pil = Image.fromarray(np.ascontiguousarray(plane))  # uint8 HW -> "L", HW3 -> "RGB"
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as decoded:
        out = np.asarray(decoded.convert(pil.mode)).copy()
    return out[:, :, None] if squeeze else out
