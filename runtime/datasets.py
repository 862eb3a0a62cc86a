"""Benchmark and training sets by name, and the (input, target) pair each task makes from an image.

The data lives in the shared read-only folder described by shared/data/README.md. Its location is, in order: the
``data_dir`` argument, the ``NSR_EDGE_DATA`` environment variable, or ``<repo>/../shared/data`` next to this
checkout.

numpy + Pillow only: this module runs on a device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .errors import UserError
from .degrade import add_gaussian_noise, bicubic_lr, crop_to_multiple, jpeg_compress, jpeg_gray, noise_seed
from .images import from_uint8, load_image
from .metrics import gray_to_rgb

__all__ = [
    "DatasetError",
    "EvalPair",
    "DATA_ENV",
    "SR_SCALES",
    "dataset_names",
    "resolve_data_dir",
    "list_eval_images",
    "list_folder_images",
    "make_input",
]

DATA_ENV = "NSR_EDGE_DATA"
SR_SCALES = (2, 3, 4)  # the x2/x3/x4 folders shipped for Set5, Set14 and BSD100
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")

Task = Literal["sr", "denoise", "jpeg"]


class DatasetError(UserError, FileNotFoundError):
    """A data folder, set or image is missing; the message says where we looked and how to point elsewhere."""


@dataclass(frozen=True)
class _Set:
    folders: tuple[str, ...]  # relative to the data folder
    paired_sr: bool = False  # shipped as x{s}/..._HR.png + ..._LR.png


_SETS: dict[str, _Set] = {
    "set5": _Set(("sr/Set5",), paired_sr=True),
    "set14": _Set(("sr/Set14",), paired_sr=True),
    "bsd100": _Set(("sr/BSD100",), paired_sr=True),
    "set12": _Set(("denoise/Set12",)),
    "bsd68": _Set(("denoise/BSD68",)),
    "cbsd68": _Set(("denoise/CBSD68",)),
    "live1": _Set(("jpeg/LIVE1",)),
    "classic5": _Set(("jpeg/Classic5",)),
    "t91": _Set(("train/T91",)),
    "bsd200": _Set(("train/BSD200",)),
    "bsd400": _Set(("train/BSD400",)),
    "sr291": _Set(("train/T91", "train/BSD200")),  # the classic "291" SR training set
    "jpeg291": _Set(("train/T91", "train/BSD200")),  # the same 291 images, used for JPEG training
    "denoise400": _Set(("train/BSD400",)),  # DnCNN's Train400
}
_ALIASES = {"b100": "bsd100"}


@dataclass(frozen=True)
class EvalPair:
    """One evaluation image: its ground truth and, for the shipped SR sets, the matching LR input."""

    name: str  # image name for reports (file stem, "_HR" dropped)
    hr_path: Path
    lr_path: Path | None = None


def dataset_names() -> list[str]:
    """Registered set names (aliases not included)."""
    return sorted(_SETS)


def _canonical(name: str) -> str:
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in _SETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())} (alias: b100)")
    return key


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data folder: ``data_dir``, else ``$NSR_EDGE_DATA``, else ``<repo>/../shared/data``; it must exist."""
    if data_dir is not None:
        root, origin = Path(data_dir), "the data_dir argument"
    elif os.environ.get(DATA_ENV):
        root, origin = Path(os.environ[DATA_ENV]), f"${DATA_ENV}"
    else:
        root, origin = Path(__file__).resolve().parent.parent.parent / "shared" / "data", "the default location"
    if not root.is_dir():
        raise DatasetError(f"data folder {root} (from {origin}) does not exist; set {DATA_ENV} or pass data_dir")
    return root


def list_eval_images(name: str, scale: int | None = None, data_dir: str | os.PathLike | None = None) -> list[EvalPair]:
    """The images of a registered set, sorted by file name.

    Set5/Set14/BSD100 need ``scale`` (2, 3 or 4) and give the shipped HR/LR pairs of that ``x{scale}`` folder (HR
    already cropped to a multiple of the scale). Other sets give HR images only (``lr_path`` None); ``scale`` is
    ignored there (``make_input`` makes the LR).
    """
    key = _canonical(name)
    entry = _SETS[key]
    root = resolve_data_dir(data_dir)
    if entry.paired_sr:
        if scale not in SR_SCALES:
            raise ValueError(f"{key} is shipped per scale: pass scale in {SR_SCALES}, got {scale}")
        folder = root / entry.folders[0] / f"x{scale}"
        _require_dir(folder, key)
        pairs = []
        for hr in sorted(folder.glob("*_HR.png")):
            lr = hr.with_name(hr.name[: -len("_HR.png")] + "_LR.png")
            if not lr.is_file():
                raise DatasetError(f"{key} x{scale}: {hr.name} has no matching {lr.name}")
            pairs.append(EvalPair(hr.name[: -len("_HR.png")], hr, lr))
        if not pairs:
            raise DatasetError(f"{key} x{scale}: no *_HR.png images in {folder}")
        return pairs
    pairs = []
    for rel in entry.folders:
        folder = root / rel
        _require_dir(folder, key)
        pairs += list_folder_images(folder)
    return pairs


def _require_dir(folder: Path, key: str) -> None:
    if not folder.is_dir():
        raise DatasetError(f"dataset {key}: folder {folder} is missing (see shared/data/README.md)")


def list_folder_images(folder: str | os.PathLike) -> list[EvalPair]:
    """Every image file of a user folder as HR-only pairs, sorted by file name; hidden and non-image files skipped."""
    path = Path(folder)
    if not path.is_dir():
        raise DatasetError(f"image folder {path} does not exist")
    files = sorted(
        p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise DatasetError(f"image folder {path} has no {'/'.join(IMAGE_EXTENSIONS)} files")
    return [EvalPair(p.stem, p, None) for p in files]


def _load_uint8(path: Path) -> np.ndarray:
    """HWC uint8 of an image file (16-bit files are rounded to 8 bit; alpha is ignored)."""
    return load_image(path).to_uint8()


def make_input(
    source: EvalPair | str | os.PathLike | np.ndarray,
    task: Task,
    level: int,
    *,
    seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(network input float32 CHW in [0, 1], ground truth uint8 HWC) for one image and task.

    ``level`` is the task's parameter: the scale for "sr", the noise sigma (0..255 scale) for "denoise", the JPEG
    quality for "jpeg". ``source`` is an ``EvalPair``, an image path, or a uint8 HW/HWC array (the HR image).

    - sr: the shipped LR when the pair has one (HR as shipped), else ``bicubic_lr`` of the HR cropped to a multiple
      of the scale. Always RGB: gray images are replicated to R = G = B like published SR evaluations (Set14 img_003).
    - denoise: the image as stored (gray sets gray, CBSD68 RGB) plus Gaussian noise seeded from the file name
      (``noise_seed``; pass ``seed`` for arrays). The noisy input is *not* clipped to [0, 1] (DnCNN-style evaluation).
    - jpeg: gray images as stored, RGB images as their 8-bit BT.601 Y; the input is the Pillow JPEG at ``quality``.
      Target and input are single-channel.
    """
    pair = _as_pair(source)
    hr = np.asarray(source) if pair is None else _load_uint8(pair.hr_path)
    if hr.dtype != np.uint8 or hr.ndim not in (2, 3):
        raise TypeError(f"expected a uint8 HW/HWC image, got {hr.dtype} {hr.shape}")
    if hr.ndim == 2:
        hr = hr[:, :, None]
    if task == "sr":
        scale = int(level)
        target = gray_to_rgb(hr)
        if pair is not None and pair.lr_path is not None:
            lr = gray_to_rgb(_load_uint8(pair.lr_path))
            if target.shape[:2] != (lr.shape[0] * scale, lr.shape[1] * scale):
                raise ValueError(
                    f"{pair.name}: HR {target.shape[:2]} is not {scale}x LR {lr.shape[:2]} (wrong scale folder?)"
                )
        else:
            target = crop_to_multiple(target, scale)
            lr = bicubic_lr(target, scale)
        return from_uint8(lr), np.ascontiguousarray(target)
    if task == "denoise":
        if seed is None:
            if pair is None:
                raise ValueError("denoise input of an array needs an explicit seed (noise_seed(file_name))")
            seed = noise_seed(pair.hr_path.name)
        return add_gaussian_noise(from_uint8(hr), float(level), seed), hr
    if task == "jpeg":
        target = jpeg_gray(hr)[:, :, None]
        return from_uint8(jpeg_compress(target, int(level))), target
    raise ValueError(f"unknown task {task!r}; use 'sr', 'denoise' or 'jpeg'")


def _as_pair(source: EvalPair | str | os.PathLike | np.ndarray) -> EvalPair | None:
    if isinstance(source, EvalPair):
        return source
    if isinstance(source, np.ndarray):
        return None
    path = Path(source)
    return EvalPair(path.stem, path, None)
