"""A reference evaluator for Core ML ML programs: read a saved ``.mlpackage`` and run its MIL program op by op.

coremltools converts and compresses models on Linux but can only *run* them on macOS, and it ships no reference
executor. This package closes that gap for the graphs nsr-edge produces: it parses the package's protobuf
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
import), so the package runs in the torch-free device/runtime environment. Optional speed-up: with
``backend="auto"`` (the default) and torch *already imported* by the caller, convolutions and matmuls run through
``torch.nn.functional``; this package never imports torch itself unless ``backend="torch"`` is asked for.

Supported MIL ops (others raise ``MilUnsupportedOpError`` naming the op): see ``SUPPORTED_OPS``.

Modules, one job each:

- ``protobuf``: the protobuf wire-format decoder (varints, fields, map entries);
- ``program``: the ML program model (types, constants, ops, functions, model description, weight blobs,
  `MilPackage`, `load_mlpackage`);
- ``kernels``: the op kernels, registered by op name (``@kernel("conv")``), and the numpy/torch conv backend;
- ``evaluator``: `MilEvaluator` (run, activation ranges, quantization lint);
- ``artifacts``: the program inside an artifact file (folder, zip, ExecuTorch ``.pte``): `load_artifact`,
  `coreml_payloads`, `unflatten_directory`;
- ``errors``: `MilError`, `MilUnsupportedOpError`.

Usage::

    package = load_mlpackage("model.mlpackage")
    ev = MilEvaluator(package)
    out = ev.run({"lr": tile})["sr"]
    ranges = ev.activation_ranges(tiles)  # per-tensor min/max, for activation-quantization calibration
"""

from .artifacts import coreml_payloads, load_artifact, unflatten_directory
from .errors import MilError, MilUnsupportedOpError
from .evaluator import MilEvaluator
from .kernels import SUPPORTED_OPS
from .program import Block, FeatureSpec, Function, MilPackage, Operation, TensorType, load_mlpackage, load_model_spec

# Internals imported from here by runtime/runners/coreml_runner.py (_FLAT_MARK) and tests/runtime (the rest).
from .artifacts import _FLAT_MARK  # noqa: F401
from .kernels import _conv_numpy, _k_dequantize, _k_quantize  # noqa: F401

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
