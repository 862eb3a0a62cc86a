"""Image I/O: round trips (8/16 bit, gray, alpha, palette), safe writing, and clear errors for bad files."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nsr_edge.runtime.images import (
    ImageError,
    ImageExistsError,
    LoadedImage,
    from_uint8,
    load_image,
    save_image,
    to_uint8,
)


def rand(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, raw_rows: bytes) -> bytes:
    """A minimal PNG written by hand (for 16-bit colour files Pillow cannot write, and for lying headers)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw_rows)) + chunk(b"IEND", b"")


def like(channels: int, bit_depth: int, alpha: np.ndarray | None = None) -> LoadedImage:
    h, w = (alpha.shape if alpha is not None else (1, 1))
    return LoadedImage(np.zeros((channels, h, w), np.float32), alpha, bit_depth, "PNG", "in.png")


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("with_alpha", [False, True])
@pytest.mark.parametrize("bit_depth", [8, 16])
def test_png_round_trip(tmp_path, channels, with_alpha, bit_depth):
    data = rand(0, (channels, 9, 13))
    alpha = rand(1, (9, 13)) if with_alpha else None
    path = tmp_path / "out.png"
    save_image(path, data, like=like(channels, bit_depth, alpha))
    img = load_image(path)
    peak = 2**bit_depth - 1
    assert img.bit_depth == bit_depth and img.format == "PNG"
    assert img.mode == ("L" if channels == 1 else "RGB") + ("A" if with_alpha else "")
    assert img.data.dtype == np.float32 and img.data.shape == data.shape
    assert np.abs(img.data - data).max() <= 0.5 / peak + 1e-7  # only the quantisation step
    if with_alpha:
        assert np.abs(img.alpha - alpha).max() <= 0.5 / peak + 1e-7
    # what was read is written back bit-exactly
    save_image(tmp_path / "again.png", img.data, like=img)
    again = load_image(tmp_path / "again.png")
    np.testing.assert_array_equal(again.data, img.data)
    if with_alpha:
        np.testing.assert_array_equal(again.alpha, img.alpha)


@pytest.mark.parametrize("colour_type,channels", [(2, 3), (6, 4), (4, 2), (0, 1)])
def test_16bit_png_keeps_all_bits(tmp_path, colour_type, channels):
    """Pillow alone keeps only the high byte of 16-bit colour PNGs; we must keep both (with PNG row filters)."""
    h, w = 5, 7
    values = np.random.default_rng(2).integers(0, 65536, (h, w, channels)).astype(">u2")
    rows = []
    for r in range(h):
        raw = np.frombuffer(values[r].tobytes(), np.uint8).astype(np.int64)
        sub = raw.copy()
        sub[2 * channels :] = (raw[2 * channels :] - raw[: -2 * channels]) % 256  # "Sub" filter
        rows.append(bytes([1]) + bytes(sub.astype(np.uint8)))
    path = tmp_path / "sixteen.png"
    path.write_bytes(png_bytes(w, h, 16, colour_type, b"".join(rows)))
    img = load_image(path)
    assert img.bit_depth == 16
    colour = values[:, :, : channels - 1] if channels in (2, 4) else values
    np.testing.assert_array_equal(np.round(img.data.transpose(1, 2, 0) * 65535).astype(np.uint16), colour)
    if channels in (2, 4):
        np.testing.assert_array_equal(np.round(img.alpha * 65535).astype(np.uint16), values[:, :, -1])


def test_palette_images(tmp_path):
    gray_palette = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).convert("P")
    gray_palette.save(tmp_path / "gray.bmp")
    assert Image.open(tmp_path / "gray.bmp").mode in ("P", "L")
    img = load_image(tmp_path / "gray.bmp")
    assert img.mode == "L" and img.bit_depth == 8
    np.testing.assert_array_equal(to_uint8(img.data)[:, :, 0], np.asarray(gray_palette.convert("L")))

    colour = Image.fromarray((rand(3, (6, 6, 3)) * 255).astype(np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE)
    colour.save(tmp_path / "colour.png")
    img = load_image(tmp_path / "colour.png")
    assert img.mode == "RGB"
    np.testing.assert_array_equal(img.to_uint8(), np.asarray(colour.convert("RGB")))

    transparent = colour.copy()
    transparent.info["transparency"] = 0
    transparent.save(tmp_path / "transparent.png", transparency=0)
    assert load_image(tmp_path / "transparent.png").mode == "RGBA"


def test_palette_bmp_from_8bit_palette_file(tmp_path):
    """An 8-bit BMP with a gray colour table (how Classic5 is stored) is a gray image."""
    p = Image.new("P", (4, 3))
    p.putpalette([v for i in range(256) for v in (i, i, i)])
    p.putdata(list(range(0, 240, 20)))
    p.save(tmp_path / "c5.bmp")
    p.save(tmp_path / "c5.png")
    assert Image.open(tmp_path / "c5.png").mode == "P"  # Pillow itself reads the BMP as "L", the PNG as "P"
    for name in ("c5.bmp", "c5.png"):
        img = load_image(tmp_path / name)
        assert img.mode == "L"
        assert list(to_uint8(img.data).ravel()) == list(range(0, 240, 20))


def test_rgb_jpeg_and_bmp(tmp_path):
    data = rand(4, (3, 16, 24))
    save_image(tmp_path / "a.bmp", data)
    img = load_image(tmp_path / "a.bmp")
    assert img.mode == "RGB" and img.format == "BMP" and img.bit_depth == 8
    np.testing.assert_array_equal(img.to_uint8(), to_uint8(data))
    smooth = np.stack(np.broadcast_arrays(*np.meshgrid(np.linspace(0, 1, 24), np.linspace(0, 1, 16)), 0.5))
    save_image(tmp_path / "a.jpg", smooth, jpeg_quality=95)
    jpg = load_image(tmp_path / "a.jpg")
    assert jpg.format == "JPEG" and jpg.mode == "RGB" and np.abs(jpg.data - smooth).max() < 0.05


def test_sr_output_gets_upscaled_alpha(tmp_path):
    alpha = np.zeros((8, 8), np.float32)
    alpha[:, 4:] = 1.0
    save_image(tmp_path / "up.png", rand(5, (3, 16, 16)), like=like(3, 8, alpha))
    out = load_image(tmp_path / "up.png")
    assert out.alpha.shape == (16, 16)
    assert out.alpha[:, :6].max() < 0.05 and out.alpha[:, 10:].min() > 0.95  # bicubic, clipped to [0, 1]


def test_jpeg_output_drops_alpha_with_warning(tmp_path):
    with pytest.warns(UserWarning, match="alpha"):
        save_image(tmp_path / "a.jpg", rand(6, (3, 4, 4)), like=like(3, 8, np.ones((4, 4), np.float32)))
    assert load_image(tmp_path / "a.jpg").mode == "RGB"


def test_refuses_to_overwrite(tmp_path):
    path = tmp_path / "out.png"
    save_image(path, rand(7, (1, 4, 4)))
    before = path.read_bytes()
    with pytest.raises(ImageExistsError, match="exists") as info:
        save_image(path, rand(8, (1, 4, 4)))
    assert isinstance(info.value, FileExistsError) and isinstance(info.value, ImageError)
    assert path.read_bytes() == before
    save_image(path, rand(8, (1, 4, 4)), force=True)
    assert path.read_bytes() != before
    assert sorted(os.listdir(tmp_path)) == ["out.png"]  # no temporary files left behind


def test_write_errors_are_clear(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        save_image(tmp_path / "missing" / "a.png", rand(9, (1, 4, 4)))
    with pytest.raises(ImageError, match="cannot write"):
        save_image(tmp_path / "a.gif", rand(9, (1, 4, 4)))
    with pytest.raises(ImageError, match="CHW"):
        save_image(tmp_path / "a.png", rand(9, (2, 4, 4)))
    with pytest.raises(ImageError, match="NaN"):
        save_image(tmp_path / "a.png", np.full((1, 2, 2), np.nan, np.float32))
    with pytest.raises(ImageError, match="PNG only"):
        save_image(tmp_path / "a.jpg", rand(9, (1, 4, 4)), bit_depth=16)
    assert os.listdir(tmp_path) == []


def test_corrupt_truncated_and_missing_files(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"this is not an image" * 10)
    good = tmp_path / "good.png"
    save_image(good, rand(10, (3, 64, 64)))
    blob = good.read_bytes()
    (tmp_path / "truncated.png").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    for name, pattern in [
        ("junk.png", "not a readable"),
        ("truncated.png", "corrupt or truncated"),
        ("empty.png", "not a readable"),
        ("missing.png", "no such file"),
    ]:
        with pytest.raises(ImageError, match=pattern) as info:
            load_image(tmp_path / name)
        assert "\n" not in str(info.value) and name in str(info.value)


def test_decompression_bomb_is_refused(tmp_path):
    bomb = tmp_path / "bomb.png"
    row = b"\x00" + bytes(40000)  # a header claiming 40000 x 40000 gray (1.6 GP), with a single tiny row of data
    bomb.write_bytes(png_bytes(40000, 40000, 8, 0, row))
    with pytest.raises(ImageError, match="decompression bomb|more than"):
        load_image(bomb)
    small = tmp_path / "small.png"
    save_image(small, rand(11, (1, 20, 20)))
    with pytest.raises(ImageError, match="more than 100 pixels"):
        load_image(small, max_pixels=100)
    assert load_image(small, max_pixels=400).height == 20
    assert Image.MAX_IMAGE_PIXELS == 89478485 or Image.MAX_IMAGE_PIXELS is not None  # global limit restored


def test_pillow_bomb_warning_becomes_error(tmp_path):
    """Between Pillow's warning and error thresholds Pillow only warns; we refuse."""
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(300, 200, 8, 0, (b"\x00" + bytes(300)) * 200))
    with pytest.raises(ImageError):
        load_image(path, max_pixels=50_000)  # 60 000 px: above the limit, below twice it


def test_zero_size_image(tmp_path):
    path = tmp_path / "zero.png"
    path.write_bytes(png_bytes(0, 5, 8, 0, b""))
    with pytest.raises(ImageError):
        load_image(path)


def test_uint8_helpers():
    x = np.array([[[-0.1, 0.0, 0.5 / 255, 1.5 / 255, 1.0, 1.2]]], np.float32)
    assert list(to_uint8(x).ravel()) == [0, 0, 0, 2, 255, 255]  # clip, then round half to even
    img = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    np.testing.assert_array_equal(to_uint8(from_uint8(img)), img)
    assert from_uint8(img[:, :, 0]).shape == (1, 2, 4)


def test_loaded_image_path_is_kept(tmp_path):
    path = tmp_path / "p.png"
    save_image(path, rand(12, (1, 3, 3)))
    assert Path(load_image(path).path) == path
