"""The evaluation loop shared by `nsr-edge eval` (PyTorch models) and artifact validation (edge runtimes).

An image goes: degraded input (datasets.make_input) -> tiled inference (tiling.run_tiled) -> 8-bit rounding ->
task metrics with the published conventions. What runs the tiles is a plain function, so the same loop measures an
eager model, a .pte, a .tflite or a Core ML evaluator. numpy only.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .datasets import EvalPair, make_input
from .images import to_uint8
from .metrics import psnr, psnr_rgb, psnr_y, rgb_to_y8, ssim, ssim_y
from .tasks import TaskSpec
from .tiling import TileSpec, run_tiled

TileFn = Callable[[np.ndarray], np.ndarray]  # float32 (B, C, T, T) -> (B, C', T*s, T*s)
ImageFn = Callable[[np.ndarray], np.ndarray]  # float32 (C, H, W) -> (C', H*s, W*s)


def task_metrics(output: np.ndarray, gt: np.ndarray, task: TaskSpec) -> dict[str, float]:
    """Published conventions per task, on uint8 HWC images.

    SR: Y (BT.601) PSNR/SSIM with `scale` px shaved, RGB PSNR with the same shave.
    Denoising / JPEG on gray images: PSNR/SSIM of the gray values themselves (reported as ``psnr_y``/``ssim_y``:
    gray is the luma); on colour images: RGB PSNR as published for CBSD68, plus Y metrics.
    """
    if task.name == "sr":
        return {"psnr_y": psnr_y(output, gt, task.shave), "ssim_y": ssim_y(output, gt, task.shave),
                "psnr_rgb": psnr_rgb(output, gt, task.shave)}
    if output.shape[-1] == 1 or output.ndim == 2:
        p = psnr(output, gt)
        return {"psnr_y": p, "ssim_y": ssim(output, gt), "psnr_rgb": p}
    y_out, y_gt = rgb_to_y8(output), rgb_to_y8(gt)
    return {"psnr_y": psnr(y_out, y_gt), "ssim_y": ssim(y_out, y_gt), "psnr_rgb": psnr(output, gt)}


def task_level(task: TaskSpec) -> float:
    """The parameter `datasets.make_input` wants: scale, noise sigma or JPEG quality."""
    return {"sr": task.scale, "denoise": task.noise, "jpeg": task.quality}[task.name]


@dataclass
class ImageResult:
    name: str
    psnr_y: float
    ssim_y: float
    psnr_rgb: float
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, float | str]:
        d = asdict(self)
        extra = d.pop("extra")
        return {**d, **extra}


@dataclass
class DatasetResult:
    dataset: str
    images: list[ImageResult]

    def mean(self, key: str) -> float:
        values = [getattr(r, key) if hasattr(r, key) else r.extra[key] for r in self.images]
        finite = [v for v in values if np.isfinite(v)]
        return float(np.mean(finite)) if finite else float("inf")

    def summary(self) -> dict[str, float | str | int]:
        return {"dataset": self.dataset, "psnr_y": round(self.mean("psnr_y"), 4),
                "ssim_y": round(self.mean("ssim_y"), 4), "psnr_rgb": round(self.mean("psnr_rgb"), 4),
                "images": len(self.images)}


def tiled(tile_fn: TileFn, spec: TileSpec, scale: int, batch_size: int | None = None) -> ImageFn:
    """An image function that runs ``tile_fn`` over the image's tiles and blends them."""
    return lambda image: run_tiled(image, tile_fn, spec, scale, batch_size)


Image = tuple[str, np.ndarray, np.ndarray]  # (name, network input float32 CHW, ground truth uint8 HWC)


def prepare(pair: EvalPair, task: TaskSpec) -> Image:
    """The degraded network input and the ground truth of one image, matched to the model's channels: a gray model
    sees the Y of an RGB image (and is scored on Y), an RGB model sees a gray image as R = G = B."""
    inp, gt = make_input(pair, task.name, task_level(task))
    inp = _match_channels(inp, task.channels)
    return pair.name, inp, _match_channels_hwc(gt, task.channels)


def task_images(task: TaskSpec, dataset: str | None = None, dataset_dir: str | None = None,
                data_dir: str | None = None, limit: int | None = None) -> tuple[str, list[Image]]:
    """(label, prepared images) of a named set (default: the task's first evaluation set) or a folder of ground-truth
    images, degraded for the task: what `validate`, `--strategy auto` and the demo run an artifact on."""
    from .datasets import list_eval_images, list_folder_images
    from .errors import UserError

    try:
        if dataset_dir:
            pairs, label = list_folder_images(dataset_dir), str(dataset_dir)
        else:
            label = dataset or task.eval_sets[0]
            pairs = list_eval_images(label, task.scale if task.name == "sr" else None, data_dir)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    images = []
    for pair in pairs[:limit] if limit else pairs:
        try:
            images.append(prepare(pair, task))
        except (ValueError, TypeError, OSError) as e:
            raise UserError(f"{pair.hr_path}: {e}") from None
    return label, images


def score_images(
    images: Iterable[Image],
    task: TaskSpec,
    restore: ImageFn,
    on_output: Callable[[str, np.ndarray, np.ndarray, np.ndarray], dict[str, Any] | None] | None = None,
) -> list[ImageResult]:
    """THE evaluation loop (`eval` and `validate` both run it): restore each image, round to 8 bit, score it with
    the task's published conventions. ``on_output(name, input, output_float_chw, gt)`` may add metrics to the row
    (the distance to a reference output) or raise (a non-finite output)."""
    results = []
    for name, inp, gt in images:
        t0 = time.perf_counter()
        out = restore(inp)
        seconds = time.perf_counter() - t0
        extra = on_output(name, inp, out, gt) if on_output else None
        out8 = to_uint8(out)
        metrics = task_metrics(out8, _match_channels_hwc(gt, out8.shape[2]), task)
        results.append(ImageResult(name, seconds=seconds, extra=extra or {}, **metrics))
    return results


def evaluate(
    dataset: str,
    pairs: Sequence[EvalPair],
    task: TaskSpec,
    restore: ImageFn,
    progress: Callable[[str], Callable[[Iterable], Iterable]] | None = None,
    on_output: Callable[[str, np.ndarray, np.ndarray, np.ndarray], dict[str, Any] | None] | None = None,
) -> DatasetResult:
    """Restore every image of a set and score it (`score_images` over the set's prepared images)."""
    items = progress(dataset)(pairs) if progress else pairs
    return DatasetResult(dataset, score_images((prepare(p, task) for p in items), task, restore, on_output))


def _match_channels(chw: np.ndarray, channels: int) -> np.ndarray:
    """Gray models on RGB sets see Y; RGB models on gray images see R = G = B."""
    if chw.shape[0] == channels:
        return chw
    if channels == 3:
        return np.repeat(chw, 3, axis=0)
    y = rgb_to_y8(to_uint8(chw))
    return (y.astype(np.float32) / 255.0)[None]


def _match_channels_hwc(gt: np.ndarray, channels: int) -> np.ndarray:
    if gt.shape[2] == channels:
        return gt
    if channels == 3:
        return np.repeat(gt, 3, axis=2)
    return rgb_to_y8(gt)[:, :, None]
