"""INT8 quantization shared by every target: the PT2E flow, calibrated on real training tiles, and quantization-aware
fine-tuning. A target only supplies its PT2E quantizer (`Target.pt2e_quantizer`); the recipe (converters/base.py)
says what is quantized, what stays in float and how long to calibrate or fine-tune.

Stages (each a function a test can call on its own):
- `calibration_tiles`: tiles cut through the deployment tiler from images of the task's training set (never the
  evaluation sets), the same inputs the artifact will see;
- `export_for_quant`: the deploy-form model exported with dynamic H/W (and batch for QAT), so that the quantized module
  can then be exported at every tile shape the artifact needs without calibrating again;
- `quantize_ptq`: ``prepare_pt2e`` -> calibration -> ``convert_pt2e``;
- `quantize_qat`: ``prepare_qat_pt2e`` -> calibration -> L1 fine-tuning on training pairs (checkpointed, resumable) ->
  ``convert_pt2e``.
`node_filter` maps a recipe's ``fp32_parts`` to a PT2E node filter, by the module each node came from.
"""

from __future__ import annotations

import copy
import hashlib
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .runtime.tasks import TaskSpec

def _bar(desc: str, total: int | None, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not enabled, dynamic_ncols=True, mininterval=0.5)


# --------------------------------------------------------------------------------------------- which nodes quantize


def part_names(model: nn.Module) -> dict[str, str]:
    """Module name prefixes of the fragile parts of a WDSR-style deploy model (see `converters.base.FP32_PARTS`)."""
    body = getattr(model, "body", None)
    n = len(body) if body is not None else 0
    names = {"first": "body.0", "skip": "skip.0"}
    if n:
        names["last"] = f"body.{n - 1}"
    return names


def node_filter(model: nn.Module, fp32_parts: tuple[str, ...]) -> Callable[[torch.fx.Node], bool]:
    """True for nodes that may be quantized: every node except those of the ``fp32_parts``.

    Decided from each node's ``nn_module_stack`` (kept by torch.export): ``routing`` excludes RoutingHead modules and
    the gate multiply/sum of output mixing (nodes owned directly by a DeploySparseConv), so the k bank outputs meet
    float gates; ``heads`` excludes the RoutingHead modules only (the mixing is then quantized);
    ``first``/``last``/``skip`` exclude those convs by module name; ``output`` excludes the nodes owned by the root
    module itself (input shift, body + skip add, +0.5 output add); ``residual`` excludes the add owned by
    each residual block (its identity path).
    """
    from .deploy import DeploySparseConv, RoutingHead
    from .models import ResidualBlock

    names = part_names(model)
    prefixes = tuple(names[p] for p in fp32_parts if p in names)
    routing = "routing" in fp32_parts
    heads = routing or "heads" in fp32_parts
    output = "output" in fp32_parts
    residual = "residual" in fp32_parts
    block_type = f"{ResidualBlock.__module__}.{ResidualBlock.__qualname__}"
    head_type = f"{RoutingHead.__module__}.{RoutingHead.__qualname__}"
    conv_types = {f"{c.__module__}.{c.__qualname__}" for c in _subclasses(DeploySparseConv)}

    def allowed(node: torch.fx.Node) -> bool:
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        if not stack:
            return True
        fqns = [str(v[0]) for v in stack]
        types = [str(v[1]) for v in stack]
        if output and len(stack) == 1:  # an op of the network's own forward, outside every layer
            return False
        if residual and types[-1] == block_type and "add" in str(node.target):  # the block's identity add
            return False
        if heads and head_type in types:
            return False
        # innermost module a DeploySparseConv itself: the gate matmul, the multiply and the sum over banks
        if routing and types[-1] in conv_types:
            return False
        return not any(f == p or f.startswith(p + ".") for f in fqns for p in prefixes)

    return allowed


def _subclasses(cls: type) -> list[type]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _subclasses(sub)
    return out


# --------------------------------------------------------------------------------------------------- data for INT8


def calibration_tiles(
    task: TaskSpec, tile: int, count: int, seed: int = 0, dataset: str | None = None,
    data_dir: str | None = None, progress: bool = True,
) -> np.ndarray:
    """``count`` float32 tiles (N, C, tile, tile) of network inputs cut by the deploy tiler from training images.

    Images are drawn at random (seeded), at most 4 tiles from each, so the tiles cover many images.
    """
    from .runtime import datasets, tiling

    name = dataset or task.train_set
    try:
        pairs = datasets.list_eval_images(name, task.scale if task.name == "sr" else None, data_dir)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"calibration data: {e}") from None
    if count < 1:
        raise UserError("calibration needs at least one tile (--calibration-tiles)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pairs))
    try:
        spec = tiling.deploy_spec(tile)
    except ValueError as e:
        raise UserError(str(e)) from None
    level = {"sr": task.scale, "denoise": task.noise, "jpeg": task.quality}[task.name]
    chosen: list[np.ndarray] = []
    with _bar("calibration data", count, progress) as bar:
        for i in order:
            if len(chosen) >= count:
                break
            try:
                x, _ = datasets.make_input(pairs[int(i)], task.name, level)
            except Exception as e:  # a broken training image should not stop calibration: skip it, say so
                print(f"calibration: skipping {pairs[int(i)].hr_path.name}: {e}", file=sys.stderr)
                continue
            if min(x.shape[1:]) < tile:
                continue  # no real tile in an image smaller than the tile
            if task.channels == 1 and x.shape[0] == 3:
                continue
            tiles, _ = tiling.split(x, spec)
            pick = rng.permutation(len(tiles))[: min(4, count - len(chosen))]
            chosen += [tiles[j] for j in pick]
            bar.update(len(pick))
    if not chosen:
        raise UserError(f"calibration data: no image of {name} is at least {tile}x{tile} (input pixels); "
                        "use a smaller --tile")
    return np.stack(chosen).astype(np.float32)


def export_for_quant(model: nn.Module, example: torch.Tensor, dynamic_batch: bool = False) -> torch.fx.GraphModule:
    """Export with dynamic height/width (and batch) so the quantized module re-exports at any tile shape."""
    from torch.export import Dim

    h, w = example.shape[-2:]
    dims: dict[int, Any] = {2: Dim("height", min=8, max=max(1024, h)), 3: Dim("width", min=8, max=max(1024, w))}
    if dynamic_batch:
        dims[0] = Dim("batch", min=1, max=256)
    try:
        ep = torch.export.export(model, (example,), dynamic_shapes=(dims,))
    except Exception as e:  # noqa: BLE001 - some graphs specialise a dim; then quantize at the fixed shape
        if dynamic_batch:
            raise UserError(f"cannot export the model for quantization-aware training: {str(e).splitlines()[0]}") from None
        ep = torch.export.export(model, (example,))
    return ep.module()


@torch.no_grad()
def _calibrate(prepared: torch.fx.GraphModule, tiles: np.ndarray, progress: bool, batch: int = 1) -> None:
    with _bar("calibrating", len(tiles), progress) as bar:
        for start in range(0, len(tiles), batch):
            chunk = torch.from_numpy(np.ascontiguousarray(tiles[start : start + batch]))
            prepared(chunk)
            bar.update(len(chunk))


def quantize_ptq(model: nn.Module, quantizer: Any, tiles: np.ndarray, progress: bool = True) -> torch.fx.GraphModule:
    """Post-training quantization: observe activation ranges on ``tiles`` (batch 1, as deployed), convert."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    example = torch.from_numpy(tiles[:1].copy())
    prepared = prepare_pt2e(export_for_quant(model, example), quantizer)
    _calibrate(prepared, tiles, progress)
    return convert_pt2e(prepared)


def quantize_qat(
    model: nn.Module, quantizer: Any, tiles: np.ndarray, task: TaskSpec, recipe: Any, state_dir: str | os.PathLike,
    dataset: str | None = None, data_dir: str | None = None, images: int | None = 64, progress: bool = True,
    seed: int = 0,
) -> tuple[torch.fx.GraphModule, dict[str, Any]]:
    """Quantization-aware fine-tuning: fake-quantized model, observers first calibrated on ``tiles``, then
    ``recipe.qat_steps`` Adam steps (lr ``recipe.qat_lr``, L1 to the ground truth) on batches of ``recipe.qat_batch``
    training patches of ``recipe.qat_patch`` px (0: the tile size). State is saved to ``state_dir/qat_state.pt``
    every 50 steps and on Ctrl-C;
    calling again with the same inputs resumes. Returns the converted module and a summary for the model card.
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from .data import PatchSampler, make_pairs

    tile = int(tiles.shape[-1])
    torch.manual_seed(seed)
    example = torch.from_numpy(tiles[: min(2, len(tiles))].copy())
    # export shares parameter storage with `model`: train a copy, never the caller's deploy model
    prepared = prepare_qat_pt2e(export_for_quant(copy.deepcopy(model), example, dynamic_batch=True), quantizer)
    for p in prepared.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam([p for p in prepared.parameters() if p.requires_grad], lr=recipe.qat_lr)

    state_path = Path(state_dir) / "qat_state.pt"
    fingerprint = _fingerprint(model, recipe, tile, seed)
    start = 0
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") != fingerprint:
            raise UserError(f"{state_path} belongs to another model/recipe; delete it or choose another --qat-dir")
        prepared.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        print(f"int8-qat: resuming at step {start} from {state_path}", file=sys.stderr)
    else:
        move_exported_model_to_eval(prepared)  # observers see the calibration tiles first (as PTQ would)
        _calibrate(prepared, tiles, progress)

    try:
        pairs = make_pairs(task, dataset or task.train_set, data_dir, limit=images)
    except FileNotFoundError as e:
        raise UserError(f"QAT training data: {e}") from None
    patch = int(getattr(recipe, "qat_patch", 0) or tile)
    sampler = PatchSampler(pairs, task, patch, recipe.qat_batch, seed + 1)
    move_exported_model_to_train(prepared)
    state_path.parent.mkdir(parents=True, exist_ok=True)

    def save(step: int) -> None:
        from .runtime.files import atomic_write_bytes
        import io

        buf = io.BytesIO()
        torch.save({"fingerprint": fingerprint, "step": step, "model": prepared.state_dict(),
                    "optimizer": optimizer.state_dict()}, buf)
        atomic_write_bytes(state_path, buf.getvalue())

    losses: list[float] = []
    step = start
    with _bar("int8-qat fine-tuning", recipe.qat_steps, progress) as bar:
        bar.update(start)
        try:
            while step < recipe.qat_steps:
                x, y = sampler(step)
                loss = torch.nn.functional.l1_loss(prepared(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}", refresh=False)
                bar.update(1)
                if step % 50 == 0:
                    save(step)
        except KeyboardInterrupt:
            save(step)
            raise UserError(f"interrupted at QAT step {step}; run the same command again to resume") from None
    save(step)
    move_exported_model_to_eval(prepared)
    converted = convert_pt2e(prepared)
    summary = {"steps": recipe.qat_steps, "lr": recipe.qat_lr, "batch": recipe.qat_batch, "patch": patch,
               "dataset": dataset or task.train_set, "images": len(pairs), "resumed_from": start,
               "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 5) if losses else None}
    return converted, summary


def _fingerprint(model: nn.Module, recipe: Any, tile: int, seed: int) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    same_run = {k: v for k, v in recipe.to_dict().items() if k not in ("qat_steps", "description")}  # more steps resume
    h.update(repr((same_run, tile, seed)).encode())
    return h.hexdigest()


def export_at(module: nn.Module, shape: tuple[int, ...]) -> torch.export.ExportedProgram:
    """A (quantized or float) module exported at one fixed input shape, the form targets lower."""
    return torch.export.export(module, (torch.rand(*shape),))


__all__ = ["node_filter", "part_names", "calibration_tiles", "export_for_quant", "quantize_ptq", "quantize_qat",
           "export_at"]
