"""Anchors: our data, degradations and metrics reproduce the published baseline rows (NSR paper, Table 4).

If one of these moves, every number this project reports moves with it. Conventions: Y = 8-bit BT.601 of the 8-bit
values, shave = scale, MATLAB-style Gaussian SSIM (11x11, sigma 1.5) -- see runtime/metrics.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from nsr_edge.runtime.datasets import list_eval_images, make_input
from nsr_edge.runtime.images import load_image, to_uint8
from nsr_edge.runtime.imresize import bicubic_upscale
from nsr_edge.runtime.metrics import evaluate_pair, psnr, ssim

# (set, scale) -> published bicubic (PSNR, SSIM)
PUBLISHED_BICUBIC = {
    ("set5", 2): (33.66, 0.9299),
    ("set5", 3): (30.39, 0.8682),
    ("set5", 4): (28.42, 0.8104),
    ("bsd100", 2): (29.56, 0.8431),
    ("bsd100", 3): (27.21, 0.7385),
    ("bsd100", 4): (25.96, 0.6675),
    ("set14", 2): (30.24, 0.8688),
    ("set14", 3): (27.55, 0.7742),
    ("set14", 4): (26.00, 0.7027),
}
# Our Set14 copy: see test_bicubic_set14. Measured with this code (shared/data/README.md gives the same PSNRs).
MEASURED_SET14_PSNR = {2: 30.316, 3: 27.628, 4: 26.089}


def bicubic_row(set_name: str, scale: int, report) -> tuple[float, float]:
    """Mean Y-PSNR / Y-SSIM of MATLAB-bicubic upscaling of the shipped LR images against the shipped HR."""
    rows = []
    for pair in list_eval_images(set_name, scale):
        lr_input, hr = make_input(pair, "sr", scale)
        m = evaluate_pair(bicubic_upscale(to_uint8(lr_input), scale), hr, scale)
        rows.append((m["psnr_y"], m["ssim_y"]))
    psnr_mean, ssim_mean = np.mean(rows, axis=0)
    report(f"bicubic {set_name} x{scale}: Y-PSNR {psnr_mean:.3f} Y-SSIM {ssim_mean:.4f}")
    return float(psnr_mean), float(ssim_mean)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("set_name", ["set5", "bsd100"])
def test_bicubic_rows(set_name, scale, data_root, report):
    """Published rows within 0.02 dB / 0.002 (measured: 0.003-0.015 dB below, SSIM within 0.0006)."""
    got_psnr, got_ssim = bicubic_row(set_name, scale, report)
    want_psnr, want_ssim = PUBLISHED_BICUBIC[(set_name, scale)]
    assert got_psnr == pytest.approx(want_psnr, abs=0.02)
    assert got_ssim == pytest.approx(want_ssim, abs=0.002)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_set14(scale, data_root, report):
    """Our Set14 copy gives ~0.08 dB more than the published 30.24 / 27.55 / 26.00 (30.316 / 27.628 / 26.089).

    A known difference between circulating copies of Set14 (shared/data/README.md): we assert our measured PSNR within
    0.02 dB and report the gap instead of tuning to it. SSIM is within 0.002 of the published rows.
    """
    got_psnr, got_ssim = bicubic_row("set14", scale, report)
    assert got_psnr == pytest.approx(MEASURED_SET14_PSNR[scale], abs=0.02)
    assert 0.05 < got_psnr - PUBLISHED_BICUBIC[("set14", scale)][0] < 0.11  # the documented copy gap
    assert got_ssim == pytest.approx(PUBLISHED_BICUBIC[("set14", scale)][1], abs=0.002)


# set -> quality -> (published PSNR, our Gaussian-window SSIM)
JPEG_ROWS = {
    "live1": {10: (27.77, 0.7730), 20: (30.07, 0.8512), 30: (31.41, 0.8851), 40: (32.35, 0.9041)},
    "classic5": {10: (27.82, 0.7595), 20: (30.12, 0.8344), 30: (31.48, 0.8666), 40: (32.43, 0.8849)},
}


@pytest.mark.parametrize("quality", [10, 20, 30, 40])
@pytest.mark.parametrize("set_name", ["live1", "classic5"])
def test_jpeg_rows(set_name, quality, data_root, report):
    """JPEG rows: Y (LIVE1) / gray (Classic5) through Pillow's libjpeg, PSNR within 0.02 dB of the published rows.

    SSIM is asserted against our own measured values (+-0.002): the published JPEG tables used another SSIM variant
    and are higher than the Gaussian-window SSIM we report (LIVE1 q10: 0.7730 here vs 0.7905 published), so we do
    not compare to them.
    """
    rows = []
    for pair in list_eval_images(set_name):
        jpeg_input, target = make_input(pair, "jpeg", quality)
        decoded = to_uint8(jpeg_input)
        rows.append((psnr(decoded, target), ssim(decoded, target)))
    got_psnr, got_ssim = np.mean(rows, axis=0)
    report(f"jpeg {set_name} q{quality}: PSNR {got_psnr:.3f} SSIM {got_ssim:.4f}")
    want_psnr, want_ssim = JPEG_ROWS[set_name][quality]
    assert got_psnr == pytest.approx(want_psnr, abs=0.02)
    assert got_ssim == pytest.approx(want_ssim, abs=0.002)


def test_classic5_palette_bmp_loads_as_gray(data_root):
    pairs = list_eval_images("classic5")
    assert len(pairs) == 5
    for pair in pairs:
        img = load_image(pair.hr_path)
        assert img.mode == "L" and (img.height, img.width) == (512, 512)
