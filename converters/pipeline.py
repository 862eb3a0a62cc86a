"""`nsr-edge convert` as named stages, the same for every target:

    resolve -> deploy -> quantize -> lower -> write

`Conversion` keeps every intermediate result (the resolved model, the deploy module, the calibration tiles, the
quantized module, the lowering result), so a test or a notebook can stop after any stage and look.
"""

from __future__ import annotations

import hashlib
import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from nsr_edge.errors import UserError
from nsr_edge.runtime.card import (SCHEMA, VERSION, ArtifactInfo, IOSpec, MethodSpec, ModelCard, ModelInfo,
                                   ReferenceOutputs, Source, TensorSpec, load_card, now_utc, portable, write_card)
from nsr_edge.runtime.files import artifact_digest

from .base import (LoweringContext, LoweringResult, ModelFacts, Recipe, Target, atomic_output_dir, check_output_dir,
                   get_recipe, get_target)

TILE_PAD = 4  # context margin per tile side (the reference's 4 px)
MIN_TILE = 24
REFERENCE_TILES = 4  # real tiles stored with the FP32 model's outputs (reference.npz) for torch-free validation


@dataclass
class ConvertOptions:
    model: str
    target: str = "executorch"
    recipe: str = "fp32"
    tile: int = 64
    extra_tiles: tuple[int, ...] = ()
    strategy: str = "output-mix"
    calibration_tiles: int | None = None  # None: the recipe's
    calibration_dataset: str | None = None  # None: the task's training set
    data_dir: str | None = None
    qat_steps: int | None = None
    qat_dir: str | None = None
    recipe_overrides: dict[str, Any] = field(default_factory=dict)
    progress: bool = True


@dataclass
class Conversion:
    options: ConvertOptions
    target: Target | None = None
    recipe: Recipe | None = None
    resolved: Any = None
    task: Any = None
    source: dict[str, Any] | None = None
    deploy: Any = None
    tiles: Any = None
    module: Any = None  # what is lowered: deploy form, or the PT2E-converted module
    quant_info: dict[str, Any] | None = None
    lowered: LoweringResult | None = None
    reference: tuple[bytes, ReferenceOutputs] | None = None  # reference.npz and its card entry (`reference_outputs`)
    reference_note: str | None = None  # why none was stored

    # ------------------------------------------------------------------------------------------------------ stages
    def resolve(self) -> "Conversion":
        """Target, recipe and model, and the request checked against the target's capabilities before any work."""
        from nsr_edge import hub
        from nsr_edge.runtime.files import file_sha256

        o = self.options
        self.target, self.recipe = check_request(o)  # before loading anything
        caps = self.target.capabilities
        tiles = (o.tile, *o.extra_tiles)
        self.resolved = hub.resolve(o.model, require_trained=True)
        cfg = self.resolved.config
        why = caps.refusal(self.target.name, o.strategy, self.recipe.name, tiles, model_facts(cfg))
        if why:
            raise UserError(why)
        self.task = hub.task_of(self.resolved, guess=True)
        if self.resolved.card is not None:
            path = hub.checkpoint_path(self.resolved.id)
            self.source = {"kind": "zoo", "ref": self.resolved.id, "sha256": file_sha256(path)}
        else:  # the file name, not the converting machine's path: cards ship inside apps
            path = Path(o.model)
            self.source = {"kind": "checkpoint", "ref": path.name, "sha256": file_sha256(path)}
        for t in tiles:
            check_tile(t, cfg)
        return self

    def make_deploy(self) -> "Conversion":
        from nsr_edge.deploy import STRATEGIES, to_deploy

        if self.options.strategy not in STRATEGIES:
            raise UserError(f"unknown strategy {self.options.strategy!r}; one of {', '.join(STRATEGIES)} or auto")
        self.deploy = to_deploy(self.resolved.build(), self.options.strategy)
        self.module = self.deploy
        return self

    def quantize(self) -> "Conversion":
        """Calibration tiles for the recipes the target calibrates, then PT2E quantization when the target has a
        PT2E quantizer for the recipe (else the target quantizes in `lower`, on the same tiles)."""
        from nsr_edge import quant

        r, o = self.recipe, self.options
        if not r.quantized:
            return self
        caps = self.target.capabilities
        calib = None
        if caps.needs_calibration(r.name):
            self.tiles = quant.calibration_tiles(self.task, o.tile, r.calibration_tiles, r.calibration_seed,
                                                 o.calibration_dataset, o.data_dir, o.progress)
            calib = {"dataset": o.calibration_dataset or self.task.train_set, "tiles": int(len(self.tiles)),
                     "seed": r.calibration_seed, "tile": o.tile}
            self.quant_info = {"calibration": calib}  # also when the target calibrates inside lower()
        quantizer = self.target.pt2e_quantizer(r, self.deploy)
        if quantizer is None:  # the target quantizes inside lower() (e.g. weight-only in its own converter)
            return self
        if calib is None:
            raise RuntimeError(f"target {self.target.name} quantizes {r.name} with PT2E but does not declare it in "
                               "capabilities.calibrated_recipes")
        if r.method == "ptq":
            self.module = quant.quantize_ptq(self.deploy, quantizer, self.tiles, o.progress)
            self.quant_info = {"calibration": calib}
        else:
            qat_dir = o.qat_dir or str(Path(o.model if Path(o.model).exists() else ".").resolve().parent / ".nsr-edge-qat")
            self.module, summary = quant.quantize_qat(self.deploy, quantizer, self.tiles, self.task, r, qat_dir,
                                                      o.calibration_dataset, o.data_dir, progress=o.progress)
            self.quant_info = {"calibration": calib, "qat": summary}
        return self

    def lower(self) -> "Conversion":
        import torch

        c = self.resolved.config.channels
        examples = [torch.rand(1, c, t, t, generator=torch.Generator().manual_seed(0))
                    for t in (self.options.tile, *self.options.extra_tiles)]
        context = LoweringContext(self.recipe, quantized=self.module is not self.deploy,
                                  calibration_tiles=self.tiles, task=self.task, progress=self.options.progress,
                                  strategy=self.options.strategy)
        try:
            self.lowered = self.target.lower(self.module, examples, context)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - lowering errors from the stacks are long; keep the first line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{self.target.name} lowering failed ({type(e).__name__}): {first[:300]}") from None
        art = self.target.capabilities.artifact
        if not self.lowered.artifact_files(art):
            raise RuntimeError(f"target {self.target.name} did not produce {art}")
        return self

    def reference_outputs(self) -> "Conversion":
        """``reference.npz``: `REFERENCE_TILES` real tiles of the task's first evaluation set (the first image at
        least one tile large, tiles evenly spaced over it: a fixed choice) and the FP32 PyTorch training-form
        model's outputs on them, float32 NCHW (`runtime.reference_outputs`). Without that data set, none is stored
        (``reference_note`` says why) and the conversion goes on."""
        from nsr_edge.evaluate import torch_tile_fn
        from nsr_edge.runtime import tiling
        from nsr_edge.runtime.datasets import list_eval_images
        from nsr_edge.runtime.evaluation import prepare
        from nsr_edge.runtime.reference_outputs import REFERENCE_FILE, reference_npz

        o, task = self.options, self.task
        dataset = task.eval_sets[0]
        try:
            pairs = list_eval_images(dataset, task.scale if task.name == "sr" else None, o.data_dir)
        except (FileNotFoundError, ValueError, UserError) as e:
            self.reference_note = f"no reference outputs stored ({str(e).splitlines()[0][:160]})"
            return self
        spec = tiling.deploy_spec(o.tile, pad=TILE_PAD)
        tiles = None
        for pair in pairs:  # in the data set's (sorted) order
            try:
                _, x, _ = prepare(pair, task)
            except (ValueError, TypeError, OSError):
                continue
            if min(x.shape[1:]) >= o.tile:
                cut, _ = tiling.split(x, spec)
                tiles = cut[:: max(1, len(cut) // REFERENCE_TILES)][:REFERENCE_TILES]
                break
        if tiles is None:
            self.reference_note = f"no reference outputs stored (no image of {dataset} is {o.tile} px or larger)"
            return self
        tiles = np.ascontiguousarray(tiles, dtype=np.float32)
        outputs = np.ascontiguousarray(torch_tile_fn(self.resolved.build())(tiles), dtype=np.float32)
        data = reference_npz(tiles, outputs)
        self.reference = (data, ReferenceOutputs(
            file=REFERENCE_FILE, sha256=hashlib.sha256(data).hexdigest(), tiles=int(len(tiles)), input_shape=list(tiles.shape),
            output_shape=list(outputs.shape), dataset=dataset,
            model=f"{self.resolved.id}: FP32 PyTorch, training form"))
        return self

    def card(self) -> ModelCard:
        """The model card (runtime/card.py's typed contract; docs/model_card.md)."""
        from nsr_edge.models import count_parameters
        from nsr_edge.runtime import tiling

        o, cfg, low = self.options, self.resolved.config, self.lowered
        caps = self.target.capabilities
        spec = tiling.deploy_spec(o.tile, pad=TILE_PAD)
        first = low.methods[0]
        in_range = [0.0, 1.0] if self.task.name != "denoise" else [None, None]
        art = low.artifact_files(caps.artifact)
        return ModelCard(
            schema=SCHEMA, version=VERSION, created=now_utc(),
            model=ModelInfo(
                id=self.resolved.id, arch=cfg.arch, task=self.task.to_dict(), scale=cfg.scale, channels=cfg.channels,
                config=cfg.to_dict(), params=count_parameters(self.deploy), source=Source(**self.source),
                provenance=portable(dict(self.resolved.checkpoint.provenance)) if self.resolved.checkpoint else {},
            ),
            target=self.target.name, runner=caps.runner,
            artifact=ArtifactInfo(file=caps.artifact, kind=caps.artifact_kind, **artifact_digest(art, caps.artifact)),
            strategy=o.strategy, recipe=self.recipe.to_dict(), quantization=self.quant_info, tile=spec.to_dict(),
            io=IOSpec(
                inputs=[TensorSpec("input", "NCHW", "float32", in_range, first.input_shape,
                                   "degraded image tile, RGB or gray, values in [0, 1] (8-bit / 255)")],
                outputs=[TensorSpec("output", "NCHW", "float32", [0.0, 1.0], first.output_shape,
                                    f"restored tile, {cfg.scale}x the input size; clip to [0, 1], round to 8 bit")],
            ),
            methods=[MethodSpec(m.name, m.input_shape, m.output_shape) for m in low.methods],
            delegation=low.delegation_summary(), tools=tool_versions(), target_extra=dict(low.extra),
            reference_outputs=self.reference[1] if self.reference else None, tensor_errors=low.tensor_errors or None,
        )

    def write(self, out: str, force: bool) -> Path:
        if self.reference is None and self.reference_note is None:
            self.reference_outputs()
        card = self.card()
        files = {**self.lowered.files, **self.lowered.side_files}
        if self.reference is not None:
            files[self.reference[1].file] = self.reference[0]
        with atomic_output_dir(out, force) as tmp:  # the whole folder appears in one rename
            for name, data in files.items():
                path = tmp / name
                path.parent.mkdir(parents=True, exist_ok=True)  # directory artifacts (a Core ML .mlpackage)
                path.write_bytes(data)
                path.chmod(0o644)
            write_card(tmp, card)
        return Path(out)


def check_request(options: ConvertOptions) -> tuple[Target, Recipe]:
    """The target and the resolved recipe, after checking the request against the target's capabilities (what
    needs no model): one-line `UserError` otherwise. ``--strategy auto`` is checked per candidate later."""
    overrides = dict(options.recipe_overrides)
    if options.calibration_tiles is not None:
        overrides["calibration_tiles"] = options.calibration_tiles
    if options.qat_steps is not None:
        overrides["qat_steps"] = options.qat_steps
    recipe = get_recipe(options.recipe, **overrides)  # before the target's stack is imported (seconds)
    target = get_target(options.target)
    caps = target.capabilities
    strategy = caps.strategies[0] if options.strategy == "auto" else options.strategy
    why = caps.refusal(target.name, strategy, recipe.name, (options.tile, *options.extra_tiles))
    if why:
        raise UserError(why)
    return target, recipe


def model_facts(config: Any) -> ModelFacts:
    """What the target capability checks may ask of a model config."""
    return ModelFacts(arch=config.arch, scale=config.scale, channels=config.channels, sparse=config.is_sparse,
                      cardinality=config.cardinality if config.is_sparse else 1,
                      shared_routing=bool(config.is_sparse and config.routing.shared))


def check_tile(tile: int, config: Any) -> None:
    """A tile the model and the tiler accept: at least MIN_TILE, a multiple of the routing pool grid."""
    if tile < MIN_TILE:
        raise UserError(f"--tile {tile} is too small: at least {MIN_TILE} (with a {TILE_PAD} px context margin)")
    multiple = max(1, getattr(getattr(config, "routing", None), "pool_grid", 1))
    if tile % multiple:
        raise UserError(f"--tile {tile} must be a multiple of {multiple} (the model pools a {multiple}x{multiple} "
                        "grid for routing)")
    from nsr_edge.runtime import tiling

    try:
        tiling.deploy_spec(tile, pad=TILE_PAD)
    except ValueError as e:
        raise UserError(f"--tile {tile}: {e}") from None


def tool_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": f"{sys.platform}-{platform.machine()}"}
    for dist in ("nsr-edge", "torch", "executorch", "torchao", "numpy", "coremltools", "litert-torch", "onnxruntime"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def convert(options: ConvertOptions, out: str, force: bool = False) -> tuple[Path, ModelCard]:
    """Run every stage and write ``out/<artifact>`` + ``out/model.json``; returns the folder and the card."""
    check_output_dir(out, force)  # fail before minutes of calibration, not after
    conv = Conversion(options).resolve().make_deploy().quantize().lower()
    path = conv.write(out, force)
    if conv.reference_note and options.progress:
        print(f"convert: {conv.reference_note}; validation without PyTorch will not be possible", file=sys.stderr)
    return path, load_card(path)


__all__ = ["ConvertOptions", "Conversion", "convert", "check_request", "check_tile", "tool_versions", "TILE_PAD"]
