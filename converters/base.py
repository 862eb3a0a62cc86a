"""The contract every conversion target implements, the target registry, the quantization recipes, and the helpers
all targets share (atomic artifact folders, delegation summaries).

A target (ExecuTorch, Core ML, LiteRT, ONNX Runtime, ...) is ONE module under ``converters/`` that defines a class
implementing `Target` and is named in `TARGET_MODULES`; nothing else changes when a target is added. The shared
pipeline (`converters/pipeline.py`) does everything that is not target-specific, as named stages:

    resolve model -> deploy form (strategy) -> quantize (recipe; calibration / QAT in nsr_edge/quant.py)
    -> target.lower(...) -> write artifact + model card atomically

so a target only answers three questions: what it can do (`Capabilities`, data the pipeline checks every request
against before any work), which PT2E quantizer implements a recipe for it (or None when it quantizes in its own
``lower``), and how a (possibly quantized) module becomes artifact files (`Target.lower`, one signature for all).

Recipes are named data (like torchao's configs): the same `int8-ptq` means the same thing on every target.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from nsr_edge.errors import UserError

if TYPE_CHECKING:  # torch is imported by the targets and the pipeline, never needed to read this file's data
    import torch
    from torch import nn

    from nsr_edge.runtime.card import Delegation

# ------------------------------------------------------------------------------------------------------------ recipes

FP32_PARTS = ("routing", "heads", "first", "last", "skip", "output", "residual")
"""Parts of a network a recipe may keep in float while the rest is quantized (`Recipe.fp32_parts`):
``routing``: every routing head (pool -> conv -> softmax) and the gate multiply of output mixing; ``heads``: the
routing heads only (the gate multiply, bank slices and bank sums of output mixing are then int8, XNNPACK's int8
multiply/add; docs/int8_breakdown.md); ``first``: the head
conv (body.0, sees the -0.5-shifted image); ``last``: the tail conv (body.N+1, produces the residual before
PixelShuffle); ``skip``: the 5x5 skip conv (the low-frequency path of the +0.5 output); ``output``: the network's own
ops outside any layer (the -0.5 input shift, the body + skip add, the +0.5 output add): quantized, the output image
is rounded to an int8 grid coarser than the 8-bit grid it is rounded to again afterwards; ``residual``: the identity
add of every residual block (the residual stream keeps float precision between the int8 convs)."""


@dataclass(frozen=True)
class Recipe:
    """How a model is quantized. Shared by all targets; a target declares which names it supports.

    weights/activations: "fp32" or "int8". method: "none" (fp32), "ptq" (post-training, calibrated) or "qat"
    (quantization-aware fine-tuning, then converted). Weights are symmetric (per output channel when
    ``per_channel``), activations per-tensor affine, as XNNPACK's int8 kernels want.
    fp32_parts: parts left in float (see `FP32_PARTS`): the fragile ones in restoration nets.
    calibration_tiles: tiles cut from the training set (through the tiler) to calibrate activation ranges.
    qat_*: the fine-tuning run of `int8-qat` (Adam, L1 loss on the task's training pairs, resumable); ``qat_patch``
    is the side of the training patches (0: the artifact's tile; the zoo models were trained on 32 px patches).
    """

    name: str
    weights: str = "fp32"
    activations: str = "fp32"
    method: str = "none"
    per_channel: bool = True
    fp32_parts: tuple[str, ...] = ()
    calibration_tiles: int = 64
    calibration_seed: int = 0
    qat_steps: int = 500
    qat_lr: float = 1e-5
    qat_batch: int = 8
    qat_patch: int = 0
    description: str = ""

    def __post_init__(self) -> None:
        if self.weights not in ("fp32", "fp16", "int8") or self.activations not in ("fp32", "fp16", "int8"):
            raise ValueError(f"recipe {self.name}: weights/activations must be fp32, fp16 or int8")
        if self.method not in ("none", "ptq", "qat"):
            raise ValueError(f"recipe {self.name}: method must be none, ptq or qat")
        bad = set(self.fp32_parts) - set(FP32_PARTS)
        if bad:
            raise ValueError(f"recipe {self.name}: unknown fp32_parts {sorted(bad)}; known: {', '.join(FP32_PARTS)}")
        object.__setattr__(self, "fp32_parts", tuple(self.fp32_parts))

    @property
    def quantized(self) -> bool:
        return self.method != "none"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fp32_parts"] = list(self.fp32_parts)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recipe":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown recipe fields {sorted(unknown)}")
        return cls(**{**data, "fp32_parts": tuple(data.get("fp32_parts", ()))})

    def with_(self, **changes: Any) -> "Recipe":
        return replace(self, **changes)


# Defaults measured on the x2 zoo model (docs/deploy.md, "Choosing what stays in float"): with the output stage and
# the residual adds in float the PTQ drop fell from 0.245 to ~0.01 dB on Set5 (routing only: 0.245).
_INT8_KEEP = ("routing", "first", "last", "skip", "output", "residual")
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("fp32", description="float32 weights and activations (the reference for every other recipe)"),
        Recipe("int8-ptq", "int8", "int8", "ptq", fp32_parts=_INT8_KEEP,
               description="post-training int8: per-channel symmetric weights, per-tensor activations calibrated "
                           "on training tiles; routing heads, the image-side convs, the output stage and the "
                           "residual adds in float"),
        Recipe("int8-qat", "int8", "int8", "qat", fp32_parts=_INT8_KEEP, qat_patch=32,
               description="int8-ptq's calibration, then quantization-aware fine-tuning on the training set"),
        # int8 output mixing (docs/int8_breakdown.md): the float mixing of int8-ptq (dequantize each bank conv, float
        # gate multiply, float slices and adds, quantize again) was over a third of its traced ExecuTorch INT8 time
        Recipe("int8-ptq-mix", "int8", "int8", "ptq", fp32_parts=("heads",) + _INT8_KEEP[1:],
               description="int8-ptq with the gate multiply and bank sums of output mixing in int8 (routing heads, "
                           "image-side convs, output stage and residual adds still float)"),
        # Core ML recipes (converters/coreml.py): fp16 compute, int8 weights only, int8 weights + activations.
        Recipe("fp16", "fp16", "fp16", description="float16 weights and compute (Core ML's Neural Engine/GPU precision)"),
        Recipe("w8", "int8", "fp16", "ptq", fp32_parts=("routing",),
               description="int8 per-channel symmetric weights (one scale per bank row), fp16 compute"),
        Recipe("w8a8", "int8", "int8", "ptq", fp32_parts=("routing", "last", "skip"),
               description="w8 plus int8 per-tensor activations around convs, calibrated on training tiles; "
                           "routing and the two output convs in float (docs/coreml.md)"),
    )
}


def get_recipe(name: str, **overrides: Any) -> Recipe:
    """A named recipe, optionally with fields changed (``--recipe-option fp32_parts=routing,first``)."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    try:
        return RECIPES[name].with_(**overrides) if overrides else RECIPES[name]
    except (TypeError, ValueError) as e:
        raise UserError(str(e) if str(e).startswith(f"recipe {name}:") else f"recipe {name}: {e}") from None


# ---------------------------------------------------------------------------------------------------------- targets


@dataclass
class Fallback:
    """Ops a target's fast path did not take, with the reason the partitioner gave (or what we know of it)."""

    op: str
    count: int
    reason: str


@dataclass
class LoweredMethod:
    """One entry point of an artifact: a fixed input shape (NCHW) and its delegation."""

    name: str
    input_shape: list[int]
    output_shape: list[int]
    delegated_ops: int = 0  # ops inside the target's fast path (e.g. the XNNPACK delegate)
    total_ops: int = 0  # compute ops in the lowered graph (delegated + fallbacks)
    partitions: int = 0  # delegate subgraphs (1 is best: no copies in and out between them)
    fallbacks: list[Fallback] = field(default_factory=list)


@dataclass
class LoweringResult:
    """What `Target.lower` returns: artifact files (written by the pipeline) and what ran where."""

    files: dict[str, bytes]  # path in the artifact folder -> bytes: the target's ``capabilities.artifact`` (a file,
    # or for a directory artifact every file under ``<artifact>/``) and any companions the runner needs
    methods: list[LoweredMethod]
    backend: str  # "XNNPACK", "CoreML", ...
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # target-specific card fields (e.g. int8 I/O scales)
    side_files: dict[str, bytes] = field(default_factory=dict)  # debug companions (e.g. ETRecord), not hashed
    tensor_errors: Any = None  # the card's `TensorErrorReport` (INT8 LiteRT: converters/litert_tensor_errors.py)

    def artifact_files(self, artifact: str) -> dict[str, bytes]:
        """The files that make up ``artifact``: the file itself, or every file under ``artifact/`` (a directory)."""
        return {n: d for n, d in self.files.items() if n == artifact or n.startswith(artifact + "/")}

    def delegation_summary(self) -> "Delegation":
        from nsr_edge.runtime.card import Delegation, FallbackInfo, MethodDelegation

        return Delegation(
            backend=self.backend,
            methods={
                m.name: MethodDelegation(
                    delegated_ops=m.delegated_ops, total_ops=m.total_ops, partitions=m.partitions,
                    fully_delegated=m.total_ops > 0 and m.delegated_ops == m.total_ops,
                    fallbacks=[FallbackInfo(f.op, f.count, f.reason) for f in m.fallbacks],
                )
                for m in self.methods
            },
            notes=list(self.notes),
        )


STRATEGIES = ("output-mix", "kernel-mix", "hard")
"""The deploy form's lowering strategies (`nsr_edge.deploy.STRATEGIES`, repeated here so reading a target's
capabilities needs no torch; a test keeps the two equal)."""

ARTIFACT_KINDS = ("file", "directory")


@dataclass(frozen=True)
class ModelFacts:
    """What a capability check may ask of the model to convert (from its config; no weights, no torch)."""

    arch: str
    scale: int
    channels: int
    sparse: bool  # has NSR sparse convs (False: a dense baseline)
    cardinality: int = 1
    shared_routing: bool = False


@dataclass(frozen=True)
class Requirement:
    """A condition a target puts on the model, with the reason it is needed (said when a request is refused).

    ``holds(facts)`` is True when the model qualifies. Like XNNPACK's per-op ``check_constraints``: the pipeline
    checks every requirement before any work and refuses with the first ``why`` that fails."""

    name: str
    holds: Callable[[ModelFacts], bool]
    why: str
    strategies: tuple[str, ...] = ()  # the strategies it applies to (empty: all)


HARD_DISPATCH_REQUIREMENTS = (
    Requirement("sparse", lambda m: m.sparse,
                "hard dispatch lowers WDSR-NSR models (sparse convs); a dense model has no banks to route "
                "(convert it with --strategy output-mix)", ("hard",)),
    Requirement("cardinality-1", lambda m: m.cardinality == 1,
                "hard dispatch needs cardinality d=1 (one bank per tile and layer; d>1 would need k^d programs per "
                "layer)", ("hard",)),
)
"""What host dispatch of hard-routed models asks of a model, on every target that dispatches."""


@dataclass(frozen=True)
class Capabilities:
    """What a target can do, as data. The pipeline checks every request against it before any work
    (`Capabilities.refusal`), so a request the target cannot serve fails in one line, in well under a second.

    artifact: the main artifact's name in the artifact folder (``model.pte``, ``model.mlpackage``).
    artifact_kind: ``file`` or ``directory`` (a Core ML package is a folder; the card hashes its sorted files).
    runner: module under ``nsr_edge.runtime.runners`` that runs the artifact without the converter stack.
    recipes: recipe names it supports (keys of `RECIPES`).
    calibrated_recipes: recipes that need calibration tiles from real images; the pipeline cuts them (honouring
        ``--calibration-dataset``/``--data-dir``/``--calibration-tiles``) and hands them to `Target.lower` in the
        context, also when the target quantizes inside `lower`.
    strategies: deploy-form strategies it lowers; refused_strategies: strategy -> the measured reason it is refused
        (shown to the user; a refused strategy is never converted, so no artifact that cannot load is written).
    extra_tiles: whether one artifact can hold several tile sizes (``--extra-tiles``; tiles are square).
    multi_program: the artifact holds several programs the host orchestrates (the card's ``dispatch`` section).
    requirements: conditions on the model (`Requirement`), e.g. hard dispatch needs cardinality 1.
    """

    artifact: str
    runner: str
    recipes: tuple[str, ...]
    artifact_kind: str = "file"
    calibrated_recipes: tuple[str, ...] = ()
    strategies: tuple[str, ...] = STRATEGIES
    refused_strategies: dict[str, str] = field(default_factory=dict)
    extra_tiles: bool = True
    multi_program: bool = False
    requirements: tuple[Requirement, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.recipes) - set(RECIPES)
        if unknown:
            raise ValueError(f"capabilities name unknown recipes {sorted(unknown)}")
        if not set(self.calibrated_recipes) <= set(self.recipes):
            raise ValueError("calibrated_recipes must be a subset of recipes")
        if not set(self.strategies) <= set(STRATEGIES) or set(self.refused_strategies) & set(self.strategies):
            raise ValueError("strategies must be known deploy strategies and not also refused")
        if self.artifact_kind not in ARTIFACT_KINDS:
            raise ValueError(f"artifact_kind must be one of {ARTIFACT_KINDS}")

    def needs_calibration(self, recipe: str) -> bool:
        return recipe in self.calibrated_recipes

    def refusal(self, target: str, strategy: str, recipe: str, tiles: Sequence[int],
                model: ModelFacts | None = None) -> str | None:
        """Why this target cannot serve the request (one line), or None when it can."""
        if recipe not in self.recipes:
            return f"target {target} does not support recipe {recipe} (it supports {', '.join(self.recipes)})"
        if strategy in self.refused_strategies:
            return (f"target {target} refuses --strategy {strategy}: {self.refused_strategies[strategy]} "
                    f"(it lowers {' or '.join(self.strategies)})")
        if strategy not in self.strategies:
            return f"target {target} lowers strategy {' or '.join(self.strategies)} only (pass --strategy {self.strategies[0]})"
        if len(tiles) > 1 and not self.extra_tiles:
            return f"target {target} writes one tile size per artifact (no --extra-tiles)"
        if model is not None:
            for req in self.requirements:
                if (not req.strategies or strategy in req.strategies) and not req.holds(model):
                    return f"target {target}: {req.why}"
        return None

    def to_dict(self) -> dict[str, Any]:
        """For `nsr-edge targets --json` and docs: everything but the requirement functions."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "requirements"}
        d["requirements"] = [{"name": r.name, "why": r.why, "strategies": list(r.strategies)} for r in self.requirements]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass
class LoweringContext:
    """Everything `Target.lower` may use besides the module and the example inputs.

    recipe: the resolved recipe. quantized: ``module`` is already PT2E-converted (the pipeline quantized it with the
    target's `pt2e_quantizer`); False for fp32 and for recipes the target quantizes inside `lower`.
    calibration_tiles: float32 array (N, C, T, T) cut from real images by the pipeline for the recipes in
    ``capabilities.calibrated_recipes`` (else None). task: the model's `TaskSpec`. progress: show progress bars.
    strategy: the deploy-form strategy of ``module`` (``hard``: a target that dispatches builds its programs).
    """

    recipe: Recipe
    quantized: bool = False
    calibration_tiles: Any = None
    task: Any = None
    progress: bool = False
    strategy: str = "output-mix"  # the deploy-form strategy ``module`` was made with


@runtime_checkable
class Target(Protocol):
    """A conversion target. Implement these members in one module and list the module in `TARGET_MODULES`
    (docs/adding_a_target.md walks through it).

    name: registry key (``--target``). capabilities: what it can do, as data (`Capabilities`); the pipeline checks
    every request against it before any work.
    """

    name: str
    capabilities: Capabilities

    def check_available(self) -> None:
        """Raise `UserError` (one line, with the install hint) if the target's packages are missing."""

    def pt2e_quantizer(self, recipe: Recipe, model: "nn.Module") -> Any:
        """The PT2E quantizer implementing ``recipe`` for this target, or None when the recipe is fp32 or the
        target quantizes inside `lower`. ``model`` is the deploy-form module (for per-module exclusions)."""

    def lower(self, module: "nn.Module", examples: list["torch.Tensor"], context: LoweringContext) -> LoweringResult:
        """Lower ``module`` (deploy form; PT2E-converted when ``context.quantized``) to artifact bytes, one method per
        example input (the first is the card's tile shape and the method ``forward``)."""


TARGET_MODULES: dict[str, str] = {
    "executorch": "nsr_edge.converters.executorch",
    "coreml": "nsr_edge.converters.coreml",
    "executorch-coreml": "nsr_edge.converters.executorch_coreml",
    "executorch-dispatch": "nsr_edge.converters.executorch_dispatch",
    "onnxruntime": "nsr_edge.converters.onnxruntime",
    "litert": "nsr_edge.converters.litert",
}
"""Target name -> module defining it (imported on first use, so a missing optional stack fails only its target)."""

TARGET_ALIASES: dict[str, str] = {"tflite": "litert"}
"""Names users know a target by -> its registry name (cards always record the registry name)."""

_TARGETS: dict[str, Target] = {}


def register_target(cls: type) -> type:
    """Class decorator used by each target module: instantiate and register under ``cls.name``."""
    inst = cls()
    if not isinstance(inst, Target) or not isinstance(getattr(inst, "capabilities", None), Capabilities):
        raise TypeError(f"{cls.__name__} does not implement the Target protocol (name, capabilities, "
                        "check_available, pt2e_quantizer, lower)")
    _TARGETS[inst.name] = inst
    return cls


def require_modules(target: str, *modules: str) -> None:
    """What a target's ``check_available`` usually is: every module imports, else one line naming the missing one
    and the install command (the converter stacks are the ``full`` extra)."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise UserError(f"target {target} needs {module.split('.')[0]} ({e}); pip install -e '.[full]'") from None


def target_names() -> list[str]:
    return list(TARGET_MODULES)


def describe_targets() -> list[dict[str, Any]]:
    """Every registered target's capabilities (as data) and whether its stack is installed here, with the reason
    when it is not: what `nsr-edge targets` prints."""
    out = []
    for name in TARGET_MODULES:
        try:
            target = get_target(name)
        except UserError as e:
            entry = {"name": name, "available": False, "reason": str(e)}
            if name in _TARGETS:  # the module imported; only its runtime stack is missing
                entry["capabilities"] = _TARGETS[name].capabilities.to_dict()
            out.append(entry)
            continue
        out.append({"name": name, "available": True, "capabilities": target.capabilities.to_dict()})
    return out


def get_target(name: str) -> Target:
    """The target named ``name`` (or one of its `TARGET_ALIASES`), importing its module on first use; one-line
    `UserError` otherwise."""
    name = TARGET_ALIASES.get(name, name)
    if name not in TARGET_MODULES:
        raise UserError(f"unknown target {name!r}; known: {', '.join(TARGET_MODULES)}")
    if name not in _TARGETS:
        import importlib

        try:
            importlib.import_module(TARGET_MODULES[name])
        except ModuleNotFoundError as e:
            raise UserError(f"target {name} is not available: {e} (install the full stack: pip install -e '.[full]')") from None
        if name not in _TARGETS:
            raise UserError(f"target {name}: module {TARGET_MODULES[name]} registered no target named {name!r}")
    target = _TARGETS[name]
    target.check_available()
    return target


# ---------------------------------------------------------------------------------------------------- shared helpers


def method_name(index: int, example: "torch.Tensor") -> str:
    """The artifact method for the ``index``-th example input: ``forward`` (the card's tile), then
    ``forward_<h>x<w>`` for each ``--extra-tiles`` size (`runtime.card.method_name`: the rule runners read too)."""
    from nsr_edge.runtime.card import method_name as rule

    return rule(index, int(example.shape[-2]), int(example.shape[-1]))


def check_output_dir(out: str | os.PathLike, force: bool, kind: str = "artifact", clean: bool = True) -> Path:
    """The rules for an output folder, checked before any long work. A non-empty folder is refused unless
    ``force``, and even then replaced only when nsr-edge wrote it: an artifact folder (``kind="artifact"``: its
    ``model.json`` is an nsr-edge model card) or a demo report (``kind="demo"``: its ``results.json`` says so).
    A file in its place, or a place nothing can be written to, is refused. With ``clean``, temporary folders and
    files an interrupted write into ``out`` left next to it are removed (said on stderr)."""
    from nsr_edge.runtime.files import check_writable, clean_interrupted_writes

    path = Path(out)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise UserError(f"{path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        if not force:
            raise UserError(f"{path} is not empty; pass --force to replace it")
        try:
            if kind == "demo":
                import json

                what = "a demo report (results.json)"
                data = json.loads((path / "results.json").read_text())
            else:
                from nsr_edge.runtime.card import SCHEMA, read_card_json

                what = "an artifact folder (model.json model card)"
                data = read_card_json(path)
            owned = data.get("schema") == ("nsr-edge-demo-report" if kind == "demo" else SCHEMA)
        except (UserError, OSError, ValueError, AttributeError):
            owned = False
        if not owned:
            raise UserError(f"{path} is not {what} written by nsr-edge: --force replaces only those; "
                            "empty or remove it yourself, or choose another --out")
    check_writable(path, "--out")
    if clean:
        clean_interrupted_writes(path)
    return path


@contextmanager
def atomic_output_dir(out: str | os.PathLike, force: bool, kind: str = "artifact") -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``out`` (``.<name>.p<pid>-*.tmp``); on success it replaces ``out``
    in one rename.

    A failure (exception, Ctrl-C) leaves ``out`` exactly as it was and removes the temporary folder; what a SIGKILL
    leaves behind is removed by the next run into ``out`` (`check_output_dir`). With ``force`` an existing ``out``
    (one nsr-edge wrote, see `check_output_dir`) is moved aside first and deleted only after the new folder is in
    place.
    """
    path = check_output_dir(out, force, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.p{os.getpid()}-", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        old = None
        if path.exists():
            check_output_dir(path, force, kind, clean=False)  # re-check: someone may have written there meanwhile
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


__all__ = [
    "FP32_PARTS", "Recipe", "RECIPES", "get_recipe", "STRATEGIES", "ModelFacts", "Requirement", "HARD_DISPATCH_REQUIREMENTS", "Capabilities",
    "LoweringContext", "Fallback", "LoweredMethod", "LoweringResult", "Target",
    "TARGET_MODULES", "TARGET_ALIASES", "register_target", "require_modules", "target_names", "describe_targets", "get_target", "check_output_dir", "atomic_output_dir",
]
