"""Safe image I/O for the restoration pipeline: files <-> float32 CHW arrays in [0, 1].

Why not plain ``Image.open``: user images come in every PNG flavour (8/16 bit, palette, gray, alpha), Pillow
silently reduces 16-bit colour PNGs to 8 bit, and untrusted files can be truncated, corrupt or decompression bombs.
Every failure here is one ``ImageError`` line naming the file. Writing is atomic (temporary file in the same folder,
then rename) and never overwrites an existing file unless asked to.

Conventions: colour data is CHW float32 in [0, 1] with C = 1 (gray) or 3 (RGB); alpha is kept apart (HW float32)
because the models never see it. uint8 images are HWC (gray = HW1).

numpy + Pillow only: this module runs on a device.
"""

from __future__ import annotations

import os
import struct
import tempfile
import threading
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError

__all__ = [
    "ImageError",
    "ImageExistsError",
    "LoadedImage",
    "DEFAULT_MAX_PIXELS",
    "READ_FORMATS",
    "load_image",
    "save_image",
    "to_uint8",
    "from_uint8",
]

DEFAULT_MAX_PIXELS = 100_000_000
"""Pixel limit of ``load_image`` (100 MP): larger images are refused as possible decompression bombs."""

READ_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "PPM")
"""Pillow formats ``load_image`` will parse (a small surface for untrusted files)."""

_WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}

# Pillow's decompression-bomb limit is a module global; we set it to the caller's limit only while holding this lock
# (so decodes through load_image are serialised; other Pillow users in the process may see our limit meanwhile).
_PIL_LIMIT_LOCK = threading.Lock()


class ImageError(UserError, ValueError):
    """An image cannot be read or written; the message is one line and names the file."""


class ImageExistsError(ImageError, FileExistsError):
    """``save_image`` refused to overwrite an existing file (pass ``force=True`` to replace it)."""


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded image: colour data as float32 CHW in [0, 1], alpha apart, and what the file was."""

    data: np.ndarray  # float32 (C, H, W), C = 1 (gray) or 3 (RGB), values in [0, 1]
    alpha: np.ndarray | None  # float32 (H, W) in [0, 1], or None when the file has no alpha
    bit_depth: int  # 8 or 16 bits per sample in the file
    format: str  # Pillow format name: "PNG", "JPEG", "BMP", ...
    path: str

    @property
    def mode(self) -> str:
        """Pillow-style mode of the content: "L", "LA", "RGB" or "RGBA"."""
        base = "L" if self.data.shape[0] == 1 else "RGB"
        return base + ("A" if self.alpha is not None else "")

    @property
    def is_gray(self) -> bool:
        return self.data.shape[0] == 1

    @property
    def height(self) -> int:
        return int(self.data.shape[1])

    @property
    def width(self) -> int:
        return int(self.data.shape[2])

    def to_uint8(self) -> np.ndarray:
        """Colour data as HWC uint8 (alpha not included)."""
        return to_uint8(self.data)


def to_uint8(chw: np.ndarray) -> np.ndarray:
    """float CHW in [0, 1] -> uint8 HWC: ``np.round(clip(x, 0, 1) * 255)``.

    ``np.round`` rounds halves to even; exact halves do not occur in practice for network outputs, and this is the
    rounding the PyTorch evaluation code uses (``torch.round``), so runtime and training numbers agree.
    """
    arr = np.asarray(chw, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"expected a CHW array, got shape {arr.shape}")
    return np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(1, 2, 0).copy()


def from_uint8(hwc: np.ndarray) -> np.ndarray:
    """uint8 HW or HWC -> float32 CHW in [0, 1]."""
    arr = np.asarray(hwc)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return (arr.astype(np.float32) / 255.0).transpose(2, 0, 1).copy()


# ----------------------------------------------------------------------------------------------------------- reading


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode a PNG (8/16 bit, palette, gray, alpha), JPEG, BMP (24-bit or palette), TIFF, WebP or PPM file.

    Palette images whose colours are all gray (Classic5's BMPs) load as gray. JPEG/TIFF/WebP EXIF orientation is
    applied, so the array looks like the photo does in a viewer. Raises ``ImageError`` for a missing, unreadable,
    corrupt or truncated file, an unsupported mode, a zero-size image, or more than ``max_pixels`` pixels.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageError(f"{path}: no such file")
    try:
        with _PIL_LIMIT_LOCK, warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that: make both an error at our limit.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            saved_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = max_pixels
            try:
                return _load(path, max_pixels)
            finally:
                Image.MAX_IMAGE_PIXELS = saved_limit
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: refused, more than {max_pixels} pixels (possible decompression bomb): {exc}")
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable {'/'.join(READ_FORMATS)} image") from None
    except MemoryError:
        raise ImageError(f"{path}: out of memory while decoding") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError) as exc:
        # Pillow reports broken files with any of these (SyntaxError for bad PNG chunks, OSError for truncation).
        raise ImageError(f"{path}: corrupt or truncated image ({type(exc).__name__}: {exc})") from None


def _load(path: str, max_pixels: int) -> LoadedImage:
    with Image.open(path, formats=READ_FORMATS) as im:
        fmt = im.format or "?"
        w, h = im.size
        if w <= 0 or h <= 0:
            raise ImageError(f"{path}: zero-size image ({w}x{h})")
        if w * h > max_pixels:
            raise ImageError(f"{path}: refused, {w}x{h} is more than {max_pixels} pixels")
        frames = getattr(im, "n_frames", 1)
        if frames > 1:  # animated PNG/WebP, multi-page TIFF: never silently restore only the first frame
            raise ImageError(f"{path}: holds {frames} frames or pages; save the one to restore as its own image")
        if fmt == "PNG" and _png16_rawmode(im) is not None:
            hwc = _load_png16_colour(path, im)
            return _finish(hwc, has_alpha=hwc.shape[2] in (2, 4), bit_depth=16, fmt=fmt, path=path)
        im.load()
        if fmt in ("JPEG", "TIFF", "WEBP"):
            im = ImageOps.exif_transpose(im)
        return _from_pil(im, fmt, path)


def _from_pil(im: Image.Image, fmt: str, path: str) -> LoadedImage:
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return _finish(np.asarray(im).astype(np.uint16)[:, :, None], False, 16, fmt, path)
    if mode == "I":
        # 32-bit integer gray: what older Pillow versions give for 16-bit gray PNG/TIFF.
        arr = np.asarray(im)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ImageError(f"{path}: unsupported 32-bit integer image (values outside 0..65535)")
        return _finish(arr.astype(np.uint16)[:, :, None], False, 16, fmt, path)
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        rgb = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
        if np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(rgb[:, :, 1], rgb[:, :, 2]):
            rgb = rgb[:, :, [0, 3]] if has_alpha else rgb[:, :, :1]  # gray palette (Classic5): gray image
        return _finish(rgb, has_alpha, 8, fmt, path)
    conversions = {
        "1": "L",
        "L": "L",
        "LA": "LA",
        "La": "LA",
        "RGB": "RGB",
        "RGBA": "RGBA",
        "RGBa": "RGBA",
        "RGBX": "RGB",
        "CMYK": "RGB",
        "YCbCr": "RGB",
        "LAB": "RGB",
        "HSV": "RGB",
    }
    if mode not in conversions:
        raise ImageError(f"{path}: unsupported image mode {mode!r}")
    target = conversions[mode]
    arr = np.asarray(im if mode == target else im.convert(target))
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return _finish(arr, target.endswith("A"), 8, fmt, path)


def _finish(hwc: np.ndarray, has_alpha: bool, bit_depth: int, fmt: str, path: str) -> LoadedImage:
    """Integer HWC (colour channels then optional alpha) -> LoadedImage."""
    peak = 65535.0 if bit_depth == 16 else 255.0
    data = hwc.astype(np.float32) / np.float32(peak)
    colour = data[:, :, :-1] if has_alpha else data
    alpha = data[:, :, -1].copy() if has_alpha else None
    return LoadedImage(
        data=np.ascontiguousarray(colour.transpose(2, 0, 1)), alpha=alpha, bit_depth=bit_depth, format=fmt, path=path
    )


def _png16_rawmode(im: Image.Image) -> str | None:
    """The PNG raw mode of a 16-bit colour (RGB, RGBA, gray+alpha) PNG, else None."""
    if len(im.tile) != 1:
        return None
    rawmode = im.tile[0][3] if len(im.tile[0]) > 3 else None
    rawmode = rawmode[0] if isinstance(rawmode, tuple) else rawmode
    return rawmode if rawmode in ("RGB;16B", "RGBA;16B", "LA;16B") else None


def _decode_as(path: str, rawmode: str) -> np.ndarray:
    """Decode a PNG through Pillow's own inflate + unfilter, unpacking the pixels with another raw mode."""
    with Image.open(path, formats=("PNG",)) as im:
        tile = im.tile[0]
        fields = (tile[0], tile[1], tile[2], rawmode)
        im.tile = [fields if type(tile) is tuple else type(tile)(*fields)]
        im.load()
        return np.asarray(im)


def _load_png16_colour(path: str, im: Image.Image) -> np.ndarray:
    """uint16 HWC of a 16-bit colour PNG.

    Pillow keeps only the high byte of 16-bit colour samples. Its decoder unfilters with the right 6/8-byte pixel
    stride, though, so we decode twice: the ``;16B`` unpacker gives the high bytes and the ``;16L`` unpacker (which
    takes the other byte of each sample) the low bytes. 16-bit gray+alpha (4-byte pixels) is unpacked as raw RGBA.
    """
    rawmode = _png16_rawmode(im)
    if rawmode == "LA;16B":
        b = _decode_as(path, "RGBA").astype(np.uint16)  # bytes: L hi, L lo, A hi, A lo
        return np.stack([(b[:, :, 0] << 8) | b[:, :, 1], (b[:, :, 2] << 8) | b[:, :, 3]], axis=2)
    base = rawmode.split(";")[0]
    hi = _decode_as(path, base + ";16B").astype(np.uint16)
    lo = _decode_as(path, base + ";16L").astype(np.uint16)
    return (hi << 8) | lo


# ----------------------------------------------------------------------------------------------------------- writing


def save_image(
    path: str | os.PathLike,
    chw: np.ndarray,
    like: LoadedImage | None = None,
    force: bool = False,
    *,
    bit_depth: int | None = None,
    jpeg_quality: int = 95,
) -> None:
    """Write a float CHW image in [0, 1] (C = 1 or 3) to PNG, JPEG or BMP, chosen by the file extension.

    ``like`` is the input image the result came from: its alpha channel is carried over (resized with MATLAB bicubic
    when the output is larger, e.g. after SR) and a 16-bit input gives a 16-bit PNG. ``bit_depth`` (8 or 16)
    overrides that; 16 bit is PNG only (other formats fall back to 8 bit when it came from ``like``). JPEG cannot
    store alpha: it is dropped with a warning.
    The file is written to a temporary file in the same folder and renamed into place, so a crash never leaves a
    partial image. An existing file is only replaced when ``force`` is true (else ``ImageExistsError``).
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in _WRITE_FORMATS:
        raise ImageError(f"{path}: cannot write {ext or 'extension-less'} files (use {', '.join(_WRITE_FORMATS)})")
    fmt = _WRITE_FORMATS[ext]
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ImageError(f"{path}: output folder {folder} does not exist")
    if os.path.exists(path) and not force:
        raise ImageExistsError(f"{path}: exists; refusing to overwrite (use force)")

    data = np.asarray(chw, dtype=np.float32)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or data.shape[0] not in (1, 3) or min(data.shape[1:]) < 1:
        raise ImageError(f"{path}: expected a CHW array with 1 or 3 channels, got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise ImageError(f"{path}: image contains NaN or infinite values")

    if bit_depth is None:
        depth = like.bit_depth if like is not None and fmt == "PNG" else 8
    elif bit_depth in (8, 16):
        if bit_depth == 16 and fmt != "PNG":
            raise ImageError(f"{path}: 16-bit output is PNG only")
        depth = bit_depth
    else:
        raise ImageError(f"{path}: bit_depth must be 8 or 16, got {bit_depth}")

    planes = [data[c] for c in range(data.shape[0])]
    alpha = _output_alpha(like, data.shape[1:])
    if alpha is not None and fmt == "JPEG":
        warnings.warn(f"{path}: JPEG has no alpha channel; alpha dropped", stacklevel=2)
        alpha = None
    if alpha is not None:
        planes.append(alpha)
    hwc = np.stack(planes, axis=2)
    peak = 65535.0 if depth == 16 else 255.0
    ints = np.round(np.clip(hwc, 0.0, 1.0) * peak).astype(np.uint16 if depth == 16 else np.uint8)

    if depth == 16:
        payload = _png16_bytes(ints)

        def write(f) -> None:
            f.write(payload)

    else:
        pil = Image.fromarray(ints[:, :, 0] if ints.shape[2] == 1 else ints)  # L / LA / RGB / RGBA from the shape
        options = {"quality": int(jpeg_quality)} if fmt == "JPEG" else {}

        def write(f) -> None:
            pil.save(f, format=fmt, **options)

    _atomic_write(path, write, force)


def _output_alpha(like: LoadedImage | None, out_hw: tuple[int, int]) -> np.ndarray | None:
    if like is None or like.alpha is None:
        return None
    alpha = like.alpha
    if alpha.shape != tuple(out_hw):
        from .imresize import imresize  # only needed for alpha images whose size changed

        alpha = np.clip(imresize(alpha.astype(np.float64), output_shape=out_hw), 0.0, 1.0)
    return alpha.astype(np.float32)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png16_bytes(ints: np.ndarray) -> bytes:
    """A 16-bit PNG of uint16 HWC (1: gray, 2: gray+alpha, 3: RGB, 4: RGBA): Pillow cannot write 16-bit colour."""
    h, w, c = ints.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = np.frombuffer(ints.astype(">u2").tobytes(), dtype=np.uint8).reshape(h, w * c * 2)
    bpp = 2 * c
    filtered = rows.copy()
    filtered[:, bpp:] = rows[:, bpp:] - rows[:, :-bpp]  # PNG "Sub" filter (uint8 wrap-around is the spec)
    scanlines = np.concatenate([np.ones((h, 1), np.uint8), filtered], axis=1)  # filter type byte 1 = Sub
    idat = zlib.compress(scanlines.tobytes(), 6)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    chunks = [_png_chunk(b"IHDR", ihdr)]
    step = 1 << 20
    chunks += [_png_chunk(b"IDAT", idat[i : i + step]) for i in range(0, len(idat), step)] or [_png_chunk(b"IDAT", b"")]
    chunks.append(_png_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def _atomic_write(path: str, write, force: bool) -> None:
    """Write via a temporary file in the target folder, then rename (replace only when ``force``)."""
    folder = os.path.dirname(os.path.abspath(path))
    # .<name>.p<pid>-*.tmp: what a killed write leaves is recognised (and removed) by the next run into <name>
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.p{os.getpid()}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; images are ordinary user files
        if force:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)  # atomic "create only if absent"
        except FileExistsError:
            raise ImageExistsError(f"{path}: exists; refusing to overwrite (use force)") from None
        except OSError:
            # Filesystems without hard links: re-check, then rename (a tiny race window remains there).
            if os.path.exists(path):
                raise ImageExistsError(f"{path}: exists; refusing to overwrite (use force)") from None
            os.replace(tmp, path)
    except OSError as exc:
        if isinstance(exc, ImageExistsError):
            raise
        raise ImageError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
