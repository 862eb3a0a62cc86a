"""Core ML target: an ML-program ``.mlpackage`` from the deploy form (output mixing), with FP32/FP16 compute,
int8 weights (``w8``), int8 weights + activations (``w8a8``, calibrated on real tiles) and training-time int8
(``int8-qat``).

Named stages, each inspectable (``convert_coreml`` runs them all):
1. ``deploy_for_coreml``: the deploy form with static banks (output mixing: the lowering the Neural Engine can run).
2. ``export_for_coreml``: ``torch.export(...).run_decompositions({})`` (an INFERENCE-dialect program; coremltools
   refuses the training dialect) or ``torch.jit.trace`` (needed for the QAT flow); enumerated tile sizes become
   dynamic H/W dims.
3. ``to_mlmodel``: ``ct.convert`` to an ML program with explicit float32 I/O, FP16 or FP32 compute precision and a
   minimum deployment target (iOS17 default), fixed or enumerated shapes.
4. recipes: ``quantize_weights_int8`` (per-channel symmetric ``linear_quantize_weights``: banks are stored as
   ``[k*Cout, Cin, kh, kw]`` so each bank row gets its own scale; the recipe's ``fp32_parts`` stay float:
   routing always, because int8 routing flips bank decisions), ``quantize_activations_int8`` (coremltools' own
   quantize/dequantize insertion passes, fed with min/max gathered by nsr-edge's MIL evaluator because
   coremltools' calibration runs ``MLModel.predict``, which needs macOS), and ``qat_int8``.
5. ``save_mlpackage``: atomic, refuses to overwrite without ``force``.

Validation on Linux runs the saved package through ``nsr_edge.runtime.coreml_mil`` (see docs/coreml.md).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nsr_edge.deploy import DeploySparseConv, OutputMixingConv, RoutingHead, to_deploy
from nsr_edge.errors import UserError

from .base import Capabilities, LoweredMethod, LoweringContext, LoweringResult, Recipe, method_name, register_target

PRECISIONS = ("fp16", "fp32")
DEPLOYMENT_TARGETS = ("iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15")
DEFAULT_TARGET = "iOS17"
COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")
RECIPES = ("fp32", "fp16", "w8", "w8a8", "int8-qat")
SOURCES = ("export", "trace")
INPUT_NAME, OUTPUT_NAME = "input", "output"
COREML_REFUSED_STRATEGIES = {
    "kernel-mix": "Core ML needs static conv weights (kernel mixing computes them per tile)",
    "hard": "Core ML needs static conv weights (hard routing gathers them per tile); hard routing runs on "
            "--target executorch-dispatch",
}


@dataclass(frozen=True)
class CoreMLOptions:
    """Everything that shapes a Core ML package (stored in the model card under ``coreml``)."""

    precision: str = "fp16"  # compute precision of float ops: fp16 (ANE/GPU native) or fp32 (CPU/GPU only)
    deployment_target: str = DEFAULT_TARGET
    tile: int = 64  # LR tile side the package takes (context margins included)
    enumerated_tiles: tuple[int, ...] = ()  # extra square tile sides the package also accepts (EnumeratedShapes)
    batch: int = 1
    source: str = "export"  # export | trace
    compute_units: str = ""  # recommendation written to the card; "" = derived from precision and recipe

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"Core ML compute precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.deployment_target not in DEPLOYMENT_TARGETS:
            raise UserError(
                f"Core ML deployment target must be one of {', '.join(DEPLOYMENT_TARGETS)}, got {self.deployment_target!r}"
            )
        if self.source not in SOURCES:
            raise UserError(f"Core ML export source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.compute_units and self.compute_units not in COMPUTE_UNITS:
            raise UserError(f"compute units must be one of {', '.join(COMPUTE_UNITS)}, got {self.compute_units!r}")
        if self.tile < 4 or self.batch < 1 or any(t < 4 for t in self.enumerated_tiles):
            raise UserError("Core ML tile sides must be >= 4 and the batch >= 1")

    @property
    def tiles(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys((self.tile, *self.enumerated_tiles)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["enumerated_tiles"] = list(self.enumerated_tiles)
        return d


def recommended_compute_units(precision: str, recipe: str) -> str:
    """The Neural Engine computes in fp16 (and int8 x int8 from A17 Pro / M4 on): fp16 and int8 packages can use
    it ("ALL"); an fp32 package runs on CPU/GPU only, so asking for the ANE would just add a fallback."""
    if precision == "fp32" and recipe in ("fp32", "w8"):
        return "CPU_AND_GPU"
    return "ALL"


def _ct():
    try:
        import coremltools as ct
    except ImportError:
        raise UserError("the coreml target needs coremltools (pip install 'nsr-edge[full]')") from None
    return ct


# ------------------------------------------------------------------------------------------------ stage 1: deploy


def deploy_for_coreml(model: nn.Module) -> nn.Module:
    """The output-mixing deploy form: static banks, the only lowering Core ML's fast paths take."""
    deployed = to_deploy(model, "output-mix")
    for m in deployed.modules():
        if isinstance(m, DeploySparseConv) and not isinstance(m, OutputMixingConv):
            raise UserError("the coreml target needs the output-mix lowering (static kernel banks)")
    return deployed


def _io_channels(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "channels", 3))


# ------------------------------------------------------------------------------------------------ stage 2: export


def export_for_coreml(deployed: nn.Module, options: CoreMLOptions, channels: int) -> Any:
    """An ExportedProgram (inference dialect) or a TorchScript trace of the deploy model."""
    example = torch.rand(options.batch, channels, options.tile, options.tile)
    if not isinstance(deployed, torch.fx.GraphModule):  # PT2E-converted modules are already in eval form
        deployed = deployed.eval()
    if options.source == "trace":
        with torch.no_grad():
            return torch.jit.trace(deployed, example)
    dynamic = None
    if len(options.tiles) > 1:
        lo, hi = min(options.tiles), max(options.tiles)
        h = torch.export.Dim("tile_h", min=lo, max=hi)
        w = torch.export.Dim("tile_w", min=lo, max=hi)
        dynamic = ({2: h, 3: w},)
    with torch.no_grad():
        program = torch.export.export(deployed, (example,), dynamic_shapes=dynamic)
    return program.run_decompositions({})


# ----------------------------------------------------------------------------------------------- stage 3: convert


def _target(ct: Any, name: str) -> Any:
    return getattr(ct.target, name)


def to_mlmodel(source: Any, options: CoreMLOptions, channels: int, precision: str | None = None) -> Any:
    ct = _ct()
    shapes = [(options.batch, channels, t, t) for t in options.tiles]
    shape: Any = shapes[0] if len(shapes) == 1 else ct.EnumeratedShapes(shapes=shapes, default=shapes[0])
    prec = precision or options.precision
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ct.convert(
            source,
            inputs=[ct.TensorType(name=INPUT_NAME, shape=shape, dtype=np.float32)],
            outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16 if prec == "fp16" else ct.precision.FLOAT32,
            minimum_deployment_target=_target(ct, options.deployment_target),
            skip_model_load=True,
        )


def float_ops_to_keep(mlmodel: Any, parts: Sequence[str] = ("routing",), blocks: int | None = None) -> list[str]:
    """Names of the ops an int8 recipe leaves float, by the recipe's ``fp32_parts`` (converters/base.py):
    ``routing``: routing-head convs (1x1 on the pooled tile) and the gate-expansion matmul (``linear``) of output
    mixing; ``first`` / ``last`` / ``skip``: the convs of ``body.0`` / ``body.{blocks+1}`` / ``skip.0``. Found from
    the weights' names, which export (``p_body_0_weight``) and trace (``body_0_weight``) both keep."""
    import re

    patterns = []
    if "first" in parts:
        patterns.append(r"(^|_)body_0_weight")
    if "last" in parts and blocks is not None:
        patterns.append(rf"(^|_)body_{blocks + 1}_weight")
    if "skip" in parts:
        patterns.append(r"(^|_)skip_0_weight")
    keep = []
    for fn in mlmodel._mil_program.functions.values():
        for op in fn.operations:
            if "routing" in parts and (op.op_type == "linear" or op.op_type == "conv" and "head" in op.weight.name):
                keep.append(op.name)
            elif op.op_type == "conv" and any(re.search(p, op.weight.name) for p in patterns):
                keep.append(op.name)
    return keep


# ------------------------------------------------------------------------------------------------- stage 4: recipes


def quantize_weights_int8(mlmodel: Any, keep: Sequence[str] | None = None) -> Any:
    """int8 per-channel symmetric weights (``constexpr_affine_dequantize`` on iOS16/17,
    ``constexpr_blockwise_shift_scale`` on iOS18), routing heads kept float."""
    ct = _ct()
    cto = ct.optimize.coreml
    config = cto.OptimizationConfig(
        global_config=cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=0
        ),
        op_name_configs={name: None for name in (float_ops_to_keep(mlmodel) if keep is None else keep)},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cto.linear_quantize_weights(mlmodel, config)


def quantize_activations_int8(mlmodel: Any, activation_stats: dict[str, dict[str, float]],
                              keep: Sequence[str] = (), quantize_add: bool = False) -> Any:
    """Insert int8 quantize/dequantize pairs around conv/linear (and add, with ``quantize_add``) with per-tensor
    scales from ``activation_stats``: coremltools' own passes, what ``linear_quantize_activations`` does after its
    macOS-only calibration (which ``calibration_stats`` replaces). ``keep``: op names left float."""
    ct = _ct()
    from coremltools.converters.mil.frontend.milproto import load as milproto_load
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.models import utils as model_utils

    cto = ct.optimize.coreml
    config = cto.OptimizationConfig(
        global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric"),
        op_type_configs={} if quantize_add else {"add": None},
        op_name_configs={name: None for name in keep},
    )
    passes = []
    for name in ("compression::insert_prefix_quantize_dequantize_pair",
                 "compression::insert_suffix_quantize_dequantize_pair"):
        p = PASS_REGISTRY[name]
        p.set_options([PassOption("config", config)])
        p.set_options([PassOption("activation_stats", activation_stats)])
        passes.append(p)
    passes.append(PASS_REGISTRY["common::dequantize_quantize_pair_elimination"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model_utils._apply_graph_pass(
            mlmodel, passes, spec_version=getattr(ct, "SPECIFICATION_VERSION_IOS_17", 8),
            pymil_load_func=milproto_load.load, skip_model_load=True,
        )


def calibration_stats(mlmodel: Any, tiles: Iterable[np.ndarray]) -> dict[str, dict[str, float]]:
    """Activation min/max of a float package over real tiles, from the MIL evaluator (no macOS needed)."""
    from nsr_edge.runtime.coreml_mil import MilEvaluator, load_mlpackage

    with tempfile.TemporaryDirectory(prefix="nsr-edge-calib-") as tmp:
        path = Path(tmp) / "float.mlpackage"
        mlmodel.save(str(path))
        evaluator = MilEvaluator(load_mlpackage(path))
        samples = ({INPUT_NAME: t[None] if t.ndim == 3 else t} for t in tiles)
        stats = evaluator.activation_ranges(samples)
    if not stats:
        raise UserError("activation calibration saw no tiles")
    return stats


def qat_int8(
    model: nn.Module,
    options: CoreMLOptions,
    batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    steps: int = 200,
    lr: float = 1e-5,
    calibration_steps: int = 20,
) -> Any:
    """coremltools' training-time quantization on a training-form model (see `_qat_on_deploy`)."""
    return _qat_on_deploy(deploy_for_coreml(model), options, _io_channels(model), batches, steps, lr,
                          calibration_steps)


def coreml_pt2e_quantizer(qat: bool, model: nn.Module | None = None, fp32_parts: Sequence[str] = ()) -> Any:
    """ExecuTorch's ``CoreMLQuantizer``: int8 symmetric, per-channel weights, activations per tensor. With
    ``fp32_parts`` the annotations of those parts' nodes are dropped after annotation (`nsr_edge.quant.node_filter`),
    so they stay float (CoreMLQuantizer has no filter of its own)."""
    from coremltools.optimize.torch.quantization.quantization_config import LinearQuantizerConfig
    from executorch.backends.apple.coreml.quantizer import CoreMLQuantizer

    config = LinearQuantizerConfig.from_dict(
        {"global_config": {"quantization_scheme": "symmetric", "weight_per_channel": True}}
    )
    inner = CoreMLQuantizer(config)
    if model is None or not fp32_parts:
        return inner
    from nsr_edge.quant import node_filter

    allowed = node_filter(model, tuple(fp32_parts))

    class FilteredCoreMLQuantizer(type(inner)):  # same class, so prepare_pt2e treats it like CoreMLQuantizer
        def __init__(self) -> None:
            self.__dict__.update(inner.__dict__)

        def annotate(self, gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
            gm = inner.annotate(gm)
            for node in gm.graph.nodes:
                if not allowed(node):
                    node.meta.pop("quantization_annotation", None)
            return gm

    return FilteredCoreMLQuantizer()


def pt2e_qat(deployed: nn.Module, batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]], steps: int,
             channels: int, tile: int, lr: float = 1e-5) -> torch.fx.GraphModule:
    """A short PT2E QAT run with ``CoreMLQuantizer`` (what the pipeline's resumable `nsr_edge.quant.quantize_qat`
    does at length): prepare on a dynamic-batch export, L1 fine-tuning, convert."""
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from nsr_edge.quant import export_for_quant

    import copy

    example = torch.rand(2, channels, tile, tile)
    prepared = prepare_qat_pt2e(export_for_quant(copy.deepcopy(deployed), example, dynamic_batch=True),
                                coreml_pt2e_quantizer(qat=True))
    for p in prepared.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam([p for p in prepared.parameters() if p.requires_grad], lr=lr)
    move_exported_model_to_train(prepared)
    for step in range(steps):
        x, y = batches(step)
        loss = torch.nn.functional.l1_loss(prepared(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    move_exported_model_to_eval(prepared)
    return convert_pt2e(prepared)


def _qat_on_deploy(
    deployed: nn.Module,
    options: CoreMLOptions,
    channels: int,
    batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    steps: int = 200,
    lr: float = 1e-5,
    calibration_steps: int = 20,
) -> Any:
    """``LinearQuantizer`` (int8 per-channel weights, int8 activations, symmetric) on the output-mix deploy form,
    fine-tuned on ``batches(step) -> (lr, hr)`` with L1, then traced (the flow works through ``torch.jit.trace``, not
    ``torch.export``) and converted. The first ``calibration_steps`` steps only observe ranges; routing heads stay
    float (int8 routing flips bank decisions)."""
    _ct()
    import copy

    from coremltools.optimize.torch.quantization import (
        LinearQuantizer,
        LinearQuantizerConfig,
    )

    deployed = copy.deepcopy(deployed).train()
    for p in deployed.parameters():
        p.requires_grad_(True)
    total = steps + calibration_steps
    config = LinearQuantizerConfig.from_dict(
        {
            "global_config": {"quantization_scheme": "symmetric", "milestones": [0, calibration_steps, total, total]},
            "module_name_configs": {name: None for name, m in deployed.named_modules() if isinstance(m, RoutingHead)},
        }
    )
    example = torch.rand(options.batch, channels, options.tile, options.tile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantizer = LinearQuantizer(deployed, config)
        prepared = quantizer.prepare(example_inputs=(example,), inplace=False)
        optimizer = torch.optim.Adam([p for p in prepared.parameters() if p.requires_grad], lr=lr)
        prepared.train()
        for step in range(total):
            quantizer.step()
            lr_batch, hr_batch = batches(step)
            loss = torch.nn.functional.l1_loss(prepared(lr_batch), hr_batch)
            if step >= calibration_steps:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        prepared.eval()
        final = quantizer.finalize(inplace=False).eval()
        with torch.no_grad():
            traced = torch.jit.trace(final, example)
    trace_options = CoreMLOptions(**{**options.to_dict(), "source": "trace",
                                     "enumerated_tiles": tuple(options.enumerated_tiles)})
    return to_mlmodel(traced, trace_options, channels)


# ---------------------------------------------------------------------------------------------- stage 5: save


def save_mlpackage(mlmodel: Any, path: str | os.PathLike, force: bool = False, metadata: dict[str, str] | None = None
                   ) -> Path:
    """Save atomically: write next to the target, then rename; an existing package is replaced only with force."""
    out = Path(path)
    if out.suffix != ".mlpackage":
        raise UserError(f"{out}: a Core ML package path must end in .mlpackage")
    if out.exists() and not force:
        raise UserError(f"{out}: exists; refusing to overwrite (use --force)")
    out.parent.mkdir(parents=True, exist_ok=True)
    for key, value in (metadata or {}).items():
        mlmodel.user_defined_metadata[key] = str(value)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        staged = tmp / out.name
        mlmodel.save(str(staged))
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(staged, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staged, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# --------------------------------------------------------------------------------------------------- all stages


@dataclass
class CoreMLResult:
    mlmodel: Any
    recipe: str
    options: CoreMLOptions
    calibration: dict[str, Any] = field(default_factory=dict)
    fp32_parts: tuple[str, ...] = ("routing",)

    def card_fields(self) -> dict[str, Any]:
        """Core ML specific model-card fields."""
        ops = {}
        for fn in self.mlmodel._mil_program.functions.values():
            for op in fn.operations:
                ops[op.op_type] = ops.get(op.op_type, 0) + 1
        precision = self.options.precision
        return {
            "format": "mlprogram",
            "compute_precision": precision,
            "deployment_target": self.options.deployment_target,
            "specification_version": int(self.mlmodel.get_spec().specificationVersion),
            "compute_units_recommendation": self.options.compute_units
            or recommended_compute_units(precision, self.recipe),
            "tiles": list(self.options.tiles),
            "batch": self.options.batch,
            "export_source": self.options.source if self.calibration.get("qat_flow") != "linear_quantizer"
            else "trace",
            "weights": "int8 per-channel symmetric" if self.recipe in ("w8", "w8a8", "int8-qat") else precision,
            "activations": "int8 per-tensor symmetric" if self.recipe in ("w8a8", "int8-qat") else precision,
            "fp32_parts": list(self.fp32_parts) if self.recipe in ("w8", "w8a8", "int8-qat") else [],
            "mil_ops": dict(sorted(ops.items())),
            **({"calibration": self.calibration} if self.calibration else {}),
        }


def convert_coreml(
    model: nn.Module,
    recipe: str = "fp16",
    options: CoreMLOptions | None = None,
    calibration_tiles: Sequence[np.ndarray] | None = None,
    qat_batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]] | None = None,
    qat_steps: int = 200,
    fp32_parts: Sequence[str] = ("routing",),
    qat_flow: str = "pt2e",
) -> CoreMLResult:
    """Training-form model -> Core ML ML program for one recipe.

    ``fp32``/``fp16`` set the compute precision (overriding ``options.precision``); ``w8`` and ``w8a8`` build on
    ``options.precision``. ``w8a8`` needs ``calibration_tiles`` (N x C x T x T float32 in [0, 1], real images);
    ``int8-qat`` needs ``qat_batches``; ``qat_flow`` "pt2e" (ExecuTorch's ``CoreMLQuantizer``, the default, what
    the pipeline runs) or "linear_quantizer" (coremltools' ``LinearQuantizer``). ``fp32_parts``: what int8 recipes
    leave float (see `float_ops_to_keep`).
    """
    options = options or CoreMLOptions()
    if recipe not in RECIPES:
        raise UserError(f"the coreml target supports recipes {', '.join(RECIPES)}, not {recipe!r}")
    if recipe in ("fp32", "fp16"):
        options = CoreMLOptions(**{**options.to_dict(), "precision": recipe,
                                   "enumerated_tiles": tuple(options.enumerated_tiles)})
    channels = _io_channels(model)
    if recipe == "int8-qat":
        if qat_batches is None:
            raise UserError("recipe int8-qat needs training data (a training set) for its fine-tuning")
        if qat_flow == "linear_quantizer":
            mlmodel = qat_int8(model, options, qat_batches, qat_steps)
        else:
            quantized = pt2e_qat(deploy_for_coreml(model), qat_batches, qat_steps, channels, options.tile)
            mlmodel = to_mlmodel(export_for_coreml(quantized, options, channels), options, channels)
        return CoreMLResult(mlmodel, recipe, options, {"qat_steps": qat_steps, "qat_flow": qat_flow})
    deployed = deploy_for_coreml(model)
    mlmodel = to_mlmodel(export_for_coreml(deployed, options, channels), options, channels)
    blocks = getattr(getattr(model, "config", None), "blocks", None)
    mlmodel, calibration = apply_int8_recipe(mlmodel, recipe, calibration_tiles, fp32_parts, blocks)
    return CoreMLResult(mlmodel, recipe, options, calibration, tuple(fp32_parts))


def apply_int8_recipe(mlmodel: Any, recipe: str, calibration_tiles: Sequence[np.ndarray] | None,
                      fp32_parts: Sequence[str], blocks: int | None) -> tuple[Any, dict[str, Any]]:
    """``w8``: int8 weights; ``w8a8``: calibrated int8 activations, then int8 weights; others: unchanged."""
    calibration: dict[str, Any] = {}
    if recipe not in ("w8", "w8a8"):
        return mlmodel, calibration
    keep = float_ops_to_keep(mlmodel, fp32_parts, blocks)
    if recipe == "w8a8":
        if calibration_tiles is None or len(calibration_tiles) == 0:
            raise UserError("recipe w8a8 needs calibration tiles from real images")
        tiles = [np.asarray(t, dtype=np.float32) for t in calibration_tiles]
        stats = calibration_stats(mlmodel, tiles)
        mlmodel = quantize_activations_int8(mlmodel, stats, keep)
        calibration = {"tiles": len(tiles), "tensors": len(stats), "method": "min/max, MIL evaluator"}
    return quantize_weights_int8(mlmodel, keep), calibration


# ----------------------------------------------------------------------------------------- the shared target API

ARTIFACT_FILE = "model.mlpackage.zip"


def package_zip_bytes(mlmodel: Any) -> bytes:
    """The saved ``.mlpackage`` folder as one deterministic zip (stored, sorted, fixed timestamps): the artifact the
    shared pipeline hashes and the card names. Unzip it to get ``model.mlpackage`` for Xcode / ``MLModel``."""
    import io
    import zipfile

    with tempfile.TemporaryDirectory(prefix="nsr-edge-coreml-") as tmp:
        root = Path(tmp) / "model.mlpackage"
        mlmodel.save(str(root))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                info = zipfile.ZipInfo(f"model.mlpackage/{path.relative_to(root).as_posix()}", (1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                zf.writestr(info, path.read_bytes())
    return buf.getvalue()


def _recipe_task(model: nn.Module) -> Any:
    from nsr_edge.runtime.tasks import TaskSpec

    config = getattr(model, "config", None)
    if config is None or config.scale < 2:
        raise UserError("w8a8 for a restoration (scale 1) model needs the pipeline's calibration tiles")
    return TaskSpec("sr", scale=config.scale, channels=config.channels)




@register_target
class CoreMLTarget:
    """``--target coreml``: one ``.mlpackage`` (zipped), one function ``main`` whose input takes the card's tile and
    every extra tile (EnumeratedShapes). Methods in the card are ``forward`` (the card's tile) and
    ``forward_{T}x{T}``, all served by that one function."""

    name = "coreml"
    capabilities = Capabilities(
        artifact=ARTIFACT_FILE, runner="coreml", recipes=("fp32", "fp16", "w8", "w8a8", "int8-qat"),
        calibrated_recipes=("w8a8", "int8-qat"), strategies=("output-mix",),
        refused_strategies=COREML_REFUSED_STRATEGIES,
    )
    precision_by_recipe = {"fp32": "fp32"}  # every other recipe computes in fp16 (the Neural Engine's precision)

    def check_available(self) -> None:
        _ct()

    def pt2e_quantizer(self, recipe: Recipe, model: Any) -> Any:
        """int8-qat: ExecuTorch's ``CoreMLQuantizer`` (QAT config), run by the shared QAT machinery (nsr_edge.quant);
        w8 / w8a8 quantize inside `lower` with coremltools' own passes."""
        if recipe.name != "int8-qat":
            return None
        return coreml_pt2e_quantizer(qat=True, model=model, fp32_parts=recipe.fp32_parts)

    def lower(self, model: Any, examples: list[Any], context: LoweringContext) -> LoweringResult:
        recipe, quantized, calibration, qat_batches = context.recipe, context.quantized, context.calibration_tiles, None
        tiles = [int(x.shape[-1]) for x in examples]
        if any(int(x.shape[-1]) != int(x.shape[-2]) for x in examples):
            raise UserError("the coreml target takes square tiles")
        options = CoreMLOptions(precision=self.precision_by_recipe.get(recipe.name, "fp16"), tile=tiles[0],
                                enumerated_tiles=tuple(tiles[1:]), batch=int(examples[0].shape[0]))
        channels = int(examples[0].shape[1])
        mlmodel, calib_info, qat_info = self._build(model, recipe, options, channels, calibration, qat_batches,
                                                    quantized)
        result = CoreMLResult(mlmodel, recipe.name, options, calib_info, tuple(recipe.fp32_parts))
        methods = []
        ops = result.card_fields()["mil_ops"]
        total = sum(v for k, v in ops.items() if k != "const" and not k.startswith("constexpr_"))
        for i, x in enumerate(examples):
            with torch.no_grad():
                out_shape = list(model(x).shape)
            methods.append(LoweredMethod(method_name(i, x), list(x.shape), out_shape,
                                         delegated_ops=total, total_ops=total, partitions=1))
        extra = {"coreml": {**result.card_fields(), **({"qat": qat_info} if qat_info else {})}}
        notes = ["Core ML decides CPU/GPU/Neural Engine placement when the model loads on the device; the counts are "
                 "MIL ops in the package (none fall back at conversion)."]
        return LoweringResult({ARTIFACT_FILE: package_zip_bytes(mlmodel)}, methods, "CoreML", notes, extra)

    def _build(self, model: Any, recipe: Recipe, options: CoreMLOptions, channels: int,
               calibration: np.ndarray | None, qat_batches: Callable | None,
               quantized: bool = False) -> tuple[Any, dict, dict]:
        """``model`` is the deploy form (output mixing) the pipeline made, or its PT2E-quantized module."""
        for m in model.modules():
            if isinstance(m, DeploySparseConv) and not isinstance(m, OutputMixingConv):
                raise UserError("the coreml target needs --strategy output-mix (static kernel banks)")
        if recipe.name == "int8-qat" and quantized:  # the pipeline ran PT2E QAT with our CoreMLQuantizer
            return to_mlmodel(export_for_coreml(model, options, channels), options, channels), {}, \
                {"flow": "PT2E CoreMLQuantizer (nsr_edge.quant.quantize_qat)"}
        if recipe.name == "int8-qat":
            return self._qat(model, recipe, options, channels, calibration, qat_batches)
        mlmodel = to_mlmodel(export_for_coreml(model, options, channels), options, channels)
        if recipe.name == "w8a8" and calibration is None:
            from nsr_edge.quant import calibration_tiles

            calibration = calibration_tiles(_recipe_task(model), options.tile, recipe.calibration_tiles,
                                            recipe.calibration_seed, progress=False)
        blocks = getattr(getattr(model, "config", None), "blocks", None)
        tiles = None if calibration is None else list(np.asarray(calibration, dtype=np.float32))
        mlmodel, calib = apply_int8_recipe(mlmodel, recipe.name, tiles, recipe.fp32_parts, blocks)
        if calib:
            calib["seed"] = recipe.calibration_seed
        return mlmodel, calib, {}

    def _qat(self, model: Any, recipe: Recipe, options: CoreMLOptions, channels: int,
             calibration: np.ndarray | None, qat_batches: Callable | None) -> tuple[Any, dict, dict]:
        if qat_batches is None:
            from nsr_edge.data import PatchSampler, make_pairs

            task = _recipe_task(model)
            patch = getattr(recipe, "qat_patch", 0) or options.tile
            sampler = PatchSampler(make_pairs(task, task.train_set, None, limit=64), task, patch,
                                   recipe.qat_batch, recipe.calibration_seed + 1)
            qat_batches = sampler
        mlmodel = _qat_on_deploy(model, options, channels, qat_batches, recipe.qat_steps, recipe.qat_lr)
        return mlmodel, {"qat_flow": "linear_quantizer"}, {"steps": recipe.qat_steps, "lr": recipe.qat_lr,
                                                          "flow": "coremltools LinearQuantizer"}
