"""Tiling contract: exact reconstruction, full coverage, and the reference NSR evaluation geometry."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nsr_edge.runtime.tiling import (
    REFERENCE,
    TileSpec,
    deploy_spec,
    plan_tiles,
    run_tiled,
    split,
    stitch,
    weight_map,
)

REFERENCE_FIXED = replace(REFERENCE, whole_below=0)  # the reference geometry with fixed-shape tiles at every size
SPECS = {
    "reference": REFERENCE,
    "reference_fixed": REFERENCE_FIXED,
    "deploy64": deploy_spec(64),
    "deploy128": deploy_spec(128),
    # small tiles give many tiles (and merged strip tiles) on small images
    "strips12": TileSpec(tile=12, pad=2, stride=5, edge_strips=True, edge_weight=0.3),
    "snap9_edge": TileSpec(tile=9, pad=1, stride=7, pad_mode="edge"),
    "nopad8": TileSpec(tile=8, pad=0, stride=8),
}
PROPERTY = settings(max_examples=40, deadline=None)


def nearest_up(x: np.ndarray, s: int) -> np.ndarray:
    """The 'identity model' at scale s: nearest-neighbour upsampling of the last two axes."""
    return np.repeat(np.repeat(x, s, axis=-2), s, axis=-1)


def random_image(seed: int, c: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).random((c, h, w), dtype=np.float32)


@PROPERTY
@given(
    h=st.integers(1, 200),
    w=st.integers(1, 200),
    c=st.sampled_from([1, 3]),
    scale=st.integers(1, 4),
    spec_name=st.sampled_from(sorted(SPECS)),
    batch=st.sampled_from([None, 1, 7]),
    seed=st.integers(0, 2**16),
)
def test_identity_model_reconstructs_image(h, w, c, scale, spec_name, batch, seed):
    image = random_image(seed, c, h, w)
    out = run_tiled(image, lambda t: nearest_up(t, scale), SPECS[spec_name], scale, batch_size=batch)
    expected = nearest_up(image, scale)
    assert out.shape == expected.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("spec_name", sorted(SPECS))
@pytest.mark.parametrize("hw", [(1, 1), (1, 9), (3, 7), (2, 2), (5, 1), (39, 40), (40, 40), (41, 41), (97, 131)])
@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_tiny_and_odd_sizes_exact(spec_name, hw, scale):
    image = random_image(0, 3, *hw)
    out = run_tiled(image, lambda t: nearest_up(t, scale), SPECS[spec_name], scale, batch_size=1)
    np.testing.assert_allclose(out, nearest_up(image, scale), rtol=0, atol=1e-6)


@pytest.mark.parametrize("spec", [REFERENCE_FIXED, deploy_spec(64), deploy_spec(128)])
@pytest.mark.parametrize("hw", [(1, 1), (3, 7), (40, 40), (8, 33)])
def test_image_within_one_core_is_one_tile(spec, hw):
    tiles, plan = split(random_image(1, 1, *hw), spec)
    assert tiles.shape == (1, 1, spec.tile, spec.tile) and len(plan) == 1
    (t,) = plan
    assert (t.y, t.x, t.core_y, t.core_x, t.core_h, t.core_w) == (-spec.pad, -spec.pad, 0, 0, *hw)


def test_tiny_image_padding_falls_back_to_symmetric():
    image = np.arange(3, dtype=np.float32).reshape(1, 1, 3)  # 1 x 3: reflect cannot pad 4 px on either axis
    tiles, _ = split(image, REFERENCE_FIXED)
    row = tiles[0, 0, 4]  # image row (4 px margin above)
    assert list(row[:10]) == [2, 2, 1, 0, 0, 1, 2, 2, 1, 0]  # symmetric: 2 2 1 0 | 0 1 2 | 2 1 0 ...
    assert np.all(tiles[0, 0] == tiles[0, 0, 4][None, :])  # 1-row axis: every row is the image row


def test_reflect_margins_match_torch_reflect():
    image = random_image(2, 3, 60, 70)
    tiles, plan = split(image, REFERENCE_FIXED)
    padded = np.pad(image, ((0, 0), (4, 4), (4, 4)), mode="reflect")  # == F.pad(mode="reflect")
    for tile, t in zip(tiles, plan):
        np.testing.assert_array_equal(tile, padded[:, t.y + 4 : t.y + 52, t.x + 4 : t.x + 52])


@pytest.mark.parametrize("spec_name", sorted(SPECS))
@pytest.mark.parametrize("hw", [(1, 1), (7, 300), (192, 192), (321, 481), (255, 170)])
def test_plan_covers_every_pixel(spec_name, hw):
    spec = SPECS[spec_name]
    plan = plan_tiles(*hw, spec)
    weights = weight_map(plan)
    assert weights.shape == hw and weights.min() > 0, "a pixel no tile core writes"
    # weights sum check: the map holds exactly the weighted core areas
    assert weights.sum() == pytest.approx(sum(t.weight * t.core_h * t.core_w for t in plan), rel=1e-12)
    for t in plan:
        assert 0 <= t.core_y - t.y and t.core_y + t.core_h <= t.y + t.height  # core inside its tile
        assert 0 <= t.core_x - t.x and t.core_x + t.core_w <= t.x + t.width
        assert 0 <= t.core_y and t.core_y + t.core_h <= hw[0] and 0 <= t.core_x and t.core_x + t.core_w <= hw[1]
        if min(hw) >= spec.whole_below:
            assert (t.height, t.width) == (spec.tile, spec.tile)
    assert len({(t.y, t.x) for t in plan}) == len(plan), "duplicate tile positions are merged"
    # every output pixel is written: a model that returns ones gives ones everywhere
    out = run_tiled(np.zeros((1, *hw), np.float32), lambda t: np.ones_like(t), spec)
    np.testing.assert_allclose(out, 1.0, rtol=0, atol=1e-6)


def test_whole_image_route_for_small_images_in_reference():
    image = random_image(3, 3, 100, 300)  # shorter side < 192: the reference runs it whole
    seen = []
    out = run_tiled(image, lambda t: seen.append(t.shape) or t * 2, REFERENCE)
    assert seen == [(1, 3, 100, 300)]
    np.testing.assert_allclose(out, image * 2)
    assert len(plan_tiles(192, 192, REFERENCE)) > 1


# ------------------------------------------------------------------------------ the reference, transcribed in numpy


def reference_pipeline(x: np.ndarray, fn, t: int, p: int, s: int, weight: float):
    """pt_ir common/images.py image2patches -> fn per tile -> patches2image, with F.unfold/F.fold as plain loops.

    Returns (image, out_o weight map, number of tiles). Written from the reference, independently of tiling.py.
    """
    c, h, w = x.shape
    h2 = (h + 2 * p - t) // s + 1
    w2 = (w + 2 * p - t) // s + 1
    crop_h = h + 2 * p - ((h2 - 1) * s + t)
    crop_w = w + 2 * p - ((w2 - 1) * s + t)
    xp = np.pad(x, ((0, 0), (p, p), (p, p)), mode="reflect")
    big_h, big_w = h + 2 * p, w + 2 * p

    def unfold(a):
        nh, nw = (a.shape[1] - t) // s + 1, (a.shape[2] - t) // s + 1
        return [a[:, i * s : i * s + t, j * s : j * s + t] for i in range(nh) for j in range(nw)]

    groups = [
        unfold(xp[:, crop_h // 2 : big_h - crop_h // 2, crop_w // 2 : big_w - crop_w // 2]),
        unfold(xp[:, :t, : big_w - crop_w]),
        unfold(xp[:, : big_h - crop_h, big_w - t :]),
        unfold(xp[:, big_h - t :, crop_w:]),
        unfold(xp[:, crop_h:, :t]),
    ]
    assert [len(g) for g in groups] == [h2 * w2, w2, h2, w2, h2]
    k = t - 2 * p
    outs = [[fn(tile[None])[0][:, p : t - p, p : t - p] for tile in g] for g in groups]

    out_x = np.zeros((c, h, w), np.float64)
    out_o = np.zeros((h, w), np.float64)

    def fold(cores, size_h, size_w, y0, x0, wt):
        nh, nw = (size_h - k) // s + 1, (size_w - k) // s + 1
        assert len(cores) == nh * nw
        for idx, core in enumerate(cores):
            i, j = divmod(idx, nw)
            out_x[:, y0 + i * s : y0 + i * s + k, x0 + j * s : x0 + j * s + k] += wt * core
            out_o[y0 + i * s : y0 + i * s + k, x0 + j * s : x0 + j * s + k] += wt

    fold(outs[0], h - crop_h, w - crop_w, crop_h // 2, crop_w // 2, 1.0)
    fold(outs[1], k, w - crop_w, 0, 0, weight)
    fold(outs[2], h - crop_h, k, 0, w - k, weight)
    fold(outs[3], k, w - crop_w, h - k, crop_w, weight)
    fold(outs[4], h - crop_h, k, crop_h, 0, weight)
    return out_x / out_o, out_o, sum(len(g) for g in groups)


def routed_model(tiles: np.ndarray) -> np.ndarray:
    """A stand-in for per-tile routing: the output depends on each tile's own mean, so placement matters."""
    means = tiles.astype(np.float64).mean(axis=(1, 2, 3), keepdims=True)
    return (tiles * (1.0 + means) + 0.25 * means).astype(np.float32)


REFERENCE_LIKE = [REFERENCE_FIXED, TileSpec(tile=12, pad=2, stride=5, edge_strips=True, edge_weight=0.3)]


@PROPERTY
@given(
    h=st.integers(40, 180),
    w=st.integers(40, 180),
    spec_index=st.sampled_from([0, 1]),
    seed=st.integers(0, 2**16),
)
def test_matches_reference_evaluation(h, w, spec_index, seed):
    spec = REFERENCE_LIKE[spec_index]
    image = random_image(seed, 3, h, w)
    expected, ref_weights, ref_count = reference_pipeline(
        image, routed_model, spec.tile, spec.pad, spec.stride, spec.edge_weight
    )
    plan = plan_tiles(h, w, spec)
    assert len(plan) <= ref_count  # coincident reference tiles are merged
    np.testing.assert_allclose(weight_map(plan), ref_weights, rtol=1e-12, atol=1e-12)
    out = run_tiled(image, routed_model, spec, batch_size=5)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-6)


def test_reference_tile_counts_on_known_sizes():
    # 256 x 256 LR (Set5 baby at x2): L = 264, 7 grid tiles per axis, crop 24 -> 49 + 4 * 7 strip tiles
    assert len(plan_tiles(256, 256, REFERENCE)) == 77
    # crop 0 (L = 48 + 32k): the strips coincide with the outer grid tiles and merge (weight 1.3)
    plan = plan_tiles(200, 200, REFERENCE_FIXED)  # L = 208 = 48 + 5 * 32
    assert len(plan) == 36 and {round(t.weight, 6) for t in plan} == {1.0, 1.3, 1.6}


# ---------------------------------------------------------------------------------------------- API and contracts


def test_split_then_stitch_equals_run_tiled():
    image = random_image(4, 3, 77, 131)
    spec = deploy_spec(64)
    tiles, plan = split(image, spec)
    assert tiles.dtype == np.float32 and tiles.shape == (len(plan), 3, 64, 64)
    outputs = routed_model(nearest_up(tiles, 2))
    stitched = stitch(outputs, plan, (154, 262), 2)
    direct = run_tiled(image, lambda t: routed_model(nearest_up(t, 2)), spec, 2, batch_size=3)
    np.testing.assert_allclose(stitched, direct, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="out_hw"):
        stitch(outputs, plan, (77, 131), 2)


def test_model_may_change_channel_count():
    image = random_image(5, 3, 50, 90)
    out = run_tiled(image, lambda t: nearest_up(t, 2).mean(axis=1, keepdims=True), deploy_spec(64), 2)
    np.testing.assert_allclose(out, nearest_up(image, 2).mean(axis=0, keepdims=True), atol=1e-6)


def test_wrong_output_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="expected"):
        run_tiled(random_image(6, 3, 70, 70), lambda t: t, deploy_spec(64), scale=2)


def test_progress_reports_every_batch():
    calls = []
    plan = plan_tiles(300, 200, deploy_spec(64))
    image = random_image(7, 1, 300, 200)
    run_tiled(image, lambda t: t, deploy_spec(64), batch_size=4, progress=lambda d, n: calls.append((d, n)))
    assert calls[-1] == (len(plan), len(plan)) and len(calls) == -(-len(plan) // 4)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_spec_round_trips_through_json():
    for spec in SPECS.values():
        assert TileSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert TileSpec.from_dict({"tile": 64, "pad": 4, "stride": 48}) == deploy_spec(64)
    with pytest.raises(ValueError, match="unknown"):
        TileSpec.from_dict({"tile": 64, "pad": 4, "stride": 48, "overlap": 8})


def test_presets():
    assert (REFERENCE.tile, REFERENCE.pad, REFERENCE.stride, REFERENCE.core) == (48, 4, 32, 40)
    assert REFERENCE.edge_strips and REFERENCE.edge_weight == 0.3 and REFERENCE.pad_mode == "reflect"
    assert REFERENCE.whole_below == 192
    assert (deploy_spec(64).stride, deploy_spec(128).stride) == (48, 112)
    assert deploy_spec(128, pad=8, overlap=0).stride == 112


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tile": 8, "pad": 4, "stride": 1},  # no core left
        {"tile": 48, "pad": 4, "stride": 41},  # stride > core leaves gaps
        {"tile": 48, "pad": 4, "stride": 0},
        {"tile": 48, "pad": 4, "stride": 32, "edge_weight": 0.0},
        {"tile": 48, "pad": 4, "stride": 32, "pad_mode": "wrap"},
        {"tile": 48.0, "pad": 4, "stride": 32},
    ],
)
def test_invalid_specs_rejected(kwargs):
    with pytest.raises((ValueError, TypeError)):
        TileSpec(**kwargs)
