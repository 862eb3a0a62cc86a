"""Degradations: reproducible noise, JPEG round trips, bicubic LR geometry."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from nsr_edge.runtime.degrade import (
    add_gaussian_noise,
    bicubic_lr,
    crop_to_multiple,
    jpeg_compress,
    jpeg_gray,
    noise_seed,
)
from nsr_edge.runtime.metrics import psnr, rgb_to_y8

SEED_01 = 735030092


def test_noise_seed_is_fixed_per_file_name():
    assert noise_seed("01.png") == noise_seed("/elsewhere/Set12/01.png")  # the name, not the folder
    assert noise_seed("01.png") != noise_seed("02.png")
    assert noise_seed("01.png") == int.from_bytes(hashlib.sha256(b"01.png").digest()[:4], "little")
    assert noise_seed("01.png") == SEED_01  # pinned: changing it silently changes every denoising number


def test_gaussian_noise_is_reproducible_and_unclipped():
    img = np.zeros((1, 64, 64), np.float32)
    a = add_gaussian_noise(img, 25, noise_seed("x.png"))
    b = add_gaussian_noise(img, 25, noise_seed("x.png"))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.min() < 0  # not clipped: DnCNN-style evaluation input
    assert a.std() == pytest.approx(25 / 255, rel=0.05)
    assert not np.array_equal(a, add_gaussian_noise(img, 25, noise_seed("y.png")))


def test_noise_stream_is_pinned():
    """The legacy RandomState stream is frozen by NumPy: these values must never change between versions."""
    noisy = add_gaussian_noise(np.zeros(3, np.float32), 255.0, 0)
    np.testing.assert_allclose(noisy, [1.7640524, 0.4001572, 0.978738], rtol=1e-6)


@pytest.mark.parametrize("shape", [(32, 40), (32, 40, 1), (32, 40, 3)])
def test_jpeg_compress_shapes(shape):
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    out = jpeg_compress(img, 40)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert psnr(jpeg_compress(img, 95), img) > psnr(jpeg_compress(img, 10), img)
    with pytest.raises(ValueError):
        jpeg_compress(img, 0)


def test_jpeg_gray_is_y_of_rgb():
    rgb = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(jpeg_gray(rgb), rgb_to_y8(rgb))
    gray = rgb[:, :, 0]
    assert jpeg_gray(gray) is gray and jpeg_gray(gray[:, :, None]).shape == (8, 8)


def test_bicubic_lr_crops_to_multiple():
    hr = np.random.default_rng(2).integers(0, 256, (101, 77, 3), dtype=np.uint8)
    assert crop_to_multiple(hr, 4).shape == (100, 76, 3)
    for s in (2, 3, 4):
        assert bicubic_lr(hr, s).shape == (101 // s, 77 // s, 3)
    np.testing.assert_array_equal(bicubic_lr(hr, 1), hr)
    with pytest.raises(ValueError):
        bicubic_lr(hr, 0)
