"""Evaluate PyTorch models (and the classic non-learned baselines) with the shared, torch-free evaluation loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .runtime import datasets
from .runtime.evaluation import DatasetResult, ImageFn, evaluate, tiled
from .runtime.imresize import bicubic_upscale
from .runtime.images import from_uint8, to_uint8
from .runtime.tasks import TaskSpec
from .runtime.tiling import REFERENCE, TileSpec

METHODS = ("bicubic", "identity")  # non-learned baselines: bicubic upscaling; the degraded input itself


def resolve_task(base: TaskSpec | None, name: str | None, scale: int | None, noise: float | None,
                 quality: int | None, channels: int | None) -> TaskSpec:
    """Flags override what the model was trained for (e.g. a sigma-25 denoiser evaluated at sigma 15)."""
    if base is None and name is None:
        name = "sr" if scale and scale > 1 else "denoise" if noise else "jpeg" if quality else None
        if name is None:
            raise UserError("say what to evaluate: --scale S, --noise SIGMA or --jpeg Q")
    fields = dict(base.to_dict()) if base else {"name": name}
    if name:
        fields["name"] = name
    for key, value in (("scale", scale), ("noise", noise), ("quality", quality), ("channels", channels)):
        if value is not None:
            fields[key] = value
    if fields["name"] != "sr":
        fields["scale"] = 1
    fields.setdefault("channels", 3 if fields["name"] == "sr" else 1)  # gray sets for denoise/JPEG by default
    return TaskSpec(**fields)


def torch_tile_fn(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """A PyTorch module as a tiles -> tiles function on numpy NCHW float32 batches (eval mode, no grad)."""
    try:
        model.eval()
    except NotImplementedError:  # an exported (e.g. PT2E-quantized) module has no train/eval switch
        pass

    @torch.no_grad()
    def run(tiles: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(np.ascontiguousarray(tiles))).numpy()

    return run


def model_restorer(model: nn.Module, scale: int, spec: TileSpec = REFERENCE, batch_size: int | None = 64) -> ImageFn:
    return tiled(torch_tile_fn(model), spec, scale, batch_size)


def method_restorer(method: str, task: TaskSpec) -> ImageFn:
    if method == "bicubic":
        if task.name != "sr":
            raise UserError("--method bicubic is for super-resolution; use --method identity for the degraded input")
        return lambda lr: from_uint8(bicubic_upscale(to_uint8(lr), task.scale))
    if method == "identity":
        if task.name == "sr":
            raise UserError("--method identity has no meaning for SR (use bicubic)")
        return lambda x: x
    raise UserError(f"unknown method {method!r}; one of {', '.join(METHODS)}")


@dataclass
class EvalTarget:
    label: str
    restore: ImageFn


def evaluate_sets(target: EvalTarget, task: TaskSpec, sets: list[str], dataset_dirs: list[str],
                  data_dir: str | None, progress: Callable[[str], Callable[[Iterable], Iterable]] | None = None,
                  ) -> list[DatasetResult]:
    results = []
    for name in sets:
        try:
            pairs = datasets.list_eval_images(name, task.scale if task.name == "sr" else None, data_dir)
        except (ValueError, FileNotFoundError) as e:
            raise UserError(str(e)) from None
        results.append(evaluate(name, pairs, task, target.restore, progress))
    for folder in dataset_dirs:
        try:
            pairs = datasets.list_folder_images(folder)
        except (ValueError, FileNotFoundError) as e:
            raise UserError(str(e)) from None
        results.append(evaluate(folder, pairs, task, target.restore, progress))
    return results
