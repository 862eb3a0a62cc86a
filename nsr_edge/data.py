"""Training patches: degraded/clean pairs made once per image, random aligned crops with flips and transpose.

The degradations are the evaluation ones (runtime/degrade.py), so training and evaluation agree: MATLAB-style
bicubic for SR, additive Gaussian noise (drawn per patch) for denoising, Pillow JPEG of the whole image (so the 8x8
block grid is the real one) for deblocking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .errors import UserError
from .runtime import datasets, degrade, images
from .runtime.tasks import TaskSpec

ProgressFn = Callable[[int, int], None]


@dataclass
class Pair:
    """uint8 HWC arrays: the network input (before noise for denoising) and the target, aligned up to ``scale``."""

    input: np.ndarray
    target: np.ndarray


def make_pairs(task: TaskSpec, dataset: str, data_dir: str | None = None, limit: int | None = None,
               progress: ProgressFn | None = None) -> list[Pair]:
    paths = [pair.hr_path for pair in datasets.list_eval_images(dataset, data_dir=data_dir)]
    if limit:
        paths = paths[:limit]
    pairs: list[Pair] = []
    for n, path in enumerate(paths):
        hwc = images.load_image(path).to_uint8()
        if task.channels == 1:
            hwc = degrade.jpeg_gray(hwc)[:, :, None]  # gray as is, RGB -> 8-bit BT.601 Y (as evaluated)
        elif hwc.shape[2] == 1:
            hwc = np.repeat(hwc, 3, axis=2)
        if task.name == "sr":
            hr = degrade.crop_to_multiple(hwc, task.scale)
            if min(hr.shape[:2]) < task.scale * 8:
                continue
            pairs.append(Pair(degrade.bicubic_lr(hr, task.scale), hr))
        elif task.name == "denoise":
            pairs.append(Pair(hwc, hwc))  # noise is drawn per patch
        elif task.name == "jpeg":
            pairs.append(Pair(degrade.jpeg_compress(hwc, task.quality), hwc))
        else:
            raise UserError(f"unknown task {task.name!r}")
        if progress:
            progress(n + 1, len(paths))
    if not pairs:
        raise UserError(f"no usable training images in {dataset!r}")
    return pairs


class PatchSampler:
    """Draws a batch of aligned random patches; the batch is a pure function of ``(seed, step)`` so that a
    resumed run sees exactly the data an uninterrupted one would have."""

    def __init__(self, pairs: list[Pair], task: TaskSpec, patch: int, batch: int, seed: int,
                 rank: int = 0) -> None:
        self.pairs, self.task, self.patch, self.batch, self.seed, self.rank = pairs, task, patch, batch, seed, rank
        usable = [p for p in pairs if min(p.input.shape[:2]) >= patch]
        if not usable:
            raise UserError(f"every training image is smaller than the patch size {patch}")
        self.pairs = usable

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step, self.rank])
        s, p = self.task.scale, self.patch
        xs, ys = [], []
        for _ in range(self.batch):
            pair = self.pairs[rng.integers(len(self.pairs))]
            h, w = pair.input.shape[:2]
            top, left = int(rng.integers(h - p + 1)), int(rng.integers(w - p + 1))
            x = pair.input[top : top + p, left : left + p]
            y = pair.target[top * s : (top + p) * s, left * s : (left + p) * s]
            if rng.random() < 0.5:
                x, y = x[:, ::-1], y[:, ::-1]
            if rng.random() < 0.5:
                x, y = x[::-1], y[::-1]
            if rng.random() < 0.5:
                x, y = x.transpose(1, 0, 2), y.transpose(1, 0, 2)
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y))
        x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float().div_(255.0)
        y = torch.from_numpy(np.stack(ys)).permute(0, 3, 1, 2).float().div_(255.0)
        if self.task.name == "denoise":
            noise = rng.standard_normal(size=x.shape).astype(np.float32) * (self.task.noise / 255.0)
            x = x + torch.from_numpy(noise)
        return x, y
