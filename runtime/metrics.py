"""Image-quality metrics with the conventions of the published SR / denoising / JPEG tables.

- Y channel: ITU-R BT.601 as MATLAB's ``rgb2ycbcr`` on uint8 images (Y = 16 + 65.481 R + 128.553 G + 24.966 B,
  RGB in [0, 1]), computed from the 8-bit RGB values and rounded to 8 bit (``rgb_to_y8``). This reproduces the
  numbers measured in shared/data/README.md to 0.001 dB; keeping Y unrounded gives +0.01..0.03 dB.
- SSIM: Wang et al.'s ``ssim_index.m``: 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255, 'valid'
  filtering, no automatic downsampling; the mean of the SSIM map.
- SR metrics shave ``scale`` pixels from every border (none at scale 1).

numpy only: this module runs on a device.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "rgb_to_y",
    "rgb_to_y8",
    "gray_to_rgb",
    "psnr",
    "psnr_y",
    "psnr_rgb",
    "ssim",
    "ssim_y",
    "max_abs",
    "evaluate_pair",
]

_BT601_Y = np.array([65.481, 128.553, 24.966]) / 255.0  # per 8-bit level


def _as_hwc(img: np.ndarray) -> np.ndarray:
    """HW or HWC -> HWC (gray becomes one channel)."""
    arr = np.asarray(img)
    if arr.ndim == 2:
        return arr[:, :, None]
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        return arr
    raise ValueError(f"expected an HW or HWC image with 1, 3 or 4 channels, got shape {arr.shape}")


def gray_to_rgb(img: np.ndarray) -> np.ndarray:
    """Replicate a gray HW/HW1 image to HW3 (how published SR evaluations treat gray images such as Set14 img_003)."""
    arr = _as_hwc(img)
    return np.repeat(arr[:, :, :1], 3, axis=2) if arr.shape[2] == 1 else arr


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma on the 0..255 scale (range 16..235), float64 HW.

    uint8 input is read as 0..255; float input is read as RGB in [0, 1] (the [0, 1] convention of MATLAB's
    ``rgb2ycbcr`` on doubles), and the result is on the 0..255 scale either way. Gray input is replicated to RGB
    first, so a gray image gives Y = 16 + 219 * g. An alpha channel, if any, is ignored.
    """
    arr = gray_to_rgb(img)[:, :, :3]
    rgb = arr.astype(np.float64) if arr.dtype == np.uint8 else arr.astype(np.float64) * 255.0
    return 16.0 + rgb @ _BT601_Y


def rgb_to_y8(img: np.ndarray) -> np.ndarray:
    """BT.601 Y rounded to uint8, as MATLAB ``rgb2ycbcr`` on a uint8 image (round half away from zero)."""
    return np.floor(np.clip(rgb_to_y(img), 0.0, 255.0) + 0.5).astype(np.uint8)


def _shave(img: np.ndarray, shave: int) -> np.ndarray:
    if shave <= 0:
        return img
    if img.shape[0] <= 2 * shave or img.shape[1] <= 2 * shave:
        raise ValueError(f"shave {shave} leaves nothing of an image of shape {img.shape}")
    return img[shave:-shave, shave:-shave]


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")


def psnr(a: np.ndarray, b: np.ndarray, shave: int = 0, data_range: float = 255.0) -> float:
    """PSNR in dB over all pixels and channels after shaving ``shave`` px per border; inf for identical images."""
    a = np.asarray(a)
    b = np.asarray(b)
    _check_pair(a, b)
    diff = _shave(a.astype(np.float64), shave) - _shave(b.astype(np.float64), shave)
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range * data_range / mse)


def psnr_y(output: np.ndarray, gt: np.ndarray, shave: int = 0) -> float:
    """PSNR on the 8-bit BT.601 Y of two uint8 RGB (or gray, replicated) images."""
    return psnr(rgb_to_y8(output), rgb_to_y8(gt), shave=shave)


def psnr_rgb(output: np.ndarray, gt: np.ndarray, shave: int = 0) -> float:
    """PSNR over the colour channels of two uint8 images (the single channel for gray; alpha ignored)."""
    a = _as_hwc(output)
    b = _as_hwc(gt)
    return psnr(a[:, :, :3], b[:, :, :3], shave=shave)


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference, in the inputs' own units."""
    a = np.asarray(a)
    b = np.asarray(b)
    _check_pair(a, b)
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    # MATLAB fspecial('gaussian', 11, 1.5) is the outer product of this normalised 1-D kernel.
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation with g x g (MATLAB filter2(w, img, 'valid'))."""
    n = len(g)
    h, w = img.shape
    rows = sum(g[k] * img[k : h - n + 1 + k] for k in range(n))
    return sum(g[k] * rows[:, k : w - n + 1 + k] for k in range(n))


def _ssim_2d(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    g = _gaussian_1d()
    if a.shape[0] < len(g) or a.shape[1] < len(g):
        raise ValueError(f"SSIM needs images of at least {len(g)}x{len(g)} pixels, got {a.shape}")
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mu_a = _filter_valid(a, g)
    mu_b = _filter_valid(b, g)
    mu_aa, mu_bb, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    var_a = _filter_valid(a * a, g) - mu_aa
    var_b = _filter_valid(b * b, g) - mu_bb
    cov = _filter_valid(a * b, g) - mu_ab
    ssim_map = ((2 * mu_ab + c1) * (2 * cov + c2)) / ((mu_aa + mu_bb + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def ssim(a: np.ndarray, b: np.ndarray, shave: int = 0, data_range: float = 255.0) -> float:
    """MATLAB-style SSIM (Wang et al. ``ssim_index.m``) of two HW or HWC images on a 0..``data_range`` scale.

    Multi-channel images give the mean of the per-channel SSIMs. Identical images give exactly 1.0.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    _check_pair(a, b)
    a3 = _shave(_as_hwc(a).astype(np.float64), shave)
    b3 = _shave(_as_hwc(b).astype(np.float64), shave)
    return float(np.mean([_ssim_2d(a3[:, :, c], b3[:, :, c], data_range) for c in range(a3.shape[2])]))


def ssim_y(output: np.ndarray, gt: np.ndarray, shave: int = 0) -> float:
    """SSIM on the 8-bit BT.601 Y of two uint8 RGB or gray images."""
    return ssim(rgb_to_y8(output), rgb_to_y8(gt), shave=shave)


def evaluate_pair(output: np.ndarray, gt: np.ndarray, scale: int = 1) -> dict[str, float]:
    """The published SR metrics for one uint8 output/ground-truth pair.

    ``psnr_y``/``ssim_y``: 8-bit BT.601 Y of the 8-bit values, ``scale`` px shaved (0 at scale 1); gray images are
    replicated to RGB first (Y = 16 + 219 g, as published evaluations of Set14 img_003 did). ``psnr_rgb``: over the
    colour channels with the same shave (the single channel for gray images).
    For the denoising/JPEG tasks compare gray (or Y) images directly with ``psnr``/``ssim``.
    """
    out = np.asarray(output)
    ref = np.asarray(gt)
    if out.dtype != np.uint8 or ref.dtype != np.uint8:
        raise TypeError("evaluate_pair expects uint8 images (round the model output first: images.to_uint8)")
    out, ref = _as_hwc(out), _as_hwc(ref)  # HW and HW1 are the same gray image
    _check_pair(out, ref)
    shave = 0 if scale == 1 else int(scale)
    return {
        "psnr_y": psnr_y(out, ref, shave),
        "ssim_y": ssim_y(out, ref, shave),
        "psnr_rgb": psnr_rgb(out, ref, shave),
    }
