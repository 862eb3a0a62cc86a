"""The reference evaluation protocol (issue 15 item 1): under the `REFERENCE` tiling a WDSR network runs as pt_ir's
`models/wdsr_nsr.py` forward does in eval mode on images of 192 px and more: the 5x5 skip conv once on the whole image
(zero padding), only the body on the 48 px tiles (4 px reflect margins, stride 32, edge strips at 0.3), stitched in
the body's output space, then PixelShuffle(body + skip). Deploy tiling still runs the whole network per tile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nsr_edge.deploy import to_deploy
from nsr_edge.evaluate import model_restorer, torch_tile_fn
from nsr_edge.models import IMAGE_MEAN, ModelConfig, build_model
from nsr_edge.runtime.tiling import REFERENCE, deploy_spec, run_tiled


def reference_forward(model, x: np.ndarray, tile=48, pad=4, stride=32, strip_weight=0.3) -> np.ndarray:
    """The reference's eval forward of one CHW image, written out with loops (independently of runtime/tiling.py).

    Tiles are cut from the mean-subtracted image reflect-padded by `pad`: a grid of n2 = (L - tile)//stride + 1
    tiles per axis starting at crop//2, and four strips of weight 0.3 (top row at columns j*stride, right column at
    rows i*stride, bottom row at columns crop + j*stride, left column at rows crop + i*stride). Each tile's body
    output keeps its core and is averaged with the tiles' weights in LR space, C*s*s channels.
    """
    s = model.config.scale
    with torch.no_grad():
        xt = torch.from_numpy(x)[None] - IMAGE_MEAN
        c, h, w = x.shape
        if min(h, w) < 4 * tile:  # the reference runs small images whole
            return (model.shuf(model.body(xt) + model.skip(xt)) + IMAGE_MEAN)[0].numpy()
        skip = model.skip(xt)[0].numpy().astype(np.float64)
        padded = torch.nn.functional.pad(xt, (pad, pad, pad, pad), mode="reflect")[0]
        big_h, big_w = h + 2 * pad, w + 2 * pad
        n_h, n_w = (big_h - tile) // stride + 1, (big_w - tile) // stride + 1
        crop_h, crop_w = big_h - ((n_h - 1) * stride + tile), big_w - ((n_w - 1) * stride + tile)
        tiles = [(crop_h // 2 + i * stride, crop_w // 2 + j * stride, 1.0) for i in range(n_h) for j in range(n_w)]
        tiles += [(0, j * stride, strip_weight) for j in range(n_w)]
        tiles += [(i * stride, big_w - tile, strip_weight) for i in range(n_h)]
        tiles += [(big_h - tile, crop_w + j * stride, strip_weight) for j in range(n_w)]
        tiles += [(crop_h + i * stride, 0, strip_weight) for i in range(n_h)]
        core = tile - 2 * pad
        acc = np.zeros_like(skip)
        weight = np.zeros((h, w))
        for y, x0, wt in tiles:
            out = model.body(padded[None, :, y : y + tile, x0 : x0 + tile])[0].numpy()
            acc[:, y : y + core, x0 : x0 + core] += wt * out[:, pad : pad + core, pad : pad + core]
            weight[y : y + core, x0 : x0 + core] += wt
        body = torch.from_numpy(acc / weight + skip).float()[None]
        return (model.shuf(body) + IMAGE_MEAN)[0].numpy()


def smooth_image(seed: int, c: int, h: int, w: int) -> np.ndarray:
    """A natural-looking test image: random values blurred, so tiles differ but borders are not pure noise."""
    rng = np.random.default_rng(seed)
    img = torch.from_numpy(rng.random((1, c, h // 4 + 2, w // 4 + 2), dtype=np.float32))
    img = torch.nn.functional.interpolate(img, size=(h, w), mode="bilinear", align_corners=False)
    return (0.1 + 0.8 * img[0]).numpy()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(ModelConfig("wdsr_nsr", 2, 3, blocks=2, width=8, width_multiplier=2.0, banks=4, cardinality=1))
    with torch.no_grad():  # a trained-like skip: reference init gives it unit gain, bias away from 0 marks padding
        m.skip[0].bias.add_(0.05)
    return m.eval()


def test_reference_scheme_reproduces_the_reference_forward(model):
    image = smooth_image(0, 3, 200, 212)  # both sides >= 192: the reference tiles it
    expected = reference_forward(model, image)
    ours = model_restorer(model, 2, REFERENCE)(image)
    assert ours.shape == expected.shape == (3, 400, 424)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=2e-5)  # the border band included

    # The old behaviour (whole network per tile) differs from the reference in a band along the border only.
    per_tile = run_tiled(image, torch_tile_fn(model), REFERENCE, 2)
    diff = np.abs(per_tile - expected).max(axis=0)
    band = 2 * 2  # the skip conv's 5x5 reach (2 LR px) at x2
    assert diff[band:-band, band:-band].max() < 2e-5
    assert diff.max() > 1e-3 and diff[:band].max() > 1e-3 and diff[:, -band:].max() > 1e-3


def test_skip_conv_in_row_bands_is_exact(model, monkeypatch):
    import nsr_edge.evaluate as ev

    image = smooth_image(5, 3, 203, 194)
    whole = model_restorer(model, 2, REFERENCE)(image)
    monkeypatch.setattr(ev, "SKIP_BAND_ROWS", 7)  # many bands, the last one short
    np.testing.assert_allclose(model_restorer(model, 2, REFERENCE)(image), whole, rtol=0, atol=1e-6)


def test_reference_scheme_on_small_images_and_deploy_forms(model):
    small = smooth_image(1, 3, 100, 230)  # a side < 192: one whole-image forward
    with torch.no_grad():
        whole = model(torch.from_numpy(small)[None])[0].numpy()
    np.testing.assert_allclose(model_restorer(model, 2, REFERENCE)(small), whole, rtol=0, atol=2e-5)
    image = smooth_image(2, 3, 196, 196)
    deployed = to_deploy(model, "output-mix")
    np.testing.assert_allclose(model_restorer(deployed, 2, REFERENCE)(image), reference_forward(model, image),
                               rtol=0, atol=5e-5)


def test_deploy_tiling_still_runs_the_whole_network_per_tile(model):
    image = smooth_image(3, 3, 200, 200)
    spec = deploy_spec(64)
    np.testing.assert_array_equal(model_restorer(model, 2, spec)(image),
                                  run_tiled(image, torch_tile_fn(model), spec, 2, 64))


def test_scale_one_models_are_unchanged_by_the_split():
    """With no skip conv (scale 1, same channels) the split is the identity: denoise/JPEG numbers do not move."""
    torch.manual_seed(1)
    m = build_model(ModelConfig("wdsr_nsr", 1, 1, blocks=1, width=8, width_multiplier=2.0, banks=2, cardinality=1))
    image = smooth_image(4, 1, 192, 200)
    np.testing.assert_allclose(model_restorer(m, 1, REFERENCE)(image), run_tiled(image, torch_tile_fn(m), REFERENCE),
                               rtol=0, atol=1e-5)
