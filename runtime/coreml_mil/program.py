"""The ML program model: what a saved Core ML ``.mlpackage`` holds, decoded into plain dataclasses.

- MIL structures: `TensorType`, `ConstValue` / `BlobRef` (immediate constants and references into the weight file),
  `Operation`, `Block`, `Function`, parsed from the MIL ``Program`` message;
- the model description: `FeatureSpec` (inputs/outputs, enumerated shapes, shape ranges) and `ModelSpec` (the parts
  of the ``Model`` message the evaluator uses), via `load_model_spec`;
- weights: `BlobStore`, reading tensors out of MIL weight files (``weights/weight.bin``);
- `MilPackage`, the loaded program (spec + weights), and `load_mlpackage` for a package folder.

Containers that hold a package (its zip, an ExecuTorch ``.pte``) are artifacts.py's job; running it is evaluator.py's.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MilError
from .protobuf import fields, map_entry, packed_varints, signed64

MODEL_SPEC_PATH = "Data/com.apple.CoreML/model.mlmodel"
WEIGHTS_DIR = "Data/com.apple.CoreML/weights"


# ------------------------------------------------------------------------------------------------ MIL structures

# MIL.proto DataType -> numpy dtype (sub-byte and 8-bit float types are not supported).
MIL_DTYPES: dict[int, Any] = {
    1: np.bool_, 2: np.str_, 10: np.float16, 11: np.float32, 12: np.float64,
    21: np.int8, 22: np.int16, 23: np.int32, 24: np.int64, 31: np.uint8, 32: np.uint16, 33: np.uint32, 34: np.uint64,
}
_MIL_DTYPE_NAMES = {
    0: "unused", 1: "bool", 2: "string", 10: "fp16", 11: "fp32", 12: "fp64", 13: "bf16", 21: "int8", 22: "int16",
    23: "int32", 24: "int64", 25: "int4", 31: "uint8", 32: "uint16", 33: "uint32", 34: "uint64", 35: "uint4",
    36: "uint2", 37: "uint1", 38: "uint6", 39: "uint3", 40: "fp8e4m3", 41: "fp8e5m2",
}
# Names used by the `cast` op and by quantize's output_dtype.
DTYPE_BY_NAME = {
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
        if self.dtype not in MIL_DTYPES:
            raise MilError(f"unsupported MIL data type {_MIL_DTYPE_NAMES.get(self.dtype, self.dtype)}")
        return MIL_DTYPES[self.dtype]

    @property
    def dtype_name(self) -> str:
        return _MIL_DTYPE_NAMES.get(self.dtype, str(self.dtype))

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype_name}[{dims}]"


def _parse_dimension(buf: bytes) -> int | None:
    for num, _, val in fields(buf):
        if num == 1:  # ConstantDimension
            for n2, _, v2 in fields(val):
                if n2 == 1:
                    return int(v2)
            return 0
        if num == 2:  # UnknownDimension
            return None
    return None


def _parse_value_type(buf: bytes) -> TensorType | None:
    """ValueType -> TensorType; list/tuple/dict/state types are not used by our graphs (None)."""
    for num, _, val in fields(buf):
        if num == 1:
            dtype, dims = 0, []
            for n2, _, v2 in fields(val):
                if n2 == 1:
                    dtype = v2
                elif n2 == 3:
                    dims.append(_parse_dimension(v2))
            return TensorType(dtype, tuple(dims))
    return None


def _parse_named_value_type(buf: bytes) -> tuple[str, TensorType | None]:
    name, vtype = "", None
    for num, _, val in fields(buf):
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
    for num, _, val in fields(buf):
        kind, payload = num, val
        items: list[Any] = []
        for n2, wt2, v2 in fields(payload):
            if n2 != 1:
                continue
            if num == 1:  # floats, packed
                items.extend(struct.unpack(f"<{len(v2) // 4}f", v2) if wt2 == 2 else struct.unpack("<f", v2))
            elif num == 6:  # doubles
                items.extend(struct.unpack(f"<{len(v2) // 8}d", v2) if wt2 == 2 else struct.unpack("<d", v2))
            elif num in (2, 5):  # ints (int32, sign-extended varints), longInts
                items.extend(packed_varints(wt2, v2))
            elif num == 3:  # bools
                items.extend(bool(x) for x in packed_varints(wt2, v2))
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
    for num, _, val in fields(buf):
        if num == 2:
            vtype = _parse_value_type(val)
        elif num == 3:
            imm = val
        elif num == 5:
            fname, offset = "", 0
            for n2, _, v2 in fields(val):
                if n2 == 1:
                    fname = v2.decode()
                elif n2 == 2:
                    offset = v2
            blob = BlobRef(fname, offset)
    if blob is not None:
        return ConstValue(vtype, blob=blob)
    value: Any = None
    if imm is not None:
        for num, _, val in fields(imm):
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
    for num, _, val in fields(buf):
        if num == 1:
            op_type = val.decode()
        elif num == 2:
            key, arg = map_entry(val)
            bindings = []
            for n2, _, v2 in fields(arg):  # Argument.arguments
                if n2 != 1:
                    continue
                for n3, _, v3 in fields(v2):  # Binding oneof
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
            key, v = map_entry(val)
            attributes[key] = _parse_value(v)
    return Operation(op_type, inputs, outputs, attributes, has_blocks)


def _parse_block(buf: bytes) -> Block:
    inputs, outputs, ops = [], [], []
    for num, _, val in fields(buf):
        if num == 1:
            inputs.append(_parse_named_value_type(val))
        elif num == 2:
            outputs.append(val.decode())
        elif num == 3:
            ops.append(_parse_operation(val))
    return Block(inputs, outputs, ops)


def _parse_function(name: str, buf: bytes) -> Function:
    inputs, opset, blocks = [], "", {}
    for num, _, val in fields(buf):
        if num == 1:
            inputs.append(_parse_named_value_type(val))
        elif num == 2:
            opset = val.decode()
        elif num == 3:
            key, b = map_entry(val)
            blocks[key] = _parse_block(b)
    return Function(name, inputs, opset, blocks)


def _parse_program(buf: bytes) -> tuple[int, dict[str, Function]]:
    version, functions = 0, {}
    for num, _, val in fields(buf):
        if num == 1:
            version = val
        elif num == 2:
            key, f = map_entry(val)
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
    for num, _, val in fields(buf):
        if num == 1:
            name = val.decode()
        elif num == 3:
            for n2, _, v2 in fields(val):
                if n2 in kinds:
                    kind = kinds[n2]
                if n2 != 5:
                    continue
                for n3, wt3, v3 in fields(v2):
                    if n3 == 1:
                        shape.extend(packed_varints(wt3, v3))
                    elif n3 == 2:
                        dtype = _ARRAY_DTYPES.get(v3, str(v3))
                    elif n3 == 21:
                        for n4, _, v4 in fields(v3):
                            if n4 == 1:
                                dims: list[int] = []
                                for n5, wt5, v5 in fields(v4):
                                    if n5 == 1:
                                        dims.extend(packed_varints(wt5, v5))
                                enumerated.append(tuple(dims))
                    elif n3 == 31:
                        for n4, _, v4 in fields(v3):
                            if n4 == 1:
                                lo = hi = 0
                                for n5, _, v5 in fields(v4):
                                    if n5 == 1:
                                        lo = signed64(v5)
                                    elif n5 == 2:
                                        hi = signed64(v5)
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
        for num, _, val in fields(data):
            if num == 1:
                spec_version = val
            elif num == 2:
                for n2, _, v2 in fields(val):
                    if n2 == 1:
                        inputs.append(_parse_feature(v2))
                    elif n2 == 10:
                        outputs.append(_parse_feature(v2))
                    elif n2 == 20:  # FunctionDescription of a multifunction model (ExecuTorch: one per method)
                        fname, fin, fout = "", [], []
                        for n3, _, v3 in fields(v2):
                            if n3 == 1:
                                fname = v3.decode()
                            elif n3 == 2:
                                fin.append(_parse_feature(v3))
                            elif n3 == 3:
                                fout.append(_parse_feature(v3))
                        function_io[fname] = (fin, fout)
                    elif n2 == 21:
                        default_function = v2.decode()
                    elif n2 == 100:
                        for n3, _, v3 in fields(v2):
                            if n3 == 100:
                                k, v = map_entry(v3)
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

    def function(self, name: str) -> Function:
        """The function ``name``; `MilError` naming the functions the program has when it has no such one."""
        if name not in self.functions:
            raise MilError(f"no function {name!r} in the program (has: {', '.join(self.functions)})")
        return self.functions[name]

    def op_counts(self, function: str | None = None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.function(function or self.default_function).block.operations:
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
