"""Core ML target: an ML-program ``model.mlpackage`` (the folder Xcode takes) from the deploy form (output mixing),
with FP32/FP16 compute, int8 weights (``w8``), int8 weights + activations (``w8a8``, calibrated on the pipeline's
tiles) and training-time int8 (``int8-qat``, PT2E QAT run by the pipeline with `coreml_pt2e_quantizer`).

`CoreMLTarget.lower` runs these named stages, each callable on its own with one options shape (`PackageSpec`):
1. ``deploy_for_coreml``: the deploy form with static banks (output mixing: the lowering the Neural Engine can run;
   the pipeline makes it for ``--strategy output-mix``).
2. ``export_for_coreml``: ``torch.export(...).run_decompositions({})`` (an INFERENCE-dialect program; coremltools
   refuses the training dialect) or ``torch.jit.trace``; extra tile sizes become dynamic H/W dims.
3. ``to_mlmodel``: ``ct.convert`` to an ML program with explicit float32 I/O, FP16 or FP32 compute precision and a
   minimum deployment target (iOS17 default), fixed or enumerated shapes.
4. recipes (`apply_int8_recipe`): ``quantize_weights_int8`` (per-channel symmetric ``linear_quantize_weights``: banks
   are stored as ``[k*Cout, Cin, kh, kw]`` so each bank row gets its own scale; the recipe's ``fp32_parts`` stay
   float: routing always, because int8 routing flips bank decisions) and ``quantize_activations_int8`` (coremltools'
   own quantize/dequantize insertion passes, fed with min/max that ``calibration_stats`` gathers with nsr-edge's MIL
   evaluator, because coremltools' calibration runs ``MLModel.predict``, which needs macOS).
5. ``package_files``: the saved package as ``{model.mlpackage/<path>: bytes}``, deterministic (coremltools names the
   package items by random UUIDs in ``Manifest.json``; they are replaced by UUIDs derived from each item's path).

Validation on Linux runs the package folder through ``nsr_edge.runtime.coreml_mil`` (see docs/coreml.md).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import uuid
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nsr_edge.deploy import DeploySparseConv, OutputMixingConv, to_deploy
from nsr_edge.errors import UserError

from .base import Capabilities, LoweredMethod, LoweringContext, LoweringResult, Recipe, method_name, register_target

PRECISIONS = ("fp16", "fp32")
DEPLOYMENT_TARGETS = ("iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15")
DEFAULT_TARGET = "iOS17"
COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")
SOURCES = ("export", "trace")
INPUT_NAME, OUTPUT_NAME = "input", "output"
ARTIFACT = "model.mlpackage"
INT8_RECIPES = ("w8", "w8a8", "int8-qat")
COREML_REFUSED_STRATEGIES = {
    "kernel-mix": "Core ML needs static conv weights (kernel mixing computes them per tile)",
    "hard": "Core ML needs static conv weights (hard routing gathers them per tile); hard routing runs on "
            "--target executorch-dispatch",
}


@dataclass(frozen=True)
class PackageSpec:
    """What shapes a Core ML package, the one options shape every stage takes: the input shapes (NCHW; the first is
    the card's tile, the others become ``EnumeratedShapes``), the compute precision of float ops (fp16: ANE/GPU
    native; fp32: CPU/GPU only), the minimum deployment target and the export source (``export`` | ``trace``)."""

    shapes: tuple[tuple[int, int, int, int], ...]
    precision: str = "fp16"
    deployment_target: str = DEFAULT_TARGET
    source: str = "export"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"Core ML compute precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.deployment_target not in DEPLOYMENT_TARGETS:
            raise UserError(
                f"Core ML deployment target must be one of {', '.join(DEPLOYMENT_TARGETS)}, got {self.deployment_target!r}"
            )
        if self.source not in SOURCES:
            raise UserError(f"Core ML export source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        shapes = tuple(dict.fromkeys(tuple(int(d) for d in s) for s in self.shapes))
        if not shapes or any(len(s) != 4 or min(s[2:]) < 4 or s[0] < 1 for s in shapes):
            raise UserError("Core ML input shapes are N, C, H, W with tile sides >= 4 and a batch >= 1")
        object.__setattr__(self, "shapes", shapes)

    @classmethod
    def of(cls, examples: Sequence[torch.Tensor], **options: Any) -> PackageSpec:
        """The spec for a target's example inputs (one per method)."""
        return cls(tuple(tuple(x.shape) for x in examples), **options)

    @property
    def tiles(self) -> list[int]:
        return [s[-1] for s in self.shapes]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shapes"] = [list(s) for s in self.shapes]
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


# ------------------------------------------------------------------------------------------------ stage 2: export


def export_for_coreml(deployed: nn.Module, spec: PackageSpec) -> Any:
    """An ExportedProgram (inference dialect) or a TorchScript trace of the deploy (or PT2E-converted) module."""
    example = torch.rand(*spec.shapes[0])
    if not isinstance(deployed, torch.fx.GraphModule):  # PT2E-converted modules are already in eval form
        deployed = deployed.eval()
    if spec.source == "trace":
        with torch.no_grad():
            return torch.jit.trace(deployed, example)
    dynamic = None
    if len(spec.shapes) > 1:
        hs, ws = [s[2] for s in spec.shapes], [s[3] for s in spec.shapes]
        dynamic = ({2: torch.export.Dim("tile_h", min=min(hs), max=max(hs)),
                    3: torch.export.Dim("tile_w", min=min(ws), max=max(ws))},)
    with torch.no_grad():
        program = torch.export.export(deployed, (example,), dynamic_shapes=dynamic)
    return program.run_decompositions({})


# ----------------------------------------------------------------------------------------------- stage 3: convert


def to_mlmodel(source: Any, spec: PackageSpec) -> Any:
    ct = _ct()
    shapes = list(spec.shapes)
    shape: Any = shapes[0] if len(shapes) == 1 else ct.EnumeratedShapes(shapes=shapes, default=shapes[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ct.convert(
            source,
            inputs=[ct.TensorType(name=INPUT_NAME, shape=shape, dtype=np.float32)],
            outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16 if spec.precision == "fp16" else ct.precision.FLOAT32,
            minimum_deployment_target=getattr(ct.target, spec.deployment_target),
            skip_model_load=True,
        )


def float_ops_to_keep(mlmodel: Any, parts: Sequence[str] = ("routing",), blocks: int | None = None) -> list[str]:
    """Names of the ops an int8 recipe leaves float, by the recipe's ``fp32_parts`` (converters/base.py):
    ``routing``: routing-head convs (1x1 on the pooled tile) and the gate-expansion matmul (``linear``) of output
    mixing; ``heads``: the routing-head convs only; ``first`` / ``last`` / ``skip``: the convs of ``body.0`` /
    ``body.{blocks+1}`` / ``skip.0``. Found from the weights' names, which export (``p_body_0_weight``) and trace
    (``body_0_weight``) both keep."""
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
            head_conv = op.op_type == "conv" and "head" in op.weight.name
            if ("routing" in parts and (op.op_type == "linear" or head_conv) or "heads" in parts and head_conv
                    or op.op_type == "conv" and any(re.search(p, op.weight.name) for p in patterns)):
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


def apply_int8_recipe(mlmodel: Any, recipe: Recipe, calibration_tiles: Any, blocks: int | None
                      ) -> tuple[Any, dict[str, Any]]:
    """``w8``: int8 weights; ``w8a8``: int8 activations calibrated on ``calibration_tiles`` (the pipeline's
    float32 N x C x T x T tiles from real images), then int8 weights; other recipes: unchanged. Returns the model
    and what calibration used (for the card)."""
    if recipe.name not in ("w8", "w8a8"):
        return mlmodel, {}
    keep = float_ops_to_keep(mlmodel, recipe.fp32_parts, blocks)
    calibration: dict[str, Any] = {}
    if recipe.name == "w8a8":
        if calibration_tiles is None or len(calibration_tiles) == 0:
            raise UserError("recipe w8a8 needs calibration tiles from real images (the pipeline cuts them for the "
                            "recipes in capabilities.calibrated_recipes)")
        tiles = np.ascontiguousarray(calibration_tiles, dtype=np.float32)
        stats = calibration_stats(mlmodel, tiles)
        mlmodel = quantize_activations_int8(mlmodel, stats, keep)
        calibration = {"tiles": len(tiles), "tile": int(tiles.shape[-1]), "seed": recipe.calibration_seed,
                       "tiles_sha256": hashlib.sha256(tiles.tobytes()).hexdigest(), "tensors": len(stats),
                       "method": "min/max, MIL evaluator"}
    return quantize_weights_int8(mlmodel, keep), calibration


# ---------------------------------------------------------------------------------------------- stage 5: package


def deterministic_manifest(data: bytes) -> bytes:
    """``Manifest.json`` with coremltools' random item identifiers (uuid4, new on every save) replaced by UUIDs
    derived from each item's path, in the layout coremltools writes (sorted keys, 4-space indent): the same model
    gives the same bytes, so the card's digest of the package folder is reproducible."""
    manifest = json.loads(data)
    entries = manifest["itemInfoEntries"]
    ids = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, f"nsr-edge:{ARTIFACT}/{item['path']}"))
           for old, item in entries.items()}
    manifest["itemInfoEntries"] = {ids[old]: item for old, item in entries.items()}
    manifest["rootModelIdentifier"] = ids[manifest["rootModelIdentifier"]]
    return (json.dumps(manifest, indent=4, sort_keys=True) + "\n").encode()


CONVERSION_DATE_KEY = "com.github.apple.coremltools.conversion_date"


def deterministic_spec(data: bytes) -> bytes:
    """``model.mlmodel`` re-serialized with sorted protobuf maps (Python's protobuf writes map entries, e.g. the
    metadata and every op's inputs and attributes, in an order that changes from process to process) and without
    coremltools' ``conversion_date`` metadata (the model card records when the artifact was made)."""
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.ParseFromString(data)
    spec.description.metadata.userDefined.pop(CONVERSION_DATE_KEY, None)
    return spec.SerializeToString(deterministic=True)


def package_files(mlmodel: Any) -> dict[str, bytes]:
    """Every file of the saved package as ``{"model.mlpackage/<relative path>": bytes}`` (the target's directory
    artifact), byte-for-byte reproducible: the same module, recipe and tiles give the same files in any process on
    any day (`deterministic_manifest`, `deterministic_spec`)."""
    with tempfile.TemporaryDirectory(prefix="nsr-edge-coreml-") as tmp:
        root = Path(tmp) / ARTIFACT
        mlmodel.save(str(root))
        files = {f"{ARTIFACT}/{p.relative_to(root).as_posix()}": p.read_bytes()
                 for p in sorted(root.rglob("*")) if p.is_file()}
    manifest = f"{ARTIFACT}/Manifest.json"
    for item in json.loads(files[manifest])["itemInfoEntries"].values():
        path = f"{ARTIFACT}/Data/{item['path']}"
        if path.endswith(".mlmodel") and path in files:
            files[path] = deterministic_spec(files[path])
    files[manifest] = deterministic_manifest(files[manifest])
    return files


def card_fields(mlmodel: Any, spec: PackageSpec, recipe: Recipe, calibration: dict[str, Any]) -> dict[str, Any]:
    """Core ML specific model-card fields (``target_extra.coreml``)."""
    ops: dict[str, int] = {}
    for fn in mlmodel._mil_program.functions.values():
        for op in fn.operations:
            ops[op.op_type] = ops.get(op.op_type, 0) + 1
    int8 = recipe.name in INT8_RECIPES
    return {
        "format": "mlprogram",
        "compute_precision": spec.precision,
        "deployment_target": spec.deployment_target,
        "specification_version": int(mlmodel.get_spec().specificationVersion),
        "compute_units_recommendation": recommended_compute_units(spec.precision, recipe.name),
        "tiles": spec.tiles,
        "batch": spec.shapes[0][0],
        "export_source": spec.source,
        "weights": "int8 per-channel symmetric" if int8 else spec.precision,
        "activations": "int8 per-tensor symmetric" if recipe.name in ("w8a8", "int8-qat") else spec.precision,
        "fp32_parts": list(recipe.fp32_parts) if int8 else [],
        "mil_ops": dict(sorted(ops.items())),
        **({"calibration": calibration} if calibration else {}),
    }


# ----------------------------------------------------------------------------------------------------- the target


@register_target
class CoreMLTarget:
    """``--target coreml``: one ``model.mlpackage`` folder, one function ``main`` whose input takes the card's tile
    and every extra tile (EnumeratedShapes). Methods in the card are ``forward`` (the card's tile) and
    ``forward_{T}x{T}``, all served by that one function.

    ``deployment_target`` and ``source`` are the registered target's defaults; a test or notebook can lower with
    another instance (``CoreMLTarget(deployment_target="iOS18").lower(...)``)."""

    name = "coreml"
    capabilities = Capabilities(
        artifact=ARTIFACT, artifact_kind="directory", runner="coreml",
        recipes=("fp32", "fp16", "w8", "w8a8", "int8-qat"), calibrated_recipes=("w8a8", "int8-qat"),
        strategies=("output-mix",), refused_strategies=COREML_REFUSED_STRATEGIES,
    )
    precision_by_recipe = {"fp32": "fp32"}  # every other recipe computes in fp16 (the Neural Engine's precision)

    def __init__(self, deployment_target: str = DEFAULT_TARGET, source: str = "export") -> None:
        PackageSpec(((1, 1, 4, 4),), deployment_target=deployment_target, source=source)  # refuse unknown names now
        self.deployment_target, self.source = deployment_target, source

    def check_available(self) -> None:
        _ct()

    def pt2e_quantizer(self, recipe: Recipe, model: Any) -> Any:
        """int8-qat: ExecuTorch's ``CoreMLQuantizer`` (QAT config), run by the shared QAT machinery (nsr_edge.quant);
        w8 / w8a8 quantize inside `lower` with coremltools' own passes."""
        if recipe.name != "int8-qat":
            return None
        return coreml_pt2e_quantizer(qat=True, model=model, fp32_parts=recipe.fp32_parts)

    def lower(self, model: Any, examples: list[Any], context: LoweringContext) -> LoweringResult:
        """``model`` is the output-mix deploy form, or (int8-qat) the module the pipeline PT2E-quantized with
        `pt2e_quantizer`; w8a8 calibrates on ``context.calibration_tiles`` only."""
        recipe = context.recipe
        if recipe.method == "qat" and not context.quantized:
            raise UserError("recipe int8-qat lowers the module the pipeline's PT2E QAT produced (nsr_edge.quant)")
        spec = PackageSpec.of(examples, precision=self.precision_by_recipe.get(recipe.name, "fp16"),
                              deployment_target=self.deployment_target, source=self.source)
        mlmodel = to_mlmodel(export_for_coreml(model, spec), spec)
        blocks = getattr(getattr(model, "config", None), "blocks", None)
        mlmodel, calibration = apply_int8_recipe(mlmodel, recipe, context.calibration_tiles, blocks)
        fields = card_fields(mlmodel, spec, recipe, calibration)
        total = sum(v for k, v in fields["mil_ops"].items() if k != "const" and not k.startswith("constexpr_"))
        methods = []
        for i, x in enumerate(examples):
            with torch.no_grad():
                out_shape = list(model(x).shape)
            methods.append(LoweredMethod(method_name(i, x), list(x.shape), out_shape,
                                         delegated_ops=total, total_ops=total, partitions=1))
        notes = ["Core ML decides CPU/GPU/Neural Engine placement when the model loads on the device; the counts are "
                 "MIL ops in the package (none fall back at conversion)."]
        return LoweringResult(package_files(mlmodel), methods, "CoreML", notes, {"coreml": fields})
