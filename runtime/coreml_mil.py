"""A reference evaluator for Core ML ML programs: read a saved ``.mlpackage`` and run its MIL program op by op.

coremltools converts and compresses models on Linux but can only *run* them on macOS, and it ships no reference
executor. This module closes that gap for the graphs nsr-edge produces: it parses the package's protobuf
(``Data/com.apple.CoreML/model.mlmodel``) and weight blob file (``weights/weight.bin``) itself and evaluates every
operation with numpy kernels, so the numerics of a Core ML artifact can be checked without a Mac.

What it verifies: the graph's meaning (every op, its attributes and wiring), the stored weights (fp32 / fp16 / int8
blobs), quantization scales and zero points (``constexpr_affine_dequantize``, ``constexpr_blockwise_shift_scale``,
activation ``quantize``/``dequantize``), shapes (every op's result is checked against the shape the package declares)
and fp16 storage (every fp16-typed result is rounded to fp16, as it is stored between ops). What it cannot verify:
the arithmetic inside Apple's kernels (ANE/GPU accumulation order and precision), compute-unit placement, latency.
Kernels here accumulate in float32 (float64 for fp32 convolutions in the numpy backend) and round each result to
its declared dtype.

Dependencies: **numpy only**. The protobuf wire format is decoded by hand (no ``protobuf``, no ``coremltools``
import), so the module runs in the torch-free device/runtime environment. Optional speed-up: with
``backend="auto"`` (the default) and torch *already imported* by the caller, convolutions and matmuls run through
``torch.nn.functional``; this module never imports torch itself unless ``backend="torch"`` is asked for.

Supported MIL ops (others raise ``MilUnsupportedOpError`` naming the op): see ``SUPPORTED_OPS``.

Usage::

    package = load_mlpackage("model.mlpackage")
    ev = MilEvaluator(package)
    out = ev.run({"lr": tile})["sr"]
    ranges = ev.activation_ranges(tiles)  # per-tensor min/max, for activation-quantization calibration
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

__all__ = [
    "SUPPORTED_OPS",
    "Block",
    "FeatureSpec",
    "Function",
    "MilError",
    "MilEvaluator",
    "MilPackage",
    "MilUnsupportedOpError",
    "Operation",
    "TensorType",
    "coreml_payloads",
    "load_artifact",
    "load_mlpackage",
    "load_model_spec",
    "unflatten_directory",
]

MODEL_SPEC_PATH = "Data/com.apple.CoreML/model.mlmodel"
WEIGHTS_DIR = "Data/com.apple.CoreML/weights"


class MilError(UserError):
    """A package this evaluator cannot read or run (malformed, unsupported feature, wrong inputs)."""


class MilUnsupportedOpError(MilError):
    """An op type the evaluator has no kernel for."""


# ------------------------------------------------------------------------------------------- protobuf wire format
# Field numbers below come from coremltools' MIL.proto / Model.proto / FeatureTypes.proto (coremltools 9.0);
# tests/test_coreml_mil.py decodes packages with coremltools' own generated classes and compares.


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise MilError("malformed protobuf: varint too long")


def _fields(buf: bytes) -> Iterable[tuple[int, int, Any]]:
    """(field number, wire type, value) for every field of one message; length-delimited values stay bytes."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 1:
            val, pos = buf[pos : pos + 8], pos + 8
        elif wt == 2:
            n, pos = _varint(buf, pos)
            val, pos = buf[pos : pos + n], pos + n
        elif wt == 5:
            val, pos = buf[pos : pos + 4], pos + 4
        else:
            raise MilError(f"malformed protobuf: unsupported wire type {wt}")
        if pos > end:
            raise MilError("malformed protobuf: truncated message")
        yield num, wt, val


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _packed_varints(wt: int, val: Any) -> list[int]:
    if wt == 0:
        return [_signed64(val)]
    out, pos = [], 0
    while pos < len(val):
        v, pos = _varint(val, pos)
        out.append(_signed64(v))
    return out


def _map_entry(buf: bytes) -> tuple[str, bytes]:
    key, value = "", b""
    for num, _, val in _fields(buf):
        if num == 1:
            key = val.decode()
        elif num == 2:
            value = val
    return key, value


# ------------------------------------------------------------------------------------------------ MIL structures

# MIL.proto DataType -> numpy dtype (sub-byte and 8-bit float types are not supported).
_MIL_DTYPES: dict[int, Any] = {
    1: np.bool_, 2: np.str_, 10: np.float16, 11: np.float32, 12: np.float64,
    21: np.int8, 22: np.int16, 23: np.int32, 24: np.int64, 31: np.uint8, 32: np.uint16, 33: np.uint32, 34: np.uint64,
}
_MIL_DTYPE_NAMES = {
    0: "unused", 1: "bool", 2: "string", 10: "fp16", 11: "fp32", 12: "fp64", 13: "bf16", 21: "int8", 22: "int16",
    23: "int32", 24: "int64", 25: "int4", 31: "uint8", 32: "uint16", 33: "uint32", 34: "uint64", 35: "uint4",
    36: "uint2", 37: "uint1", 38: "uint6", 39: "uint3", 40: "fp8e4m3", 41: "fp8e5m2",
}
# Names used by the `cast` op and by quantize's output_dtype.
_DTYPE_BY_NAME = {
    "fp16": np.float16, "fp32": np.float32, "fp64": np.float64, "int8": np.int8, "uint8": np.uint8,
    "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "int64": np.int64, "bool": np.bool_,
}
# Blob storage dtype codes (MIL weight file metadata) for the dtypes we read.
_BLOB_DTYPES = {1: np.float16, 2: np.float32, 3: np.uint8, 4: np.int8}


@dataclass
class TensorType:
    """A tensor type: MIL dtype code and shape (None for a dimension unknown until run time)."""

    dtype: int
    shape: tuple[int | None, ...]

    @property
    def np_dtype(self) -> Any:
        if self.dtype not in _MIL_DTYPES:
            raise MilError(f"unsupported MIL data type {_MIL_DTYPE_NAMES.get(self.dtype, self.dtype)}")
        return _MIL_DTYPES[self.dtype]

    @property
    def dtype_name(self) -> str:
        return _MIL_DTYPE_NAMES.get(self.dtype, str(self.dtype))

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype_name}[{dims}]"


def _parse_dimension(buf: bytes) -> int | None:
    for num, _, val in _fields(buf):
        if num == 1:  # ConstantDimension
            for n2, _, v2 in _fields(val):
                if n2 == 1:
                    return int(v2)
            return 0
        if num == 2:  # UnknownDimension
            return None
    return None


def _parse_value_type(buf: bytes) -> TensorType | None:
    """ValueType -> TensorType; list/tuple/dict/state types are not used by our graphs (None)."""
    for num, _, val in _fields(buf):
        if num == 1:
            dtype, dims = 0, []
            for n2, _, v2 in _fields(val):
                if n2 == 1:
                    dtype = v2
                elif n2 == 3:
                    dims.append(_parse_dimension(v2))
            return TensorType(dtype, tuple(dims))
    return None


def _parse_named_value_type(buf: bytes) -> tuple[str, TensorType | None]:
    name, vtype = "", None
    for num, _, val in _fields(buf):
        if num == 1:
            name = val.decode()
        elif num == 2:
            vtype = _parse_value_type(val)
    return name, vtype


@dataclass
class BlobRef:
    file: str
    offset: int


@dataclass
class ConstValue:
    """A constant: an immediate numpy value or a reference into the weight blob file."""

    type: TensorType | None
    value: Any = None
    blob: BlobRef | None = None


def _tensor_value(buf: bytes, ttype: TensorType | None) -> Any:
    """TensorValue -> numpy array (or str for a scalar string) with the declared dtype and shape."""
    kind, data = None, None
    for num, _, val in _fields(buf):
        kind, payload = num, val
        items: list[Any] = []
        for n2, wt2, v2 in _fields(payload):
            if n2 != 1:
                continue
            if num == 1:  # floats, packed
                items.extend(struct.unpack(f"<{len(v2) // 4}f", v2) if wt2 == 2 else struct.unpack("<f", v2))
            elif num == 6:  # doubles
                items.extend(struct.unpack(f"<{len(v2) // 8}d", v2) if wt2 == 2 else struct.unpack("<d", v2))
            elif num in (2, 5):  # ints (int32, sign-extended varints), longInts
                items.extend(_packed_varints(wt2, v2))
            elif num == 3:  # bools
                items.extend(bool(x) for x in _packed_varints(wt2, v2))
            elif num == 4:  # strings
                items.append(v2.decode())
            elif num == 7:  # raw bytes
                items.append(v2)
        data = items
    if kind is None:
        data, kind = [], 1
    shape = tuple(d if d is not None else -1 for d in ttype.shape) if ttype is not None else (len(data),)
    if kind == 4:
        return data[0] if len(shape) == 0 and data else np.array(data, dtype=object).reshape(shape)
    dtype = ttype.np_dtype if ttype is not None else None
    if kind == 7:
        raw = data[0] if data else b""
        if dtype is None:
            raise MilError("raw-bytes constant without a type")
        arr = np.frombuffer(raw, dtype=dtype).copy()
    else:
        arr = np.array(data, dtype=dtype if dtype is not None else None)
    if dtype is not None and arr.dtype != dtype:
        arr = arr.astype(dtype)
    return arr.reshape(shape)


def _parse_value(buf: bytes) -> ConstValue:
    vtype: TensorType | None = None
    imm: bytes | None = None
    blob: BlobRef | None = None
    for num, _, val in _fields(buf):
        if num == 2:
            vtype = _parse_value_type(val)
        elif num == 3:
            imm = val
        elif num == 5:
            fname, offset = "", 0
            for n2, _, v2 in _fields(val):
                if n2 == 1:
                    fname = v2.decode()
                elif n2 == 2:
                    offset = v2
            blob = BlobRef(fname, offset)
    if blob is not None:
        return ConstValue(vtype, blob=blob)
    value: Any = None
    if imm is not None:
        for num, _, val in _fields(imm):
            if num == 1:
                value = _tensor_value(val, vtype)
            else:
                raise MilError("tuple/list/dictionary constants are not supported")
    return ConstValue(vtype, value=value)


@dataclass
class Binding:
    """One argument of an op: the name of a value produced earlier, or an inline constant."""

    name: str | None = None
    const: ConstValue | None = None


@dataclass
class Operation:
    type: str
    inputs: dict[str, list[Binding]]
    outputs: list[tuple[str, TensorType | None]]
    attributes: dict[str, ConstValue] = field(default_factory=dict)
    has_blocks: bool = False

    @property
    def name(self) -> str:
        attr = self.attributes.get("name")
        if attr is not None and isinstance(attr.value, str):
            return attr.value
        return self.outputs[0][0] if self.outputs else self.type


@dataclass
class Block:
    inputs: list[tuple[str, TensorType | None]]
    outputs: list[str]
    operations: list[Operation]


@dataclass
class Function:
    name: str
    inputs: list[tuple[str, TensorType | None]]
    opset: str
    blocks: dict[str, Block]

    @property
    def block(self) -> Block:
        if self.opset in self.blocks:
            return self.blocks[self.opset]
        if len(self.blocks) == 1:
            return next(iter(self.blocks.values()))
        raise MilError(f"function {self.name}: no block for opset {self.opset}")


def _parse_operation(buf: bytes) -> Operation:
    op_type = ""
    inputs: dict[str, list[Binding]] = {}
    outputs: list[tuple[str, TensorType | None]] = []
    attributes: dict[str, ConstValue] = {}
    has_blocks = False
    for num, _, val in _fields(buf):
        if num == 1:
            op_type = val.decode()
        elif num == 2:
            key, arg = _map_entry(val)
            bindings = []
            for n2, _, v2 in _fields(arg):  # Argument.arguments
                if n2 != 1:
                    continue
                for n3, _, v3 in _fields(v2):  # Binding oneof
                    if n3 == 1:
                        bindings.append(Binding(name=v3.decode()))
                    elif n3 == 2:
                        bindings.append(Binding(const=_parse_value(v3)))
            inputs[key] = bindings
        elif num == 3:
            outputs.append(_parse_named_value_type(val))
        elif num == 4:
            has_blocks = True
        elif num == 5:
            key, v = _map_entry(val)
            attributes[key] = _parse_value(v)
    return Operation(op_type, inputs, outputs, attributes, has_blocks)


def _parse_block(buf: bytes) -> Block:
    inputs, outputs, ops = [], [], []
    for num, _, val in _fields(buf):
        if num == 1:
            inputs.append(_parse_named_value_type(val))
        elif num == 2:
            outputs.append(val.decode())
        elif num == 3:
            ops.append(_parse_operation(val))
    return Block(inputs, outputs, ops)


def _parse_function(name: str, buf: bytes) -> Function:
    inputs, opset, blocks = [], "", {}
    for num, _, val in _fields(buf):
        if num == 1:
            inputs.append(_parse_named_value_type(val))
        elif num == 2:
            opset = val.decode()
        elif num == 3:
            key, b = _map_entry(val)
            blocks[key] = _parse_block(b)
    return Function(name, inputs, opset, blocks)


def _parse_program(buf: bytes) -> tuple[int, dict[str, Function]]:
    version, functions = 0, {}
    for num, _, val in _fields(buf):
        if num == 1:
            version = val
        elif num == 2:
            key, f = _map_entry(val)
            functions[key] = _parse_function(key, f)
    return version, functions


# --------------------------------------------------------------------------------------------- model description

# FeatureTypes.proto ArrayFeatureType.ArrayDataType
_ARRAY_DTYPES = {65568: "float32", 65600: "float64", 131104: "int32", 131080: "int8", 65552: "float16"}


@dataclass
class FeatureSpec:
    """An input or output of the model as the package describes it (what ``MLModel.predict`` expects/returns)."""

    name: str
    kind: str  # "multiArray" or another Core ML feature kind (image, ...), which this evaluator refuses
    shape: tuple[int, ...] = ()
    dtype: str = ""
    enumerated_shapes: tuple[tuple[int, ...], ...] = ()
    shape_ranges: tuple[tuple[int, int], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind, "shape": list(self.shape), "dtype": self.dtype}
        if self.enumerated_shapes:
            d["enumerated_shapes"] = [list(s) for s in self.enumerated_shapes]
        if self.shape_ranges:
            d["shape_ranges"] = [list(r) for r in self.shape_ranges]
        return d


def _parse_feature(buf: bytes) -> FeatureSpec:
    name, kind = "", "unknown"
    shape: list[int] = []
    dtype = ""
    enumerated: list[tuple[int, ...]] = []
    ranges: list[tuple[int, int]] = []
    kinds = {1: "int64", 2: "double", 3: "string", 4: "image", 5: "multiArray", 6: "dictionary", 7: "sequence",
             8: "state"}
    for num, _, val in _fields(buf):
        if num == 1:
            name = val.decode()
        elif num == 3:
            for n2, _, v2 in _fields(val):
                if n2 in kinds:
                    kind = kinds[n2]
                if n2 != 5:
                    continue
                for n3, wt3, v3 in _fields(v2):
                    if n3 == 1:
                        shape.extend(_packed_varints(wt3, v3))
                    elif n3 == 2:
                        dtype = _ARRAY_DTYPES.get(v3, str(v3))
                    elif n3 == 21:
                        for n4, _, v4 in _fields(v3):
                            if n4 == 1:
                                dims: list[int] = []
                                for n5, wt5, v5 in _fields(v4):
                                    if n5 == 1:
                                        dims.extend(_packed_varints(wt5, v5))
                                enumerated.append(tuple(dims))
                    elif n3 == 31:
                        for n4, _, v4 in _fields(v3):
                            if n4 == 1:
                                lo = hi = 0
                                for n5, _, v5 in _fields(v4):
                                    if n5 == 1:
                                        lo = _signed64(v5)
                                    elif n5 == 2:
                                        hi = _signed64(v5)
                                ranges.append((lo, hi))
    return FeatureSpec(name, kind, tuple(shape), dtype, tuple(enumerated), tuple(ranges))


@dataclass
class ModelSpec:
    """The parts of a Core ML ``Model`` message the evaluator uses."""

    specification_version: int
    inputs: list[FeatureSpec]
    outputs: list[FeatureSpec]
    metadata: dict[str, str]
    program_version: int
    functions: dict[str, Function]
    model_type: str
    function_io: dict[str, tuple[list[FeatureSpec], list[FeatureSpec]]] = field(default_factory=dict)
    default_function: str = ""


def load_model_spec(data: bytes) -> ModelSpec:
    """Decode a serialized Core ML ``Model`` (the ``model.mlmodel`` file of a package)."""
    spec_version, inputs, outputs, metadata = 0, [], [], {}
    function_io: dict[str, tuple[list[FeatureSpec], list[FeatureSpec]]] = {}
    default_function = ""
    program: bytes | None = None
    model_type = "unknown"
    try:
        for num, _, val in _fields(data):
            if num == 1:
                spec_version = val
            elif num == 2:
                for n2, _, v2 in _fields(val):
                    if n2 == 1:
                        inputs.append(_parse_feature(v2))
                    elif n2 == 10:
                        outputs.append(_parse_feature(v2))
                    elif n2 == 20:  # FunctionDescription of a multifunction model (ExecuTorch: one per method)
                        fname, fin, fout = "", [], []
                        for n3, _, v3 in _fields(v2):
                            if n3 == 1:
                                fname = v3.decode()
                            elif n3 == 2:
                                fin.append(_parse_feature(v3))
                            elif n3 == 3:
                                fout.append(_parse_feature(v3))
                        function_io[fname] = (fin, fout)
                    elif n2 == 21:
                        default_function = val_str(v2)
                    elif n2 == 100:
                        for n3, _, v3 in _fields(v2):
                            if n3 == 100:
                                k, v = _map_entry(v3)
                                metadata[k] = v.decode()
                            elif n3 == 1:
                                metadata.setdefault("shortDescription", v3.decode())
            elif num == 502:
                program, model_type = val, "mlProgram"
            elif num >= 200 and num != 502:
                model_type = f"field {num}"
    except (IndexError, UnicodeDecodeError, struct.error) as e:
        raise MilError(f"not a Core ML model specification ({e.__class__.__name__})") from None
    if program is None:
        raise MilError(f"not an ML program (model type: {model_type}); only mlprogram packages can be evaluated")
    version, functions = _parse_program(program)
    if not default_function:
        default_function = "main" if "main" in functions else next(iter(functions), "main")
    return ModelSpec(spec_version, inputs, outputs, metadata, version, functions, model_type, function_io,
                     default_function)


def val_str(v: bytes) -> str:
    return v.decode()


# ------------------------------------------------------------------------------------------------- weight blobs


class BlobStore:
    """Reads tensors from MIL weight files (``weight.bin``): a 64-byte header, then per tensor a 64-byte metadata
    record (sentinel 0xDEADBEEF, storage dtype, size in bytes, data offset) followed by the data."""

    SENTINEL = 0xDEADBEEF

    def __init__(self, files: Mapping[str, bytes | Path]) -> None:
        self._files = dict(files)
        self._cache: dict[str, bytes] = {}

    def _data(self, name: str) -> bytes:
        key = name
        for prefix in ("@model_path/", "@model_path"):
            key = key.removeprefix(prefix)
        key = key.lstrip("/")
        if key not in self._cache:
            src = self._files.get(key)
            if src is None:
                raise MilError(f"weight file {name!r} is not in the package")
            self._cache[key] = Path(src).read_bytes() if isinstance(src, (str, Path)) else bytes(src)
        return self._cache[key]

    def read(self, ref: BlobRef, ttype: TensorType | None) -> np.ndarray:
        data = self._data(ref.file)
        if ref.offset + 64 > len(data):
            raise MilError(f"{ref.file}: blob offset {ref.offset} beyond the end of the file")
        sentinel, code, size, offset = struct.unpack_from("<IIQQ", data, ref.offset)
        if sentinel != self.SENTINEL:
            raise MilError(f"{ref.file}: no blob at offset {ref.offset} (bad sentinel {sentinel:#x})")
        if ttype is None:
            raise MilError(f"{ref.file}@{ref.offset}: blob without a declared type")
        dtype = np.dtype(ttype.np_dtype)
        if code in _BLOB_DTYPES and np.dtype(_BLOB_DTYPES[code]) != dtype:
            raise MilError(f"{ref.file}@{ref.offset}: blob stores {np.dtype(_BLOB_DTYPES[code])}, declared {dtype}")
        if code not in _BLOB_DTYPES:
            raise MilError(f"{ref.file}@{ref.offset}: unsupported blob storage type code {code}")
        shape = tuple(int(d) for d in ttype.shape)
        count = int(np.prod(shape)) if shape else 1
        if count * dtype.itemsize != size or offset + size > len(data):
            raise MilError(f"{ref.file}@{ref.offset}: blob holds {size} bytes, type {ttype} needs {count * dtype.itemsize}")
        return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)


# ------------------------------------------------------------------------------------------------------ package


@dataclass
class MilPackage:
    """A loaded ML program: model description, functions and weights."""

    spec: ModelSpec
    blobs: BlobStore
    source: str = ""

    @property
    def default_function(self) -> str:
        return self.spec.default_function

    @property
    def inputs(self) -> list[FeatureSpec]:
        return self.inputs_of(self.default_function)

    @property
    def outputs(self) -> list[FeatureSpec]:
        return self.outputs_of(self.default_function)

    def inputs_of(self, function: str) -> list[FeatureSpec]:
        """The described inputs of ``function`` (multifunction models describe each function separately)."""
        if function in self.spec.function_io:
            return self.spec.function_io[function][0]
        return self.spec.inputs

    def outputs_of(self, function: str) -> list[FeatureSpec]:
        if function in self.spec.function_io:
            return self.spec.function_io[function][1]
        return self.spec.outputs

    @property
    def metadata(self) -> dict[str, str]:
        return self.spec.metadata

    @property
    def functions(self) -> dict[str, Function]:
        return self.spec.functions

    def op_counts(self, function: str | None = None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in _function(self, function or self.default_function).block.operations:
            counts[op.type] = counts.get(op.type, 0) + 1
        return dict(sorted(counts.items()))

    def const(self, value: ConstValue) -> Any:
        if value.blob is not None:
            return self.blobs.read(value.blob, value.type)
        return value.value

    @classmethod
    def from_files(cls, files: Mapping[str, bytes | Path], source: str = "") -> MilPackage:
        """From the files of a package, keyed by their path inside it (``Data/com.apple.CoreML/...``, or the paths
        relative to the model spec's folder). Used for packages embedded in other containers (ExecuTorch .pte)."""
        norm = {k.replace("\\", "/").lstrip("/"): v for k, v in files.items()}
        spec_key = _find_spec_key(norm)
        if spec_key is None:
            raise MilError(f"{source or 'package'}: no model.mlmodel inside")
        base = spec_key.rsplit("/", 1)[0] + "/" if "/" in spec_key else ""
        raw = norm[spec_key]
        data = Path(raw).read_bytes() if isinstance(raw, (str, Path)) else bytes(raw)
        spec = load_model_spec(data)
        weight_files = {k[len(base):]: v for k, v in norm.items() if k.startswith(base) and k != spec_key}
        return cls(spec, BlobStore(weight_files), source)


def _find_spec_key(files: Mapping[str, Any]) -> str | None:
    manifest = files.get("Manifest.json")
    if manifest is not None:
        try:
            text = Path(manifest).read_text() if isinstance(manifest, (str, Path)) else bytes(manifest).decode()
            info = json.loads(text)
            entry = info["itemInfoEntries"][info["rootModelIdentifier"]]
            key = "Data/" + entry["path"]
            if key in files:
                return key
        except (KeyError, ValueError, TypeError):
            pass
    if MODEL_SPEC_PATH in files:
        return MODEL_SPEC_PATH
    candidates = sorted(k for k in files if k.endswith("model.mlmodel"))
    return candidates[0] if candidates else None


def load_mlpackage(path: str | os.PathLike) -> MilPackage:
    """Load a saved ``.mlpackage`` folder (or a bare ``model.mlmodel`` file next to its ``weights/`` folder)."""
    root = Path(path)
    if root.is_file():
        files: dict[str, bytes | Path] = {"model.mlmodel": root}
        weights = root.parent / "weights"
        if weights.is_dir():
            files.update({f"weights/{p.name}": p for p in weights.iterdir() if p.is_file()})
        return MilPackage.from_files(files, str(root))
    if not root.is_dir():
        raise MilError(f"{root}: no such Core ML package")
    files = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
    return MilPackage.from_files(files, str(root))


def _function(package: MilPackage, name: str) -> Function:
    if name not in package.functions:
        raise MilError(f"no function {name!r} in the program (has: {', '.join(package.functions)})")
    return package.functions[name]


# ------------------------------------------------------------------------------------------------------- kernels
# Each kernel takes the op and a dict of resolved inputs (numpy arrays / python scalars; variadic inputs as lists)
# and returns a list of outputs. The evaluator then casts each output to its declared dtype (fp16 storage).


class _Backend:
    """Where convolutions and matmuls run: numpy, or torch when the caller already has it loaded."""

    def __init__(self, name: str) -> None:
        self.torch = None
        if name == "torch" or (name == "auto" and "torch" in sys.modules):
            try:
                import torch

                self.torch = torch
            except ImportError:
                if name == "torch":
                    raise MilError("backend 'torch' asked for, but torch is not installed") from None
        elif name not in ("numpy", "auto"):
            raise MilError(f"unknown backend {name!r}: auto, numpy or torch")
        self.name = "torch" if self.torch is not None else "numpy"

    def conv(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, strides: Sequence[int],
             pads: Sequence[int], dilations: Sequence[int], groups: int) -> np.ndarray:
        nd = w.ndim - 2
        if self.torch is not None and nd in (1, 2):
            t = self.torch
            xt = t.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            wt = t.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
            bt = None if b is None else t.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
            pad_spec: list[int] = []
            for i in reversed(range(nd)):  # F.pad wants (last-dim before, after, ...)
                pad_spec += [int(pads[2 * i]), int(pads[2 * i + 1])]
            if any(pad_spec):
                xt = t.nn.functional.pad(xt, pad_spec)
            fn = t.nn.functional.conv2d if nd == 2 else t.nn.functional.conv1d
            with t.no_grad():
                y = fn(xt, wt, bt, stride=tuple(strides), dilation=tuple(dilations), groups=groups)
            return y.numpy()
        return _conv_numpy(x, w, b, strides, pads, dilations, groups)

    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self.torch is not None:
            t = self.torch
            return t.matmul(t.from_numpy(np.ascontiguousarray(a, np.float32)),
                            t.from_numpy(np.ascontiguousarray(b, np.float32))).numpy()
        return np.matmul(a.astype(np.float32), b.astype(np.float32))


def _conv_numpy(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, strides: Sequence[int], pads: Sequence[int],
                dilations: Sequence[int], groups: int) -> np.ndarray:
    """N-d convolution (cross-correlation) by im2col + matmul, accumulated in float64 for fp32 exactness."""
    nd = w.ndim - 2
    if nd not in (1, 2):
        raise MilUnsupportedOpError(f"conv with {nd} spatial dims is not supported")
    if nd == 1:
        y = _conv_numpy(x[:, :, None, :], w[:, :, None, :], b, (1, strides[0]), (0, 0, pads[0], pads[1]),
                        (1, dilations[0]), groups)
        return y[:, :, 0, :]
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[1]), (pads[2], pads[3])))
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    dh, dw = dilations
    sh, sw = strides
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    ho, wo = (h - eh) // sh + 1, (wd - ew) // sw + 1
    og = o // groups
    out = np.empty((n, o, ho, wo), dtype=np.float64)
    win = np.lib.stride_tricks.sliding_window_view(x, (eh, ew), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    for g in range(groups):
        cols = win[:, g * cg : (g + 1) * cg]  # (n, cg, ho, wo, kh, kw)
        cols = cols.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, cg * kh * kw)
        wg = w[g * og : (g + 1) * og].reshape(og, cg * kh * kw).astype(np.float64)
        out[:, g * og : (g + 1) * og] = (cols @ wg.T).reshape(n, ho, wo, og).transpose(0, 3, 1, 2)
    if b is not None:
        out += b.astype(np.float64).reshape(1, -1, 1, 1)
    return out


def _as_float(a: Any) -> np.ndarray:
    """Compute dtype: fp16 values are widened to fp32 for the arithmetic, then rounded back by the evaluator."""
    arr = np.asarray(a)
    return arr.astype(np.float32) if arr.dtype == np.float16 else arr


def _axes(axes: Any, rank: int) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(rank))
    return tuple(int(a) % rank if rank else 0 for a in np.atleast_1d(axes))


def _conv_pads(op_type: str, args: dict[str, Any], x_shape: Sequence[int], w_shape: Sequence[int]) -> list[int]:
    nd = len(w_shape) - 2
    pad_type = str(args.get("pad_type", "valid"))
    strides = [int(s) for s in np.atleast_1d(args.get("strides", [1] * nd))]
    dil = [int(d) for d in np.atleast_1d(args.get("dilations", [1] * nd))]
    if pad_type == "custom":
        return [int(p) for p in np.atleast_1d(args.get("pad", [0] * 2 * nd))]
    if pad_type == "valid":
        return [0] * 2 * nd
    if pad_type in ("same", "same_lower"):
        pads = []
        for i in range(nd):
            size = x_shape[2 + i]
            eff = (w_shape[2 + i] - 1) * dil[i] + 1
            total = max((math.ceil(size / strides[i]) - 1) * strides[i] + eff - size, 0)
            small, big = total // 2, total - total // 2
            pads += [big, small] if pad_type == "same_lower" else [small, big]
        return pads
    raise MilUnsupportedOpError(f"{op_type}: pad_type {pad_type!r} is not supported")


def _k_conv(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x, w = _as_float(a["x"]), _as_float(a["weight"])
    b = a.get("bias")
    nd = w.ndim - 2
    strides = [int(s) for s in np.atleast_1d(a.get("strides", [1] * nd))]
    dil = [int(d) for d in np.atleast_1d(a.get("dilations", [1] * nd))]
    groups = int(a.get("groups", 1))
    pads = _conv_pads(op.type, a, x.shape, w.shape)
    return [ev.backend.conv(x, w, None if b is None else _as_float(b), strides, pads, dil, groups)]


def _k_linear(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x, w = _as_float(a["x"]), _as_float(a["weight"])
    y = ev.backend.matmul(x, w.T)
    if a.get("bias") is not None:
        y = y + _as_float(a["bias"])
    return [y]


def _k_matmul(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x, y = _as_float(a["x"]), _as_float(a["y"])
    if bool(a.get("transpose_x", False)):
        x = np.swapaxes(x, -1, -2)
    if bool(a.get("transpose_y", False)):
        y = np.swapaxes(y, -1, -2)
    return [ev.backend.matmul(x, y)]


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable:
    def kernel(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
        return [fn(_as_float(a["x"]), _as_float(a["y"]))]

    return kernel


def _unary(fn: Callable[..., np.ndarray]) -> Callable:
    def kernel(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
        return [fn(_as_float(a["x"]), a)]

    return kernel


def _softmax(x: np.ndarray, a: dict[str, Any]) -> np.ndarray:
    axis = int(a.get("axis", -1))
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _reduce(fn: Callable[..., np.ndarray]) -> Callable:
    def kernel(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
        x = _as_float(a["x"])
        keep = bool(a.get("keep_dims", False))
        axes = _axes(a.get("axes"), x.ndim)
        if fn is np.mean and x.dtype == np.float32:  # accumulate in float64 like a pairwise/compensated sum would
            return [np.mean(x.astype(np.float64), axis=axes, keepdims=keep)]
        return [fn(x, axis=axes, keepdims=keep)]

    return kernel


def _k_reduce_arg(fn: Callable[..., np.ndarray]) -> Callable:
    def kernel(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
        x = _as_float(a["x"])
        axis = int(a.get("axis", -1))
        y = fn(x, axis=axis)
        return [np.expand_dims(y, axis) if bool(a.get("keep_dims", False)) else y]

    return kernel


def _k_reshape(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x = np.asarray(a["x"])
    shape = [int(s) for s in np.atleast_1d(a["shape"])]
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]  # 0 copies the input dim (iOS17 reshape)
    return [x.reshape(shape)]


def _k_slice_by_index(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x = np.asarray(a["x"])
    r = x.ndim
    begin = [int(v) for v in np.atleast_1d(a["begin"])]
    end = [int(v) for v in np.atleast_1d(a["end"])]
    stride = [int(v) for v in np.atleast_1d(a.get("stride", [1] * r))]
    bm = [bool(v) for v in np.atleast_1d(a.get("begin_mask", [False] * r))]
    em = [bool(v) for v in np.atleast_1d(a.get("end_mask", [False] * r))]
    sq = [bool(v) for v in np.atleast_1d(a.get("squeeze_mask", [False] * r))]
    index = []
    for i in range(r):
        if sq[i]:
            index.append(begin[i])
            continue
        lo = None if bm[i] else begin[i]
        hi = None if em[i] else end[i]
        index.append(slice(lo, hi, stride[i]))
    return [x[tuple(index)]]


def _k_slice_by_size(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x = np.asarray(a["x"])
    begin = [int(v) for v in np.atleast_1d(a["begin"])]
    size = [int(v) for v in np.atleast_1d(a["size"])]
    index = tuple(slice(b, None if s == -1 else b + s) for b, s in zip(begin, size))
    return [x[index]]


def _k_pixel_shuffle(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x = np.asarray(a["x"])
    r = int(a["upscale_factor"])
    n, c, h, w = x.shape
    y = x.reshape(n, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3)
    return [y.reshape(n, c // (r * r), h * r, w * r)]


def _k_pixel_unshuffle(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x = np.asarray(a["x"])
    r = int(a["downscale_factor"])
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // r, r, w // r, r).transpose(0, 1, 3, 5, 2, 4)
    return [y.reshape(n, c * r * r, h // r, w // r)]


def _k_cast(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    name = str(a["dtype"])
    if name not in _DTYPE_BY_NAME:
        raise MilUnsupportedOpError(f"cast to {name!r} is not supported")
    return [np.asarray(a["x"]).astype(_DTYPE_BY_NAME[name])]


def _broadcast_param(p: Any, ref: np.ndarray, axis: Any) -> np.ndarray:
    """A scale / zero point (scalar, vector along ``axis``, or same-rank) shaped to broadcast against ``ref``."""
    p = np.asarray(p)
    if p.ndim == 0 or p.ndim == ref.ndim:
        return p
    if p.ndim == 1:
        ax = int(axis if axis is not None else 0) % ref.ndim
        shape = [1] * ref.ndim
        shape[ax] = p.shape[0]
        return p.reshape(shape)
    raise MilError(f"cannot broadcast a parameter of shape {p.shape} to {ref.shape}")


def _k_quantize(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x = _as_float(a["input"])
    dtype = np.dtype(_DTYPE_BY_NAME[str(a["output_dtype"])])
    scale = _broadcast_param(_as_float(a["scale"]), x, a.get("axis"))
    q = np.around(x / scale)  # round half to even, as coremltools' value inference
    zp = a.get("zero_point")
    if zp is not None:
        q = q + _broadcast_param(zp, x, a.get("axis")).astype(np.float32)
    info = np.iinfo(dtype)
    return [np.clip(q, info.min, info.max).astype(dtype)]


def _k_dequantize(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    q = np.asarray(a["input"]).astype(np.float32)
    scale = _broadcast_param(_as_float(a["scale"]), q, a.get("axis"))
    zp = a.get("zero_point")
    if zp is not None:
        q = q - _broadcast_param(zp, q, a.get("axis")).astype(np.float32)
    return [q * scale]


def _k_affine_dequantize(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    q = np.asarray(a["quantized_data"]).astype(np.float32)
    axis = a.get("axis", 0)
    scale = _broadcast_param(_as_float(a["scale"]), q, axis)
    zp = _broadcast_param(a["zero_point"], q, axis).astype(np.float32)
    return [(q - zp) * scale]


def _repeat_blocks(p: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    for axis, (n, m) in enumerate(zip(shape, p.shape)):
        if n % m:
            raise MilError(f"block size: {p.shape} does not tile {tuple(shape)}")
        if n != m:
            p = np.repeat(p, n // m, axis=axis)
    return p


def _k_blockwise_shift_scale(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    data = np.asarray(a["data"])
    scale = np.asarray(a["scale"])
    values = data.astype(np.float32)
    if a.get("offset") is not None:
        values = values - _repeat_blocks(np.asarray(a["offset"]).astype(np.float32), data.shape)
    return [values * _repeat_blocks(scale.astype(np.float32), data.shape)]


def _k_concat(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    values = [np.asarray(v) for v in a["values"]]
    axis = int(a["axis"])
    if bool(a.get("interleave", False)):
        raise MilUnsupportedOpError("concat with interleave=True is not supported")
    return [np.concatenate(values, axis=axis)]


def _k_transpose(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    return [np.transpose(np.asarray(a["x"]), [int(p) for p in np.atleast_1d(a["perm"])])]


def _k_expand_dims(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x = np.asarray(a["x"])
    out_rank = x.ndim + len(np.atleast_1d(a["axes"]))
    axes = sorted(int(v) % out_rank for v in np.atleast_1d(a["axes"]))
    for ax in axes:
        x = np.expand_dims(x, ax)
    return [x]


def _k_squeeze(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x = np.asarray(a["x"])
    axes = a.get("axes")
    return [np.squeeze(x) if axes is None else np.squeeze(x, axis=_axes(axes, x.ndim))]


def _k_avg_pool(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x = _as_float(a["x"])
    k = [int(v) for v in np.atleast_1d(a["kernel_sizes"])]
    if len(k) != 2:
        raise MilUnsupportedOpError("avg_pool: only 2-D pooling is supported")
    strides = [int(v) for v in np.atleast_1d(a.get("strides", k))]
    if bool(a.get("ceil_mode", False)):
        raise MilUnsupportedOpError("avg_pool: ceil_mode=True is not supported")
    pads = _conv_pads(op.type, a, x.shape, (1, 1, *k))
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[1]), (pads[2], pads[3])))
    win = np.lib.stride_tricks.sliding_window_view(xp, k, axis=(2, 3))[:, :, :: strides[0], :: strides[1]]
    total = win.sum(axis=(-1, -2))
    if any(pads) and bool(a.get("exclude_padding_from_average", False)):
        ones = np.pad(np.ones(x.shape[2:]), ((pads[0], pads[1]), (pads[2], pads[3])))
        cnt = np.lib.stride_tricks.sliding_window_view(ones, k)[:: strides[0], :: strides[1]].sum(axis=(-1, -2))
        return [total / cnt]
    return [total / (k[0] * k[1])]


def _k_one_hot(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    idx = np.asarray(a["indices"]).astype(np.int64)
    size = int(a["one_hot_vector_size"])
    axis = int(a.get("axis", -1))
    on, off = a.get("on_value", 1), a.get("off_value", 0)
    hot = np.arange(size) == idx[..., None]
    out = np.where(hot, on, off)
    return [np.moveaxis(out, -1, axis % out.ndim)]


def _k_gather(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    if int(a.get("batch_dims", 0)):
        raise MilUnsupportedOpError("gather with batch_dims > 0 is not supported")
    x = np.asarray(a["x"])
    return [np.take(x, np.asarray(a["indices"]).astype(np.int64), axis=int(a.get("axis", 0)))]


def _k_select(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    return [np.where(np.asarray(a["cond"]).astype(bool), _as_float(a["a"]), _as_float(a["b"]))]


def _k_clip(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    return [np.clip(_as_float(a["x"]), float(a["alpha"]), float(a["beta"]))]


def _k_identity(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    return [np.asarray(a["x"])]


def _k_tile(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    return [np.tile(np.asarray(a["x"]), [int(r) for r in np.atleast_1d(a["reps"])])]


def _k_split(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x = np.asarray(a["x"])
    axis = int(a["axis"]) % x.ndim
    if a.get("split_sizes") is not None:
        bounds = np.cumsum([int(s) for s in np.atleast_1d(a["split_sizes"])])[:-1]
        return list(np.split(x, bounds, axis=axis))
    return list(np.split(x, int(a["num_splits"]), axis=axis))


def _np_sigmoid(x: np.ndarray, _a: Any) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


KERNELS: dict[str, Callable[[MilEvaluator, Operation, dict[str, Any]], list[Any]]] = {
    "conv": _k_conv,
    "linear": _k_linear,
    "matmul": _k_matmul,
    "add": _binary(np.add),
    "sub": _binary(np.subtract),
    "mul": _binary(np.multiply),
    "real_div": _binary(np.divide),
    "maximum": _binary(np.maximum),
    "minimum": _binary(np.minimum),
    "pow": _binary(np.power),
    "greater": _binary(np.greater),
    "greater_equal": _binary(np.greater_equal),
    "less": _binary(np.less),
    "less_equal": _binary(np.less_equal),
    "equal": _binary(np.equal),
    "not_equal": _binary(np.not_equal),
    "relu": _unary(lambda x, a: np.maximum(x, 0)),
    "leaky_relu": _unary(lambda x, a: np.where(x >= 0, x, x * float(a.get("alpha", 0.01)))),
    "sigmoid": _unary(_np_sigmoid),
    "tanh": _unary(lambda x, a: np.tanh(x)),
    "exp": _unary(lambda x, a: np.exp(x)),
    "sqrt": _unary(lambda x, a: np.sqrt(x)),
    "rsqrt": _unary(lambda x, a: 1.0 / np.sqrt(x + float(a.get("epsilon", 1e-12)))),
    "inverse": _unary(lambda x, a: 1.0 / (x + float(a.get("epsilon", 1e-4)))),
    "abs": _unary(lambda x, a: np.abs(x)),
    "square": _unary(lambda x, a: x * x),
    "softmax": _unary(_softmax),
    "clip": _k_clip,
    "reduce_mean": _reduce(np.mean),
    "reduce_sum": _reduce(np.sum),
    "reduce_max": _reduce(np.max),
    "reduce_min": _reduce(np.min),
    "reduce_argmax": _k_reduce_arg(np.argmax),
    "reduce_argmin": _k_reduce_arg(np.argmin),
    "reshape": _k_reshape,
    "slice_by_index": _k_slice_by_index,
    "slice_by_size": _k_slice_by_size,
    "pixel_shuffle": _k_pixel_shuffle,
    "pixel_unshuffle": _k_pixel_unshuffle,
    "cast": _k_cast,
    "concat": _k_concat,
    "split": _k_split,
    "transpose": _k_transpose,
    "expand_dims": _k_expand_dims,
    "squeeze": _k_squeeze,
    "tile": _k_tile,
    "avg_pool": _k_avg_pool,
    "one_hot": _k_one_hot,
    "gather": _k_gather,
    "select": _k_select,
    "identity": _k_identity,
    "quantize": _k_quantize,
    "dequantize": _k_dequantize,
    "constexpr_affine_dequantize": _k_affine_dequantize,
    "constexpr_blockwise_shift_scale": _k_blockwise_shift_scale,
}
SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(["const", *KERNELS]))


# ----------------------------------------------------------------------------------------------------- evaluator


class MilEvaluator:
    """Runs one function of a loaded ML program on numpy inputs, op by op.

    Constants (``const`` and ``constexpr_*`` ops) are decoded once, at construction. ``run`` checks every input
    against the package's description and every result against its declared shape, and rounds every result to its
    declared dtype (this is how fp16 storage and int8 activations are emulated). The whole program is checked for
    unsupported ops when the evaluator is built, so an unsupported op fails before any work is done.
    """

    def __init__(self, package: MilPackage, function: str | None = None, backend: str = "auto") -> None:
        self.package = package
        self.function = _function(package, function or package.default_function)
        self.block = self.function.block
        self.backend = _Backend(backend)
        unsupported = sorted({op.type for op in self.block.operations if op.type not in KERNELS and op.type != "const"})
        if unsupported:
            raise MilUnsupportedOpError(
                f"unsupported MIL op{'s' if len(unsupported) > 1 else ''} {', '.join(unsupported)} "
                f"(the evaluator supports: {', '.join(SUPPORTED_OPS)})"
            )
        if any(op.has_blocks for op in self.block.operations):
            raise MilUnsupportedOpError("ops with nested blocks (control flow) are not supported")
        self._consts: dict[str, Any] = {}
        self._program: list[Operation] = []
        for op in self.block.operations:
            if op.type == "const":
                self._consts[op.outputs[0][0]] = package.const(op.attributes["val"])
            elif op.type.startswith("constexpr_"):
                out = self._execute(op, self._consts)
                for (name, _), value in zip(op.outputs, out):
                    self._consts[name] = value
            else:
                self._program.append(op)

    # -- public API
    @property
    def input_names(self) -> list[str]:
        return [name for name, _ in self.function.inputs]

    @property
    def output_names(self) -> list[str]:
        return list(self.block.outputs)

    def run(
        self,
        feeds: Mapping[str, np.ndarray],
        observe: Callable[[Operation, str, np.ndarray], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Evaluate the function. ``observe(op, output_name, value)`` is called for every computed value."""
        env: dict[str, Any] = dict(self._consts)
        for name, ttype in self.function.inputs:
            if name not in feeds:
                raise MilError(f"missing input {name!r} (inputs: {', '.join(self.input_names)})")
            value = np.asarray(feeds[name])
            if ttype is not None:
                self._check_shape(f"input {name!r}", value.shape, ttype.shape)
                value = value.astype(ttype.np_dtype, copy=False)
            self._check_described_shape(name, value.shape)
            env[name] = value
            if observe is not None:
                observe(None, name, value)  # type: ignore[arg-type]
        extra = set(feeds) - set(self.input_names)
        if extra:
            raise MilError(f"unknown input(s) {', '.join(sorted(extra))} (inputs: {', '.join(self.input_names)})")
        exact_shapes = all(
            ttype is None or all(d is not None for d in ttype.shape) for _, ttype in self.function.inputs
        )
        for op in self._program:
            outs = self._execute(op, env)
            for (name, ttype), value in zip(op.outputs, outs):
                if ttype is not None and exact_shapes:
                    self._check_shape(f"op {op.name!r} ({op.type}) output", value.shape, ttype.shape)
                env[name] = value
                if observe is not None:
                    observe(op, name, value)
        return {name: np.asarray(env[name]) for name in self.block.outputs}

    predict = run  # the name MLModel uses

    def activation_ranges(
        self, samples: Iterable[Mapping[str, np.ndarray]]
    ) -> dict[str, dict[str, float]]:
        """Per-tensor ``{"rmin", "rmax"}`` over calibration samples, for every input and non-constant float value:
        the statistics coremltools' activation quantization gathers with ``MLModel.predict`` on macOS."""
        stats: dict[str, dict[str, float]] = {}

        def observe(_op: Operation | None, name: str, value: np.ndarray) -> None:
            if not np.issubdtype(value.dtype, np.floating) or value.size == 0:
                return
            lo, hi = float(value.min()), float(value.max())
            if name in stats:
                stats[name]["rmin"] = min(stats[name]["rmin"], lo)
                stats[name]["rmax"] = max(stats[name]["rmax"], hi)
            else:
                stats[name] = {"rmin": lo, "rmax": hi}

        for sample in samples:
            self.run(sample, observe)
        return stats

    def constant_input(self, op: Operation, key: str) -> Any:
        """The value of a constant argument of ``op`` (inline, a ``const`` op, a folded ``constexpr_*`` or an
        attribute); None when the argument is absent; `MilError` when it is computed at run time."""
        bindings = op.inputs.get(key)
        if not bindings:
            return self.package.const(op.attributes[key]) if key in op.attributes else None
        values = []
        for b in bindings:
            if b.name is None:
                values.append(self.package.const(b.const))  # type: ignore[arg-type]
            elif b.name in self._consts:
                values.append(self._consts[b.name])
            else:
                raise MilError(f"op {op.name!r}: input {key} is computed at run time, not a constant")
        return values if len(values) > 1 else values[0]

    # Ops through which a positive rescaling of the input passes unchanged to the output.
    _SCALE_EQUIVARIANT = frozenset({"relu", "reshape", "slice_by_index", "slice_by_size", "pixel_shuffle",
                                    "pixel_unshuffle", "transpose", "expand_dims", "squeeze", "identity", "concat",
                                    "split", "tile", "max_pool", "avg_pool", "reduce_mean", "reduce_max", "cast"})

    def lint_quantization(self, rel_tol: float = 1e-2) -> list[str]:
        """Check that activation quantization keeps the graph's meaning; one line per problem.

        Plain quantize -> dequantize pairs must agree on scale and zero point. coremltools'
        ``distributive_quantized_binary_op_scale_normalization`` legitimately breaks that: it rescales both inputs
        of an int8 ``add``/``sub`` by 1/s_y and the quantize after it by the same factor, so the integers are
        unchanged while the float values in between are off by that factor. So the check tracks, per value, the
        factor by which it differs from the true value: a dequantize multiplies it by (its scale / the true scale of
        its integers), an add/sub needs equal factors on both inputs, scale-equivariant ops (relu, reshape, slices,
        pixel shuffle, ...) pass it on, a quantize absorbs it, and every other op and every output must see 1."""
        factor: dict[str, float] = {}
        true_scale: dict[str, np.ndarray] = {}
        zero_point: dict[str, np.ndarray] = {}
        problems: list[str] = []

        def f(binding_list: list[Binding] | None) -> float:
            if not binding_list or binding_list[0].name is None:
                return 1.0
            return factor.get(binding_list[0].name, 1.0)

        for op in self._program:
            out_names = [n for n, _ in op.outputs]
            if op.type == "quantize":
                k = f(op.inputs.get("input"))
                scale = np.asarray(self.constant_input(op, "scale"), np.float64)
                zp = self.constant_input(op, "zero_point")
                true_scale[out_names[0]] = scale / k
                zero_point[out_names[0]] = np.zeros(1) if zp is None else np.asarray(zp, np.float64)
                continue
            if op.type == "dequantize":
                src = op.inputs["input"][0].name or ""
                scale = np.asarray(self.constant_input(op, "scale"), np.float64)
                zp = self.constant_input(op, "zero_point")
                zp = np.zeros(1) if zp is None else np.asarray(zp, np.float64)
                k = 1.0
                if src in true_scale:
                    if zp.shape != zero_point[src].shape or not np.array_equal(zp, zero_point[src]):
                        problems.append(f"{op.name}: zero point {zp.ravel()[:3]} differs from its quantize's")
                    ratio = scale / true_scale[src]
                    if ratio.size and not np.allclose(ratio, ratio.ravel()[0], rtol=rel_tol):
                        problems.append(f"{op.name}: per-channel scales do not match its quantize's")
                    k = float(ratio.ravel()[0])
                factor[out_names[0]] = k
                continue
            ins = {key: f(b) for key, b in op.inputs.items()
                   if b and b[0].name is not None and b[0].name not in self._consts}  # computed inputs only
            if op.type in ("add", "sub") and "x" in ins and "y" in ins:
                if not math.isclose(ins["x"], ins["y"], rel_tol=rel_tol):
                    problems.append(f"{op.name} ({op.type}): inputs off by different factors {ins['x']:.4g} vs "
                                    f"{ins['y']:.4g}")
                k = ins["x"]
            elif op.type in self._SCALE_EQUIVARIANT:
                ks = set(round(v, 6) for v in ins.values())
                k = ins.get("x", ins.get("values", 1.0)) if ks else 1.0
                if len(ks) > 1:
                    problems.append(f"{op.name} ({op.type}): inputs off by different factors")
            else:
                k = 1.0
                for key, v in ins.items():
                    if not math.isclose(v, 1.0, rel_tol=rel_tol):
                        problems.append(f"{op.name} ({op.type}): input {key} is off by a factor {v:.4g}")
            for name in out_names:
                factor[name] = k
        for name in self.block.outputs:
            if not math.isclose(factor.get(name, 1.0), 1.0, rel_tol=rel_tol):
                problems.append(f"output {name} is off by a factor {factor[name]:.4g}")
        return problems

    # -- internals
    def _resolve(self, op: Operation, env: Mapping[str, Any]) -> dict[str, Any]:
        args: dict[str, Any] = {}
        for key, bindings in op.inputs.items():
            values = []
            for b in bindings:
                if b.name is not None:
                    if b.name not in env:
                        raise MilError(f"op {op.name!r} ({op.type}): input {key}={b.name!r} is not defined")
                    values.append(env[b.name])
                else:
                    values.append(self.package.const(b.const))  # type: ignore[arg-type]
            args[key] = values if key == "values" or len(values) > 1 else (values[0] if values else None)
        for key, value in op.attributes.items():  # iOS16 constexpr ops keep their parameters as attributes
            if key != "name" and key not in args:
                args[key] = self.package.const(value)
        return args

    def _execute(self, op: Operation, env: Mapping[str, Any]) -> list[Any]:
        kernel = KERNELS.get(op.type)
        if kernel is None:
            raise MilUnsupportedOpError(f"unsupported MIL op {op.type} (op {op.name!r})")
        args = self._resolve(op, env)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            outs = kernel(self, op, args)
        if len(outs) != len(op.outputs):
            raise MilError(f"op {op.name!r} ({op.type}): {len(outs)} results, {len(op.outputs)} declared")
        typed = []
        for (name, ttype), value in zip(op.outputs, outs):
            value = np.asarray(value)
            if ttype is not None and ttype.dtype in _MIL_DTYPES and ttype.dtype != 2:
                value = value.astype(ttype.np_dtype, copy=False)  # fp16 storage / int8 activations
            typed.append(value)
        return typed

    @staticmethod
    def _check_shape(what: str, got: Sequence[int], declared: Sequence[int | None]) -> None:
        if len(got) != len(declared) or any(d is not None and d != g for g, d in zip(got, declared)):
            dims = ", ".join("?" if d is None else str(d) for d in declared)
            raise MilError(f"{what}: shape {tuple(got)} does not match the declared ({dims})")

    def _check_described_shape(self, name: str, shape: Sequence[int]) -> None:
        for feat in self.package.inputs_of(self.function.name):
            if feat.name != name or not feat.enumerated_shapes:
                continue
            if tuple(shape) not in feat.enumerated_shapes:
                allowed = ", ".join("x".join(map(str, s)) for s in feat.enumerated_shapes)
                raise MilError(f"input {name!r}: shape {'x'.join(map(str, shape))} is not one of the enumerated "
                               f"shapes ({allowed})")


# ---------------------------------------------------------------------------------------- artifacts and payloads


def load_artifact(path: str | os.PathLike) -> MilPackage:
    """A Core ML program from any of: an ``.mlpackage`` folder, its zip (``model.mlpackage.zip``, the coreml
    target's artifact) or an ExecuTorch ``.pte`` whose Core ML delegate payload holds the package (first payload)."""
    p = Path(path)
    if p.is_dir():
        return load_mlpackage(p)
    if not p.is_file():
        raise MilError(f"{p}: no such Core ML artifact")
    import zipfile

    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
            roots = sorted({n.split(".mlpackage/", 1)[0] + ".mlpackage/" for n in names if ".mlpackage/" in n})
            if not roots:
                raise MilError(f"{p}: the zip holds no .mlpackage")
            root = roots[0]
            files = {n[len(root):]: zf.read(n) for n in names if n.startswith(root)}
        return MilPackage.from_files(files, str(p))
    data = p.read_bytes()
    payloads = coreml_payloads(data)
    if not payloads:
        raise MilError(f"{p}: neither a Core ML package (folder or zip) nor a .pte with a Core ML payload")
    return payloads[0]


_FLAT_MARK = b'{"nodes"'[::-1]


def unflatten_directory(blob: bytes, end: int | None = None) -> dict[str, bytes]:
    """Files of a directory flattened by ExecuTorch's Core ML backend (``flatten_directory_contents``): the files'
    bytes back to back, then a JSON index (``{"nodes": [{"name", "kind": 0 file / 1 folder, "children": {name:
    index}, "dataRegion": {"offset", "size"}}]}``, the last node the root) stored byte-reversed at the end.
    ``end`` is where the flattened blob ends inside ``blob`` (default: its end)."""
    end = len(blob) if end is None else end
    rev = blob[:end][::-1]
    try:
        index, consumed = json.JSONDecoder().raw_decode(rev.decode("latin-1"))
        nodes = index["nodes"]
    except (ValueError, KeyError, TypeError):
        raise MilError("not a flattened Core ML directory (no index)") from None
    data_end = end - consumed
    size = max((n["dataRegion"]["offset"] + n["dataRegion"]["size"] for n in nodes if n["kind"] == 0), default=0)
    start = data_end - size
    if start < 0:
        raise MilError("flattened Core ML directory: index points outside the data")
    files: dict[str, bytes] = {}

    def walk(i: int, prefix: str) -> None:
        node = nodes[i]
        if node["kind"] == 0:
            off, n = node["dataRegion"]["offset"], node["dataRegion"]["size"]
            files[prefix + node["name"]] = blob[start + off : start + off + n]
            return
        for name, child in sorted(node.get("children", {}).items()):
            walk(child, prefix + (node["name"] + "/" if i != len(nodes) - 1 else ""))

    walk(len(nodes) - 1, "")
    return files


def coreml_payloads(pte: bytes) -> list[MilPackage]:
    """The Core ML programs inside an ExecuTorch ``.pte``: every flattened Core ML directory found in the file (the
    delegate's processed bytes, inline or in a segment), each checked by decoding its model spec. The payload's
    folder holds ``model.mlpackage`` (and ``metadata.json``); compiled payloads (``.mlmodelc``) are refused."""
    out: list[MilPackage] = []
    pos = 0
    while True:
        hit = pte.find(_FLAT_MARK, pos)
        if hit < 0:
            break
        end = hit + len(_FLAT_MARK)
        pos = end
        try:
            files = unflatten_directory(pte, end)
        except MilError:
            continue
        pkg_files = {k.split(".mlpackage/", 1)[1]: v for k, v in files.items() if ".mlpackage/" in k}
        if not pkg_files:
            if any(".mlmodelc/" in k for k in files):
                raise MilError("the .pte holds a compiled Core ML model (.mlmodelc); lower with model_type MODEL")
            continue
        out.append(MilPackage.from_files(pkg_files, "pte payload"))
    return out
