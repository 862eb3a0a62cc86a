"""Dataset registry over the shared data folder, user folders, and the per-task (input, target) pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nsr_edge.runtime import datasets
from nsr_edge.runtime.datasets import (
    DATA_ENV,
    DatasetError,
    dataset_names,
    list_eval_images,
    list_folder_images,
    make_input,
    resolve_data_dir,
)
from nsr_edge.runtime.degrade import add_gaussian_noise, bicubic_lr, jpeg_compress, noise_seed
from nsr_edge.runtime.images import from_uint8, load_image, save_image, to_uint8
from nsr_edge.runtime.metrics import rgb_to_y8

COUNTS = {
    "set12": 12,
    "bsd68": 68,
    "cbsd68": 68,
    "live1": 29,
    "classic5": 5,
    "t91": 91,
    "bsd200": 200,
    "bsd400": 400,
    "sr291": 291,
    "jpeg291": 291,
    "denoise400": 400,
}


def test_names():
    assert set(dataset_names()) == set(COUNTS) | {"set5", "set14", "bsd100"}
    with pytest.raises(ValueError, match="unknown dataset"):
        list_eval_images("urban100")


@pytest.mark.parametrize("name,count", sorted(COUNTS.items()))
def test_set_sizes(name, count, data_root):
    pairs = list_eval_images(name)
    assert len(pairs) == count and all(p.lr_path is None and p.hr_path.is_file() for p in pairs)
    for folder in {p.hr_path.parent for p in pairs}:  # sorted by file name within each folder
        names = [p.hr_path.name for p in pairs if p.hr_path.parent == folder]
        assert names == sorted(names)


@pytest.mark.parametrize("name,count", [("set5", 5), ("set14", 14), ("bsd100", 100), ("b100", 100)])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_sr_pairs(name, count, scale, data_root):
    pairs = list_eval_images(name, scale)
    assert len(pairs) == count
    assert all(p.lr_path.name.endswith(f"_SRF_{scale}_LR.png") and p.hr_path.is_file() for p in pairs)
    assert pairs[0].name == f"img_001_SRF_{scale}"


def test_sr_sets_need_a_shipped_scale(data_root):
    with pytest.raises(ValueError, match="scale"):
        list_eval_images("set5")
    with pytest.raises(ValueError, match="scale"):
        list_eval_images("set5", 8)


def test_data_dir_resolution(tmp_path, monkeypatch, data_root):
    monkeypatch.delenv(DATA_ENV, raising=False)
    default = Path(datasets.__file__).resolve().parents[2] / "shared" / "data"  # <repo>/../shared/data
    if default.is_dir():
        assert resolve_data_dir() == default
    else:
        with pytest.raises(DatasetError, match="default location"):
            resolve_data_dir()
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert resolve_data_dir(data_root) == data_root  # the argument wins over the variable
    with pytest.raises(DatasetError, match="set5"):
        list_eval_images("set5", 2)  # the set is missing from tmp_path
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match=DATA_ENV):
        resolve_data_dir()


def test_user_folder(tmp_path):
    with pytest.raises(DatasetError, match="no"):
        list_folder_images(tmp_path)
    for name in ("b.png", "a.jpg", "c.bmp"):
        save_image(tmp_path / name, np.zeros((1, 4, 4)))
    (tmp_path / "d.PNG").write_bytes((tmp_path / "b.png").read_bytes())  # extensions in any case
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    pairs = list_folder_images(tmp_path)
    assert [p.hr_path.name for p in pairs] == ["a.jpg", "b.png", "c.bmp", "d.PNG"]
    assert [p.name for p in pairs] == ["a", "b", "c", "d"] and all(p.lr_path is None for p in pairs)
    with pytest.raises(DatasetError, match="does not exist"):
        list_folder_images(tmp_path / "missing")


def test_make_input_sr_uses_shipped_lr(data_root):
    pair = list_eval_images("set14", 3)[2]  # img_003: stored gray
    lr, hr = make_input(pair, "sr", 3)
    assert lr.dtype == np.float32 and lr.shape[0] == 3 and hr.dtype == np.uint8 and hr.shape[2] == 3
    shipped = load_image(pair.lr_path).to_uint8()
    assert shipped.shape[2] == 1
    np.testing.assert_array_equal(to_uint8(lr), np.repeat(shipped, 3, axis=2))  # gray replicated to RGB
    assert hr.shape[:2] == (lr.shape[1] * 3, lr.shape[2] * 3)


def test_make_input_sr_without_lr_makes_bicubic(tmp_path):
    hr = np.random.default_rng(0).integers(0, 256, (50, 61, 3), dtype=np.uint8)
    save_image(tmp_path / "x.png", from_uint8(hr))
    lr, target = make_input(tmp_path / "x.png", "sr", 4)
    np.testing.assert_array_equal(target, hr[:48, :60])
    np.testing.assert_array_equal(to_uint8(lr), bicubic_lr(hr, 4))
    lr2, target2 = make_input(hr, "sr", 4)  # arrays work too
    np.testing.assert_array_equal(lr2, lr)


def test_make_input_denoise(data_root):
    pair = list_eval_images("set12")[0]
    noisy, clean = make_input(pair, "denoise", 25)
    assert clean.shape == (256, 256, 1) and noisy.shape == (1, 256, 256)
    expected = add_gaussian_noise(from_uint8(clean), 25, noise_seed(pair.hr_path.name))
    np.testing.assert_array_equal(noisy, expected)
    np.testing.assert_array_equal(make_input(pair, "denoise", 25)[0], noisy)  # fixed per image
    assert noisy.min() < 0 or noisy.max() > 1  # unclipped
    colour_noisy, colour_clean = make_input(list_eval_images("cbsd68")[0], "denoise", 50)
    assert colour_noisy.shape[0] == 3 and colour_clean.shape[2] == 3
    with pytest.raises(ValueError, match="seed"):
        make_input(clean, "denoise", 25)
    assert make_input(clean, "denoise", 25, seed=1)[0].shape == (1, 256, 256)


def test_make_input_jpeg(data_root):
    pair = list_eval_images("live1")[0]
    compressed, target = make_input(pair, "jpeg", 10)
    rgb = load_image(pair.hr_path).to_uint8()
    np.testing.assert_array_equal(target[:, :, 0], rgb_to_y8(rgb))  # LIVE1 is evaluated on Y
    np.testing.assert_array_equal(to_uint8(compressed), jpeg_compress(target, 10))
    with pytest.raises(ValueError, match="task"):
        make_input(pair, "deblur", 1)
