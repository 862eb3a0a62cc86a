"""The evaluation loop shared by `nsr-edge eval` (PyTorch models) and artifact validation (edge runtimes).

An image goes: degraded input (datasets.make_input) -> tiled inference (tiling.run_tiled) -> 8-bit rounding ->
task metrics with the published conventions. What runs the tiles is a plain function, so the same loop measures an
eager model, a .pte, a .tflite or a Core ML evaluator. numpy only.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

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
    extra: dict[str, float] = field(default_factory=dict)

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


def evaluate(
    dataset: str,
    pairs: Sequence[EvalPair],
    task: TaskSpec,
    restore: ImageFn,
    progress: Callable[[str], Iterable] | None = None,
    on_output: Callable[[EvalPair, np.ndarray, np.ndarray], dict[str, float] | None] | None = None,
) -> DatasetResult:
    """Restore every image of a set and score it. ``on_output(pair, output_float_chw, gt)`` may add metrics
    (e.g. the distance to a reference output) to the image's row."""
    results = []
    items = progress(dataset)(pairs) if progress else pairs
    for pair in items:
        inp, gt = make_input(pair, task.name, task_level(task))
        inp = _match_channels(inp, task.channels)
        t0 = time.perf_counter()
        out = restore(inp)
        seconds = time.perf_counter() - t0
        out8 = to_uint8(out)
        gt = _match_channels_hwc(gt, out8.shape[2])
        metrics = task_metrics(out8, gt, task)
        extra = on_output(pair, out, gt) if on_output else None
        results.append(ImageResult(pair.name, seconds=seconds, extra=extra or {}, **metrics))
    return DatasetResult(dataset, results)


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
