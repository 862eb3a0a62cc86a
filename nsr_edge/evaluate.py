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
from .models import IMAGE_MEAN, WDSR
from .runtime.tiling import REFERENCE, TileSpec, run_tiled

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
    """The image function of ``model`` under the tiling ``spec``.

    Under the reference layout (``spec.edge_strips``: the ``REFERENCE`` scheme) a WDSR network (any of ours, training
    or deploy form) is run as the reference evaluates it (pt_ir ``models/wdsr_nsr.py`` in eval mode): only the body
    runs on the tiles, the 5x5 skip conv runs once on the whole image with its own zero padding, and the image is
    ``shuf(stitched body + skip)``. Any other spec (the fixed deploy tiles a device runs) and any other module run the
    whole network on every tile.
    """
    if spec.edge_strips and isinstance(model, WDSR):
        return reference_restorer(model, scale, spec, batch_size)
    return tiled(torch_tile_fn(model), spec, scale, batch_size)


def reference_restorer(model: WDSR, scale: int, spec: TileSpec = REFERENCE, batch_size: int | None = 64) -> ImageFn:
    """The reference evaluation of a WDSR network: body on the tiles, skip conv on the whole image.

    The reference stitches the body's tiles in its output space (LR positions, ``C * scale**2`` channels) and applies
    PixelShuffle after adding the skip branch; PixelShuffle only moves values, so stitching the shuffled body tiles
    (each LR pixel's weight on its ``scale x scale`` block, as ``run_tiled`` does) is the same computation. An image
    that ``spec`` runs whole (shorter side below ``whole_below``) gets ``body(x) + skip(x)`` on the whole image, i.e.
    the plain forward, as in the reference.
    """
    if int(model.config.scale) != int(scale):
        raise ValueError(f"model is x{model.config.scale}, asked to restore at x{scale}")
    model.eval()

    @torch.no_grad()
    def body(tiles: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(tiles)) - IMAGE_MEAN
        return model.shuf(model.body(x)).numpy()

    reach = sum((m.kernel_size[0] if isinstance(m.kernel_size, tuple) else m.kernel_size) // 2
                for m in model.skip.modules() if hasattr(m, "kernel_size"))

    @torch.no_grad()
    def restore(image: np.ndarray) -> np.ndarray:
        image = np.ascontiguousarray(image, dtype=np.float32)
        out = run_tiled(image, body, spec, scale, batch_size)
        h, s = image.shape[1], int(scale)
        for r0 in range(0, h, SKIP_BAND_ROWS):  # the skip conv in row bands (exact: `reach` rows of real context)
            r1 = min(h, r0 + SKIP_BAND_ROWS)
            a, b = max(0, r0 - reach), min(h, r1 + reach)
            x = torch.from_numpy(image[None, :, a:b]) - IMAGE_MEAN
            skip = model.shuf(model.skip(x))[0].numpy()
            out[:, r0 * s : r1 * s] += skip[:, (r0 - a) * s : (r1 - a) * s] + IMAGE_MEAN
        return out

    return restore


SKIP_BAND_ROWS = 256
"""The whole-image skip conv runs in bands of this many LR rows (memory: one band, not a second output image)."""


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
