"""PSNR / SSIM / Y conversion basics (the anchors against published tables are in test_anchors.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from nsr_edge.runtime.metrics import (
    evaluate_pair,
    gray_to_rgb,
    max_abs,
    psnr,
    psnr_rgb,
    psnr_y,
    rgb_to_y,
    rgb_to_y8,
    ssim,
    ssim_y,
)


def rand_u8(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_identical_images():
    img = rand_u8(0, (40, 50, 3))
    assert psnr(img, img) == math.inf
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    m = evaluate_pair(img, img, 2)
    assert m["psnr_y"] == math.inf and m["psnr_rgb"] == math.inf and m["ssim_y"] == pytest.approx(1.0, abs=1e-12)
    assert max_abs(img, img) == 0.0


def test_psnr_known_values():
    a = np.zeros((8, 8), np.uint8)
    b = np.ones((8, 8), np.uint8)  # MSE 1 -> 20 log10(255)
    assert psnr(a, b) == pytest.approx(20 * math.log10(255))
    c = b.copy()
    c[0, 0] = 11  # one pixel off by 11 inside a 1-px border: shave removes it
    assert psnr(a, c, shave=1) == pytest.approx(20 * math.log10(255))
    assert psnr(np.zeros(4), np.full(4, 0.5), data_range=1.0) == pytest.approx(10 * math.log10(4))
    assert max_abs(a, c) == 11.0
    with pytest.raises(ValueError):
        psnr(a, np.zeros((8, 9)))


def test_ssim_of_constant_images_is_the_luminance_term():
    a, b = np.full((20, 20), 100.0), np.full((20, 20), 120.0)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1))


def test_ssim_matches_direct_2d_window():
    """Separable filtering == MATLAB filter2(fspecial('gaussian', 11, 1.5), x, 'valid'), written out in 2-D."""
    rng = np.random.default_rng(1)
    a = rng.random((30, 27)) * 255
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    x = np.arange(11) - 5.0
    g = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * 1.5**2))
    g /= g.sum()

    def filt(z):
        return np.einsum("ijkl,kl->ij", sliding_window_view(z, (11, 11)), g)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ma, mb = filt(a), filt(b)
    va, vb, cov = filt(a * a) - ma**2, filt(b * b) - mb**2, filt(a * b) - ma * mb
    expected = np.mean(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    assert ssim(a, b) == pytest.approx(expected, rel=1e-12)
    assert ssim(a, b) == pytest.approx(ssim(b, a), rel=1e-12)
    assert 0 < ssim(a, b) < 1


def test_y_conversion():
    assert rgb_to_y(np.array([[[0, 0, 0]]], np.uint8))[0, 0] == pytest.approx(16.0)
    assert rgb_to_y(np.array([[[255, 255, 255]]], np.uint8))[0, 0] == pytest.approx(235.0)
    assert rgb_to_y(np.array([[[1.0, 1.0, 1.0]]]))[0, 0] == pytest.approx(235.0)  # floats are [0, 1]
    px = np.array([[[200, 100, 50]]], np.uint8)
    y = 16 + (65.481 * 200 + 128.553 * 100 + 24.966 * 50) / 255
    assert rgb_to_y(px)[0, 0] == pytest.approx(y)
    assert rgb_to_y8(px)[0, 0] == int(math.floor(y + 0.5)) and rgb_to_y8(px).dtype == np.uint8
    gray = rand_u8(2, (6, 7))
    np.testing.assert_array_equal(rgb_to_y(gray), rgb_to_y(gray_to_rgb(gray)))
    np.testing.assert_allclose(rgb_to_y(gray), 16 + 219 * gray.astype(np.float64) / 255.0)


def test_gray_images_evaluate_as_replicated_rgb():
    gt, out = rand_u8(3, (30, 30)), rand_u8(4, (30, 30))
    as_rgb = evaluate_pair(gray_to_rgb(out), gray_to_rgb(gt), 3)
    assert evaluate_pair(out, gt, 3) == as_rgb
    assert evaluate_pair(out[:, :, None], gt, 3) == as_rgb  # HW1 and HW are the same gray image
    assert as_rgb["psnr_rgb"] == pytest.approx(psnr(out, gt, shave=3))  # gray: the single channel


def test_shave_convention():
    gt = rand_u8(5, (24, 24, 3))
    out = gt.copy()
    out[:2] = 0  # damage only the 2-px top border
    assert evaluate_pair(out, gt, 2)["psnr_y"] == math.inf  # shave = scale
    assert evaluate_pair(out, gt, 1)["psnr_y"] < math.inf  # scale 1: no shave
    assert psnr_y(out, gt, 2) == math.inf and ssim_y(out, gt, 2) == pytest.approx(1.0)
    assert psnr_rgb(out, gt, 0) < math.inf
    with pytest.raises(TypeError):
        evaluate_pair(out.astype(np.float32), gt, 2)
