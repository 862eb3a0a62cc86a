"""The model card: the JSON file next to every artifact that says everything about it (design.md, "Artifacts").

Converters write it, and the runtime, the validate/profile commands and the demo apps read it; nothing about I/O is
guessed. The schema is the dataclasses below, one set for the writer and every reader: `ModelCard.to_dict` writes
the JSON, `load_card` type-checks a file against the same classes (one line per error) and returns a `ModelCard`.
`json_schema()` derives the JSON Schema shipped as ``model_card.schema.json`` (for apps and other languages) from
them too, and docs/model_card.md documents every field for an app developer.

Versioning (``version``, ``"MAJOR.MINOR"``): a reader accepts its own major at any minor and ignores fields it does
not know (a newer minor only adds optional fields); it refuses another major with one line. Cards are rewritten
(`record_validation`, `record_profile`) from their raw JSON, so fields a newer minor added survive.

numpy-free and torch-free: this module runs on a device.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Union

from .errors import UserError
from .files import atomic_write_json, file_sha256, path_digest

CARD_FILE = "model.json"
SCHEMA = "nsr-edge-model-card"
VERSION = "2.2"  # 2.1 added reference_outputs, instruction_counts and the records' device; 2.2 tensor_errors
MAJOR = 2
SCHEMA_FILE = Path(__file__).with_name("model_card.schema.json")


class CardError(UserError):
    """A missing, unreadable or inconsistent model card, or an artifact that does not match its card."""


def _f(doc: str, default: Any = MISSING, choices: tuple[Any, ...] | None = None, factory: Any = MISSING,
       readers: str = "", min_items: int = 0) -> Any:
    """A card field with its documentation (JSON Schema ``description``, docs/model_card.md), allowed values and, for
    a list, the fewest items that make sense."""
    meta = {"doc": doc, "choices": choices, "readers": readers, "min_items": min_items}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ------------------------------------------------------------------------------------------------------ the schema


@dataclass
class Source:
    """Where the FP32 model came from. Never a path of the converting machine: cards ship inside apps."""

    kind: str = _f("``zoo`` (a model committed under zoo/) or ``checkpoint`` (a file the user converted)",
                   choices=("zoo", "checkpoint"))
    ref: str = _f("the zoo id, or the checkpoint's file name (no folder)")
    sha256: str = _f("SHA-256 of the checkpoint file; `validate` checks the FP32 reference against it")


@dataclass
class ModelInfo:
    id: str = _f("model id (zoo id or the checkpoint's stem)", readers="apps (title)")
    arch: str = _f("architecture name (``wdsr_nsr``, ``wdsr``)")
    task: dict[str, Any] = _f("`TaskSpec`: ``name`` (sr, denoise, jpeg), ``scale``, ``noise`` (sigma, 0..255), "
                              "``quality`` (JPEG), ``channels`` (1 gray, 3 RGB)", readers="validate, apps")
    scale: int = _f("output size / input size (1 for denoising and deblocking)", readers="runtime, apps")
    channels: int = _f("image channels the model takes and returns: 1 (gray, the Y of YCbCr for RGB photos) or 3",
                       choices=(1, 3), readers="runtime, apps")
    config: dict[str, Any] = _f("the full `ModelConfig` (blocks, width, banks k, cardinality d, routing, ...)")
    params: int = _f("parameters of the deploy form")
    source: Source = _f("the FP32 model this artifact was converted from")
    provenance: dict[str, Any] = _f("the checkpoint's training record (steps, data, seed, ...); may be empty",
                                    factory=dict)


@dataclass
class ArtifactInfo:
    file: str = _f("the artifact's name inside the artifact folder (``model.pte``, ``model.mlpackage``, "
                   "``model.onnx``)", readers="runtime, apps")
    sha256: str = _f("SHA-256 of the file; for a directory, of its sha256sum-style manifest "
                     "(``<hex>  <relative/path>\\n`` per file, sorted by path)", readers="runtime, apps")
    bytes: int = _f("size in bytes (all files, for a directory)")
    kind: str = _f("``file`` or ``directory`` (a Core ML package)", "file", choices=("file", "directory"))
    files: int | None = _f("number of files (directories only)", None)


@dataclass
class TensorSpec:
    name: str = _f("the runtime's tensor name", readers="runtime, apps")
    layout: str = _f("dimension order: ``NCHW``", choices=("NCHW", "NHWC"), readers="runtime, apps")
    dtype: str = _f("element type", choices=("float32", "float16", "int8", "uint8"), readers="runtime, apps")
    range: list[float | None] = _f("[lo, hi] of valid values; null where unbounded (noisy denoiser input)",
                                   readers="apps")
    shape: list[int] = _f("shape of the ``forward`` method", readers="runtime, apps")
    meaning: str = _f("what the values are, in words", "")


@dataclass
class IOSpec:
    inputs: list[TensorSpec] = _f("the model's inputs (one: the image tile)", min_items=1)
    outputs: list[TensorSpec] = _f("the model's outputs (one: the restored tile)", min_items=1)


@dataclass
class MethodSpec:
    name: str = _f("entry point: ``forward`` (the card's tile), then ``forward_<h>x<w>`` per extra tile",
                   readers="runtime, apps")
    input_shape: list[int] = _f("NCHW input shape", readers="runtime, apps")
    output_shape: list[int] = _f("NCHW output shape", readers="runtime, apps")


@dataclass
class FallbackInfo:
    op: str = _f("operator left outside the fast path")
    count: int = _f("how many such nodes")
    reason: str = _f("why (the partitioner's own reason where it gives one)")


@dataclass
class MethodDelegation:
    delegated_ops: int = _f("ops inside the target's fast path (e.g. the XNNPACK delegate)")
    total_ops: int = _f("compute ops in the lowered method")
    partitions: int = _f("delegate subgraphs (1 is best)")
    fully_delegated: bool = _f("every compute op is in the fast path")
    fallbacks: list[FallbackInfo] = _f("op kinds outside it, with reasons", factory=list)


@dataclass
class Delegation:
    backend: str = _f("``XNNPACK``, ``CoreML``, ``ORT-CPU``, ...")
    methods: dict[str, MethodDelegation] = _f("per method name")
    notes: list[str] = _f("what a user should know about placement", factory=list)


@dataclass
class DispatchStage:
    name: str = _f("stage name (``stem``, ``block0.conv0``, ...)")
    methods: list[str] = _f("program methods: one per bank (the route chooses), or one", readers="dispatch runner, apps",
                            min_items=1)
    inputs: list[str] = _f("environment names passed to the method, in order", readers="dispatch runner, apps")
    outputs: list[str] = _f("environment names its outputs are stored under, in order", readers="dispatch runner, apps")
    route: str | None = _f("environment name of the logits whose argmax (first index on ties) picks the method; "
                           "absent for single-method stages", None, readers="dispatch runner, apps")


@dataclass
class Dispatch:
    """Hard-routed orchestration (``target_extra.dispatch``): the host runs the stages in order on one tile."""

    mode: str = _f("``layer`` (one call per sparse conv) or ``block`` (one per residual block)",
                   choices=("layer", "block"))
    banks: int = _f("banks k: methods per routed stage")
    cardinality: int = _f("cardinal groups d (1: one bank per tile and stage)")
    batch: int = _f("batch of every program (1)")
    layout: str = _f("memory layout of every program input/output, the tile included", choices=("channels_last",),
                     readers="dispatch runner, apps")
    stages: list[DispatchStage] = _f("the stages, in order; the environment starts with ``tile`` and ends with "
                                     "``output``", readers="dispatch runner, apps", min_items=1)
    routing: str = _f("how the host picks a bank, in words")
    calls_per_tile: int = _f("program calls per tile")
    programs: dict[str, dict[str, Any]] = _f("per program: input shapes, output shape, delegation counts",
                                             factory=dict)
    io_dtype: str = _f("dtype of program inputs/outputs", "float32", choices=("float32",))
    routers: str = _f("precision of the routing heads", "float32", choices=("float32", "int8"))
    calibration: dict[str, Any] | None = _f("INT8 only: per-program calibration tile counts", None)


@dataclass
class DeviceInfo:
    """The machine a validation, profile or instruction count ran on (``--device``), as read on that machine."""

    name: str = _f("the ``--device`` value: ``local``, ``ssh:USER@HOST:PORT``, ``adb:SERIAL``, ``arm-emu:CPU``")
    transport: str = _f("how nsr-edge reached it", choices=("local", "ssh", "adb", "arm-emu"))
    arch: str = _f("machine architecture (``x86_64``, ``aarch64``)")
    cpu_model: str = _f("CPU model as the OS names it (``/proc/cpuinfo``; the emulated CPU under ``arm-emu``)")
    cores: int = _f("online CPU cores")
    isa_features: list[str] = _f("ISA features that select kernels (``asimd``, ``asimddp``, ``i8mm``, ``sve``, "
                                 "``avx2``, ``avx512_vnni``, ...)", factory=list)
    governor: str | None = _f("cpufreq governor of cpu0 where readable", None)
    os: str = _f("kernel / OS release", "")
    python: str = _f("Python version of the runner", "")
    runtime: str = _f("runtime package and version that ran the artifact (``tflite-runtime 2.14.0``, ...)", "")
    threads: int | None = _f("runtime threads", None)
    emulated: bool = _f("true under ``arm-emu`` (qemu): never a latency", False)


@dataclass
class ReferenceOutputs:
    """Real tiles with the FP32 PyTorch model's outputs, stored beside the artifact by ``convert`` so that ``validate``
    can compare against the reference where PyTorch is absent (a phone, a board, the torch-free device venv)."""

    file: str = _f("``.npz`` in the artifact folder: ``inputs`` and ``outputs``, float32 NCHW", readers="runtime")
    sha256: str = _f("SHA-256 of the file", readers="runtime")
    tiles: int = _f("number of tiles")
    input_shape: list[int] = _f("shape of ``inputs`` (N, C, H, W)", readers="runtime")
    output_shape: list[int] = _f("shape of ``outputs`` (N, C, sH, sW)", readers="runtime")
    dataset: str = _f("where the tiles were cut from (data set name)")
    model: str = _f("what produced ``outputs``: the FP32 PyTorch training form of the model the card names")


@dataclass
class TensorError:
    """One tensor of the float model compared with the same-named tensor of the quantized one."""

    name: str = _f("the tensor's name in the ``.tflite`` (litert-torch writes the module path, ``;`` and an index)")
    kind: str = _f("where the tensor sits", choices=("output", "intermediate", "constant", "input"))
    quantized: bool = _f("stored as integers in the artifact (int8 activations and weights, int32 biases); false: "
                         "float there, its error comes from int8 ops upstream")
    mse: float = _f("mean squared difference, quantized vs float (the tensor's own units)")
    op: str | None = _f("the op that produces it (for a constant: the first op that reads it)", None)
    snr_db: float | None = _f("10*log10 of the validator's SNR (float tensor power / squared error, averaged over "
                              "the samples); lower is worse; null: the float tensor is zero, the quantized one not",
                              None)
    part: str | None = _f("the recipe ``fp32_parts`` entry whose ``no_quantize`` rule covers the tensor's op (keep "
                          "it float with ``--fp32-parts``); null: no part does (e.g. a bank conv)", None)


@dataclass
class SignatureTensorErrors:
    tensors: int = _f("tensors compared (every tensor of the signature's subgraph present in both models)")
    exact: int = _f("of those, identical in both models (error 0: not ranked)")
    median_snr_db: float | None = _f("median ``snr_db`` of the ranked tensors", None)
    worst_snr_db: float | None = _f("lowest ``snr_db``", None)
    output_snr_db: float | None = _f("lowest ``snr_db`` of the signature's outputs", None)
    worst_int8_snr_db: float | None = _f("lowest ``snr_db`` of the tensors stored as integers (``quantized``)", None)
    int8_parts: dict[str, float | None] = _f("per ``fp32_parts`` entry that still covers integer tensors: their "
                                             "lowest ``snr_db`` (adding the part to ``--fp32-parts`` keeps them "
                                             "float)", factory=dict)
    worst: list[TensorError] = _f("the lowest-SNR tensors, worst first (at most ``TensorErrorReport.top``)",
                                  factory=list)


@dataclass
class TensorErrorReport:
    """INT8 only (LiteRT): per-tensor error of the quantized model against its float model, from the quantizer's
    own validation, on real calibration tiles. Errors are cumulative: a tensor's error includes what every int8 op
    before it added."""

    tool: str = _f("validator and version (``ai-edge-quantizer 0.10.0``)")
    metric: str = _f("ranking metric of ``worst``", choices=("snr_db",))
    samples: int = _f("inputs each signature was run on (per signature: its own calibration inputs)")
    data: str = _f("where the samples came from, in words")
    kernels: str = _f("kernels both models ran on (every intermediate tensor must be written)")
    top: int = _f("most tensors listed per signature in ``worst``")
    signatures: dict[str, SignatureTensorErrors] = _f("per signature (``serving_default`` for a single-graph "
                                                      "model; one per program under hard dispatch)")
    file: str | None = _f("JSON in the artifact folder with every ranked tensor, same fields as ``worst``", None)
    sha256: str | None = _f("SHA-256 of ``file``", None)


@dataclass
class ValidationRecord:
    """One validation run (``nsr-edge validate --record``, the demo): the same shape whoever wrote it."""

    dataset: str = _f("data set name or folder")
    images: int = _f("images validated")
    summary: dict[str, float | int | None] = _f("means over the images: ``psnr_y``, ``ssim_y`` (vs ground truth), "
                                                "``psnr_y_fp32``, ``drop_db``, ``psnr_vs_reference``, "
                                                "``max_abs_vs_reference`` (vs the FP32 model; absent without it)")
    passed: bool = _f("every tolerance held and every output was finite")
    runner: str = _f("runner that ran the artifact (and its backend where it has one)")
    recorded: str = _f("ISO-8601 UTC time of the run")
    tolerances: dict[str, float | None] = _f("the limits checked (``max_drop_db``, ``min_psnr_vs_reference``, "
                                             "``max_abs``); null: not checked", factory=dict)
    device: DeviceInfo | None = _f("where it ran (absent: the converting host, before 2.1)", None)


@dataclass
class ProfileRecord:
    """One latency measurement (``nsr-edge profile --record``, the demo) on the machine named."""

    method: str = _f("method timed")
    tile: int = _f("tile side")
    threads: int = _f("runtime threads")
    runs: int = _f("timed runs")
    warmup: int = _f("untimed warm-up runs")
    median_ms: float = _f("median latency per tile (ms)")
    p90_ms: float = _f("90th percentile (ms)")
    ms_per_megapixel: float = _f("median per output megapixel at the tiling stride")
    peak_rss_mb: float = _f("peak resident memory of the runner process (MB)")
    machine: str = _f("where it ran (platform, processor)")
    recorded: str = _f("ISO-8601 UTC time of the run")
    stats: dict[str, float] = _f("the other statistics (mean, min, max, ms_per_megapixel_tile)", factory=dict)
    device: DeviceInfo | None = _f("where it ran (absent: the converting host, before 2.1)", None)


@dataclass
class InstructionCountRecord:
    """Guest instructions of one inference under ARM emulation (``profile --device arm-emu:CPU``): work on the real
    ARM kernels, comparable between artifacts on the same emulated CPU. Instructions, not cycles, never seconds."""

    method: str = _f("method counted")
    tile: int = _f("tile side")
    cpu: str = _f("emulated CPU (qemu ``-cpu``)")
    per_tile: int = _f("guest instructions per tile (inference call only)")
    per_megapixel: float = _f("per output megapixel at the tiling stride")
    runs: int = _f("repeated counts taken")
    spread: float = _f("(max - min) / min over the runs")
    recorded: str = _f("ISO-8601 UTC time of the run")
    classes: dict[str, int] = _f("per tile by class: ``simd``, ``dot`` (SDOT/UDOT), ``i8mm``, ``sve``, ``scalar``",
                                 factory=dict)
    device: DeviceInfo | None = _f("the emulated device", None)


@dataclass
class ModelCard:
    schema: str = _f("always ``nsr-edge-model-card``", choices=(SCHEMA,), readers="all")
    version: str = _f("``MAJOR.MINOR``; readers accept their major at any minor", readers="all")
    created: str = _f("ISO-8601 UTC time of the conversion")
    model: ModelInfo = _f("the model")
    target: str = _f("conversion target (``executorch``, ``coreml``, ``executorch-dispatch``, ...)")
    runner: str = _f("runner that runs it: ``executorch``, ``coreml``, ``dispatch``, ``onnxruntime``",
                     readers="runtime, apps")
    artifact: ArtifactInfo = _f("the artifact file or folder", readers="runtime, apps")
    strategy: str = _f("deploy-form lowering: ``output-mix``, ``kernel-mix``, ``hard``",
                       choices=("output-mix", "kernel-mix", "hard"))
    recipe: dict[str, Any] = _f("the quantization recipe: ``name``, ``weights``, ``activations``, ``method``, "
                                "``per_channel``, ``fp32_parts``, ...", readers="apps (label)")
    tile: dict[str, Any] = _f("the tiling contract (`TileSpec`): ``tile``, ``pad``, ``stride``, ``edge_strips``, "
                              "``edge_weight``, ``pad_mode``, ``whole_below``", readers="runtime, apps")
    io: IOSpec = _f("inputs and outputs", readers="runtime, apps")
    methods: list[MethodSpec] = _f("entry points; the first is ``forward`` at the card's tile",
                                   readers="runtime, apps", min_items=1)
    delegation: Delegation = _f("what ran where")
    tools: dict[str, str] = _f("versions of Python, the platform and every package that took part")
    quantization: dict[str, Any] | None = _f("calibration (data set, tiles, seed, tile) of calibrated recipes, "
                                             "whoever quantizes (the pipeline's PT2E or the target's own converter, "
                                             "which may add details under ``target_extra``), and the QAT summary; "
                                             "null for recipes without calibration", None)
    target_extra: dict[str, Any] = _f("target-specific sections: ``dispatch`` (`Dispatch`), ``coreml``, ``onnx``",
                                      factory=dict, readers="dispatch runner, apps")
    validation: list[ValidationRecord] = _f("validation runs, newest last (one per data set and runner)",
                                            factory=list)
    profile: list[ProfileRecord] = _f("latency runs, newest last (one per method, threads and machine)",
                                      factory=list)
    auto: dict[str, Any] | None = _f("``--strategy auto``: the tolerance, check set and every candidate's numbers",
                                     None)
    reference_outputs: ReferenceOutputs | None = _f("stored FP32 reference tiles for torch-free validation", None,
                                                    readers="runtime")
    instruction_counts: list[InstructionCountRecord] = _f("ARM-emulation instruction counts, newest last (one per "
                                                          "method and CPU)", factory=list)
    tensor_errors: TensorErrorReport | None = _f("INT8 LiteRT: per-tensor float-vs-quantized error (the worst "
                                                 "tensors per signature)", None, readers="validate")

    # ---------------------------------------------------------------------------------------------- conveniences
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def task(self):
        """The model's `TaskSpec`."""
        from .tasks import TaskSpec

        return TaskSpec.from_dict(self.model.task)

    @property
    def dispatch(self) -> Dispatch | None:
        """The hard-dispatch orchestration, typed, if the card has one."""
        plan = self.target_extra.get("dispatch")
        return None if plan is None else _parse(plan, Dispatch, "target_extra.dispatch")

    @property
    def title(self) -> str:
        return f"{self.model.id} {self.target} {self.recipe.get('name')} ({self.strategy}, tile {self.tile.get('tile')})"


# ------------------------------------------------------------------------- typed reading, from the same classes


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return "list"
    if origin is dict:
        return "object"
    if is_dataclass(tp):
        return "object"
    return {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}.get(tp, "any")


def _check(value: Any, tp: Any, path: str, errors: list[str]) -> None:
    """Append ``path: expected X, got Y`` for every mismatch between ``value`` and the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return
    if origin in (Union, types.UnionType):
        alts = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is not None and len(alts) == 1 and is_dataclass(alts[0]):  # optional record: name the inner field
            _check(value, alts[0], path, errors)
            return
        for alt in typing.get_args(tp):
            trial: list[str] = []
            _check(value, alt, path, trial)
            if not trial:
                return
        errors.append(f"{path}: expected {_type_name(tp)}, got {_json_name(value)}")
        return
    if is_dataclass(tp):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected an object, got {_json_name(value)}")
            return
        hints = _hints(tp)
        for f in fields(tp):
            sub = f"{path}.{f.name}" if path else f.name
            if f.name not in value:
                if f.default is MISSING and f.default_factory is MISSING:
                    errors.append(f"{sub}: missing")
                continue
            _check(value[f.name], hints[f.name], sub, errors)
            choices = f.metadata.get("choices")
            if choices and value[f.name] is not None and value[f.name] not in choices:
                errors.append(f"{sub}: {value[f.name]!r} is not one of {', '.join(map(str, choices))}")
            least = f.metadata.get("min_items", 0)
            if least and isinstance(value[f.name], list) and len(value[f.name]) < least:
                errors.append(f"{sub}: needs at least {least} item(s), got {len(value[f.name])}")
        return
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {_json_name(value)}")
            return
        (item,) = typing.get_args(tp)
        for i, v in enumerate(value):
            _check(v, item, f"{path}[{i}]", errors)
        return
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected an object, got {_json_name(value)}")
            return
        _, item = typing.get_args(tp)
        for k, v in value.items():
            _check(v, item, f"{path}.{k}", errors)
        return
    ok = {str: lambda v: isinstance(v, str), bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          type(None): lambda v: v is None}[tp](value)
    if not ok:
        errors.append(f"{path}: expected {_type_name(tp)}, got {_json_name(value)}")


def _json_name(value: Any) -> str:
    kind = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)
    shown = json.dumps(value)[:40] if not isinstance(value, (dict, list)) else ""
    return f"{kind} {shown}".strip()


def _build(value: Any, tp: Any) -> Any:
    """Typed objects from checked JSON (unknown keys dropped: a newer minor's fields)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        alts = [a for a in typing.get_args(tp) if a is not type(None)]
        for alt in alts:
            trial: list[str] = []
            _check(value, alt, "", trial)
            if not trial:
                return _build(value, alt)
        return value
    if is_dataclass(tp):
        hints = _hints(tp)
        return tp(**{f.name: _build(value[f.name], hints[f.name]) for f in fields(tp) if f.name in value})
    if origin is list:
        (item,) = typing.get_args(tp)
        return [_build(v, item) for v in value]
    if origin is dict:
        _, item = typing.get_args(tp)
        return {k: _build(v, item) for k, v in value.items()}
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def _parse(data: Any, cls: type, where: str) -> Any:
    errors: list[str] = []
    _check(data, cls, "", errors)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise CardError(f"{where}: model card field {errors[0]}{more}")
    return _build(data, cls)


def parse_card(data: Any, where: str = "model card") -> ModelCard:
    """A `ModelCard` from parsed JSON: schema name and major version first, then every field's type."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        got = data.get("schema") if isinstance(data, dict) else None
        raise CardError(f"{where}: not an nsr-edge model card (schema {got!r})")
    version = data.get("version")
    major = _major(version)
    if major is None:
        raise CardError(f"{where}: model card version {version!r} is not MAJOR.MINOR (written by an older "
                        f"nsr-edge; convert again)")
    if major != MAJOR:
        raise CardError(f"{where}: model card version {version} is not supported: this nsr-edge reads "
                        f"{MAJOR}.x ({'upgrade nsr-edge' if major > MAJOR else 'convert again'})")
    return _parse(data, ModelCard, where)


def _major(version: Any) -> int | None:
    if not isinstance(version, str):
        return None
    head, _, minor = version.partition(".")
    return int(head) if head.isdigit() and minor.isdigit() else None


# ------------------------------------------------------------------------------------------- reading and writing


def read_card_json(artifact_dir: str | os.PathLike) -> dict[str, Any]:
    """The raw JSON of ``DIR/model.json`` (no type check): for rewriting a card without losing unknown fields."""
    folder = Path(artifact_dir)
    if not folder.is_dir():
        raise CardError(f"{folder}: no such artifact folder")
    path = folder / CARD_FILE
    if not path.is_file():
        raise CardError(f"{folder}: no {CARD_FILE} model card (was it written by `nsr-edge convert`?)")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CardError(f"{path}: not a readable JSON model card ({e})") from None


def load_card(artifact_dir: str | os.PathLike) -> ModelCard:
    """Read and type-check ``DIR/model.json``; one-line `CardError` naming the first bad field otherwise."""
    return parse_card(read_card_json(artifact_dir), str(Path(artifact_dir) / CARD_FILE))


def write_card(artifact_dir: str | os.PathLike, card: ModelCard | dict[str, Any]) -> None:
    """Write ``DIR/model.json`` atomically, after checking it against the schema and that it names no absolute path
    of this machine (a writer bug fails here, not in an app). Every card goes through this function."""
    data = card.to_dict() if isinstance(card, ModelCard) else card
    parse_card(data, "card being written")
    where = next(_absolute_paths(data, ""), None)
    if where is not None:
        raise CardError(f"card being written holds an absolute path at {where}: cards ship inside apps "
                        "(record a file name; see portable())")
    atomic_write_json(Path(artifact_dir) / CARD_FILE, data)


def portable(value: Any) -> Any:
    """``value`` (JSON-like) with every absolute path replaced by its file name: what a card may say of a file on
    the converting machine (e.g. a checkpoint's training provenance: ``init_from``, ``distill_from``)."""
    if isinstance(value, str):
        return value.replace("\\", "/").rsplit("/", 1)[-1] if _is_absolute(value) else value
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    return value


def _is_absolute(text: str) -> bool:
    return os.path.isabs(text) or (len(text) > 2 and text[1] == ":" and text[2] in "\\/")  # POSIX or C:\


def _absolute_paths(value: Any, path: str):
    if isinstance(value, str) and _is_absolute(value):
        yield path
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _absolute_paths(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _absolute_paths(v, f"{path}[{i}]")


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def record_validation(artifact_dir: str | os.PathLike, record: ValidationRecord) -> None:
    """Add a validation run to the card, replacing an earlier one for the same data set, runner and device."""
    _record(artifact_dir, "validation", asdict(record), ("dataset", "runner", "device.name"))


def record_profile(artifact_dir: str | os.PathLike, record: ProfileRecord) -> None:
    """Add a latency run to the card, replacing an earlier one for the same method, threads, machine and device."""
    _record(artifact_dir, "profile", asdict(record), ("method", "threads", "machine", "device.name"))


def record_instruction_count(artifact_dir: str | os.PathLike, record: InstructionCountRecord) -> None:
    """Add an ARM-emulation instruction count to the card, replacing an earlier one for the same method and CPU."""
    _record(artifact_dir, "instruction_counts", asdict(record), ("method", "cpu"))


def _lookup(record: dict[str, Any], dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _record(artifact_dir: str | os.PathLike, key: str, record: dict[str, Any], same: tuple[str, ...]) -> None:
    data = read_card_json(artifact_dir)
    load_card(artifact_dir)  # refuse to add to a broken card
    kept = [r for r in (data.get(key) or []) if any(_lookup(r, k) != _lookup(record, k) for k in same)]
    data[key] = kept + [record]
    write_card(artifact_dir, data)


def artifact_path(artifact_dir: str | os.PathLike, card: ModelCard, verify: bool = True) -> Path:
    """The artifact file (or folder) the card describes; with ``verify`` its size and SHA-256 must match the card."""
    art = card.artifact
    if Path(art.file).name != art.file or art.file in ("", ".", ".."):
        raise CardError(f"model card names an artifact outside its folder: {art.file!r}")
    path = Path(artifact_dir) / art.file
    exists = path.is_dir() if art.kind == "directory" else path.is_file()
    if not exists:
        raise CardError(f"{path}: the artifact named by the model card is missing")
    if verify:
        try:
            digest = path_digest(path)
        except ValueError as e:
            raise CardError(f"{path}: {e}; an artifact is plain files") from None
        if digest["bytes"] != art.bytes or digest["sha256"] != art.sha256:
            raise CardError(f"{path} does not match its model card (size/SHA-256 differ): it was replaced or "
                            "corrupted after conversion; convert again")
    return path


def tile_spec(card: ModelCard):
    """The card's tiling contract as a `tiling.TileSpec`."""
    from .tiling import TileSpec

    try:
        return TileSpec.from_dict(card.tile)
    except (TypeError, ValueError) as e:
        raise CardError(f"model card tile contract is invalid: {e}") from None


# ------------------------------------------------------------------- the one method-naming rule (writers, runners)


def method_name(index: int, height: int, width: int) -> str:
    """The artifact method for the ``index``-th tile size of a conversion: ``forward`` (the card's tile), then
    ``forward_<h>x<w>`` for each ``--extra-tiles`` size. Every target and runner names methods this way."""
    return "forward" if index == 0 else f"forward_{height}x{width}"


def method_tile(name: str) -> tuple[int, int] | None:
    """The (h, w) an extra-tile method is named for, None for ``forward`` (the card's tile); CardError otherwise."""
    if name == "forward":
        return None
    h, _, w = name.removeprefix("forward_").partition("x")
    if name.startswith("forward_") and h.isdigit() and w.isdigit():
        return int(h), int(w)
    raise CardError(f"{name!r} is not an nsr-edge method name (forward, or forward_<h>x<w>)")


def method_file(stem: str, suffix: str, method: str) -> str:
    """For targets with one file per method (ONNX, LiteRT): ``model.onnx`` holds ``forward``,
    ``model_forward_48x48.onnx`` holds ``forward_48x48``."""
    method_tile(method)  # refuse names outside the rule
    return f"{stem}{suffix}" if method == "forward" else f"{stem}_{method}{suffix}"


def method_for_tile(card: ModelCard, tile: int | None = None) -> MethodSpec:
    """The method whose input tile is ``tile`` (default: the card's tile, i.e. ``forward``)."""
    if tile is None:
        return card.methods[0]
    for m in card.methods:
        if m.input_shape[-1] == tile and m.input_shape[-2] == tile:
            return m
    have = ", ".join(f"{m.input_shape[-2]}x{m.input_shape[-1]}" for m in card.methods)
    raise CardError(f"the artifact has no method for tile {tile} (it has {have})")


# ------------------------------------------------------------------------------------------------ the JSON Schema


def _schema_of(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    if tp is Any:
        return {}
    if origin in (Union, types.UnionType):
        return {"anyOf": [_schema_of(a, defs) for a in typing.get_args(tp)]}
    if is_dataclass(tp):
        name = tp.__name__
        if name not in defs:
            defs[name] = {}  # reserve (recursion)
            hints = _hints(tp)
            props, required = {}, []
            for f in fields(tp):
                s = _schema_of(hints[f.name], defs)
                if f.metadata.get("doc"):
                    s = {**s, "description": f.metadata["doc"]}
                if f.metadata.get("choices"):
                    s = {**s, "enum": list(f.metadata["choices"]) + ([None] if f.default is None else [])}
                if f.metadata.get("min_items"):
                    s = {**s, "minItems": f.metadata["min_items"]}
                props[f.name] = s
                if f.default is MISSING and f.default_factory is MISSING:
                    required.append(f.name)
            defs[name] = {"type": "object", "properties": props, "required": required,
                          "additionalProperties": True}  # a newer minor may add fields
            if tp.__doc__ and not tp.__doc__.startswith(f"{name}("):
                defs[name]["description"] = " ".join(tp.__doc__.split())
        return {"$ref": f"#/$defs/{name}"}
    if origin is list:
        return {"type": "array", "items": _schema_of(typing.get_args(tp)[0], defs)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _schema_of(typing.get_args(tp)[1], defs)}
    return {"type": {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}[tp]}


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a model card, derived from the dataclasses above."""
    defs: dict[str, Any] = {}
    _schema_of(ModelCard, defs)
    _schema_of(Dispatch, defs)  # target_extra.dispatch: typed for apps too
    root = defs.pop("ModelCard")
    root["properties"]["version"] = {**root["properties"]["version"], "pattern": rf"^{MAJOR}\.[0-9]+$"}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"{SCHEMA}-{MAJOR}",
            "title": f"nsr-edge model card, version {MAJOR}.x", **root, "$defs": defs}


def field_reference() -> str:
    """The per-field reference of docs/model_card.md (markdown), derived from the dataclasses."""
    out = []
    for cls in (ModelCard, ModelInfo, Source, ArtifactInfo, IOSpec, TensorSpec, MethodSpec, Delegation,
                MethodDelegation, FallbackInfo, Dispatch, DispatchStage, ValidationRecord, ProfileRecord,
                InstructionCountRecord, DeviceInfo, ReferenceOutputs, TensorErrorReport,
                SignatureTensorErrors, TensorError):
        hints = _hints(cls)
        out.append(f"### `{cls.__name__}`\n")
        if cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}("):
            out.append(" ".join(cls.__doc__.split()) + "\n")
        out.append("| field | type | required | meaning | read by |\n|---|---|---|---|---|")
        for f in fields(cls):
            required = "yes" if f.default is MISSING and f.default_factory is MISSING else "no"
            doc = f.metadata.get("doc", "")
            if f.metadata.get("choices"):
                doc += " (one of " + ", ".join(f"`{c}`" for c in f.metadata["choices"]) + ")"
            tname = _doc_type(hints[f.name])
            out.append(f"| `{f.name}` | {tname} | {required} | {doc.replace('|', '/')} | "
                       f"{f.metadata.get('readers') or '-'} |")
        out.append("")
    return "\n".join(out)


def _doc_type(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_doc_type(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_doc_type(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"map to {_doc_type(typing.get_args(tp)[1])}"
    if is_dataclass(tp):
        return f"`{tp.__name__}`"
    return {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}.get(tp, "any")


def main() -> None:  # python -m nsr_edge.runtime.card > runtime/model_card.schema.json
    print(json.dumps(json_schema(), indent=2))


if __name__ == "__main__":
    main()


__all__ = ["CARD_FILE", "SCHEMA", "VERSION", "MAJOR", "SCHEMA_FILE", "CardError", "Source", "ModelInfo",
           "ArtifactInfo", "TensorSpec", "IOSpec", "MethodSpec", "FallbackInfo", "MethodDelegation", "Delegation",
           "DispatchStage", "Dispatch", "TensorError", "SignatureTensorErrors", "TensorErrorReport", "ValidationRecord", "ProfileRecord", "ModelCard", "parse_card",
           "read_card_json", "load_card", "write_card", "portable", "now_utc", "record_validation", "record_profile",
           "artifact_path", "tile_spec", "method_name", "method_tile", "method_file", "method_for_tile", "json_schema", "field_reference", "file_sha256"]
