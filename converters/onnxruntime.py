"""ONNX Runtime target: the deploy form as a ``.onnx`` graph for ONNX Runtime's CPU execution provider (MLAS kernels).

Why it matters for NSR: ORT's ``Conv`` takes a computed weight tensor (no static-weight requirement, unlike XNNPACK),
so ``--strategy kernel-mix`` runs as is: per tile, the routing head mixes the k banks into one kernel and one conv of
one bank's MACs runs with it. That is the fused "mixed-kernel conv" of issue 6 without a custom operator: exact soft
routing (no hard-routing accuracy cost) at about the equal-MACs cost plus the mixing (docs/onnxruntime.md). Convs with
computed weights lose ORT's weight prepacking; the static convs keep it.

Export: ``torch.onnx.export(..., dynamo=True)`` (torch.export -> onnxscript), opset from the exporter, fixed batch-1
tile (one ``.onnx`` per tile size: ``model.onnx`` for the card's tile, ``model_<method>.onnx`` for ``--extra-tiles``).

INT8 (``int8-ptq``, `quantize_int8`): ``onnxruntime.quantization.quantize_static`` in QDQ format, int8 per-channel
symmetric weights, uint8 per-tensor activations (percentile calibration) on the pipeline's real tiles
(``context.calibration_tiles``) through a `CalibrationDataReader`. The recipe's ``fp32_parts`` become
``nodes_to_exclude``, mapped from the module path and class the exporter writes into every node's metadata
(`part_nodes`, the same rules as `nsr_edge.quant.node_filter` on ExecuTorch), and float nodes read float tensors,
not the dequantized copy QDQ gives every consumer (`float_consumers_read_float`). Convs whose weight is computed in the
graph (kernel-mix, hard) always stay float; a request that would leave no conv to quantize is refused in one line.
ORT fuses each DQ -> Conv -> Q into a ``QLinearConv`` at session load (docs/onnxruntime.md).
"""

from __future__ import annotations

import ast
import logging
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nsr_edge.runtime.runners.onnxruntime_runner import (
    method_file,  # one naming rule for writer and reader
)

from nsr_edge.errors import UserError

from .base import (
    Capabilities,
    LoweredMethod,
    LoweringContext,
    LoweringResult,
    Recipe,
    method_name,
    register_target,
    require_modules,
)


def export_onnx(model: Any, example: Any) -> bytes:
    """One fixed-shape graph, weights embedded (a single self-contained file; our models are small)."""
    import onnx
    import torch

    with tempfile.TemporaryDirectory(prefix="nsr-edge-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        with torch.no_grad():
            program = torch.onnx.export(model, (example,), dynamo=True, optimize=True, verbose=False,
                                        input_names=["input"], output_names=["output"])
        program.save(str(path), external_data=False)
        proto = onnx.load(str(path))
    strip_stack_traces(proto)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"


def strip_stack_traces(proto: Any) -> None:
    """Drop the exporter's per-node Python stack traces: they hold absolute paths of the converting machine (an
    artifact must be the same bytes wherever it is converted, and ships inside apps). The module hierarchy the
    INT8 exclusions read (``pkg.torch.onnx.class_hierarchy``, ``name_scopes``, ``namespace``) stays."""
    graphs = [proto.graph, *(f for f in proto.functions)]
    while graphs:
        g = graphs.pop()
        for node in getattr(g, "node", []):
            kept = [m for m in node.metadata_props if m.key != STACK_TRACE_KEY]
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
            for attr in node.attribute:
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)


def _constants(graph: Any) -> set[str]:
    return {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}


def computed_weight_convs(graph: Any) -> list[str]:
    """Names of the Conv nodes whose weight is computed in the graph (kernel mixing, hard gathering). A QDQ weight
    (DequantizeLinear of an initializer) counts as static."""
    constants = _constants(graph)
    dq_of_constant = {o for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in constants
                      for o in n.output}
    return [n.name for n in graph.node if n.op_type == "Conv" and n.input[1] not in constants | dq_of_constant]


def graph_summary(data: bytes) -> dict[str, Any]:
    """Op counts, and the convs whose weight is computed in the graph (kernel-mix): those run without ORT's
    prepacked weights. Every node runs in the CPU provider: nothing is partitioned out."""
    import onnx

    graph = onnx.load_from_string(data).graph
    ops = Counter(n.op_type for n in graph.node)
    return {"nodes": len(graph.node), "ops": dict(ops.most_common()),
            "computed_weight_convs": len(computed_weight_convs(graph))}


# ------------------------------------------------------------------------------------------------------ quantization

_CLASSES = "pkg.torch.onnx.class_hierarchy"  # metadata torch.onnx.export(dynamo=True) writes on every node
_SCOPES = "pkg.torch.onnx.name_scopes"


def _node_modules(node: Any) -> tuple[list[str], list[str]] | None:
    """(module classes, module paths) from the root module to the node's innermost module, or None when the exporter
    wrote no metadata. The last entry of each list is the aten op / the node's own name: dropped."""
    meta = {p.key: p.value for p in node.metadata_props}
    if _CLASSES not in meta or _SCOPES not in meta:
        return None
    classes, scopes = ast.literal_eval(meta[_CLASSES]), ast.literal_eval(meta[_SCOPES])
    return [str(c) for c in classes[:-1]], [str(s) for s in scopes[:-1]]


def part_nodes(graph: Any, model: Any, fp32_parts: tuple[str, ...]) -> dict[str, list[str]]:
    """Part -> names of the nodes it owns, decided like `nsr_edge.quant.node_filter` on ExecuTorch but from the ONNX
    nodes' metadata: ``routing``: nodes inside a RoutingHead and nodes owned directly by a sparse conv (the gate
    matmul, multiply, slices and sum over the banks; the mixing matmul and computed-weight conv of kernel-mix);
    ``heads``: nodes inside a RoutingHead only;
    ``first``/``last``/``skip``: nodes under those modules' paths; ``output``: nodes of the network's own forward
    (input shift, body + skip add, +0.5); ``residual``: the Add owned by each residual block (the identity path).
    Raises RuntimeError when the graph carries no module metadata (another exporter): the parts cannot be mapped."""
    from nsr_edge.deploy import DeploySparseConv, RoutingHead
    from nsr_edge.models import ResidualBlock
    from nsr_edge.quant import _subclasses, part_names

    names = part_names(model)
    block = f"{ResidualBlock.__module__}.{ResidualBlock.__qualname__}"
    head = f"{RoutingHead.__module__}.{RoutingHead.__qualname__}"
    convs = {f"{c.__module__}.{c.__qualname__}" for c in _subclasses(DeploySparseConv)}
    out: dict[str, list[str]] = {p: [] for p in fp32_parts}
    for node in graph.node:
        mods = _node_modules(node)
        if mods is None:
            if node.op_type == "Constant":
                continue
            raise RuntimeError(f"onnx node {node.name} has no module metadata ({_CLASSES}); the recipe's fp32_parts "
                               "cannot be mapped to nodes")
        classes, scopes = mods
        for part in fp32_parts:
            if part == "routing":
                hit = head in classes or (bool(classes) and classes[-1] in convs)
            elif part == "heads":  # the routing heads only: the gate multiply and bank sums are quantized
                hit = head in classes
            elif part == "output":
                hit = len(classes) == 1
            elif part == "residual":
                hit = bool(classes) and classes[-1] == block and node.op_type == "Add"
            elif part in names:
                hit = any(s == names[part] or s.startswith(names[part] + ".") for s in scopes)
            else:
                hit = False
            if hit:
                out[part].append(node.name)
    return out


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs a pre-processing hint on the root logger for every call, and its histogram
    calibration print()s its progress ("Collecting tensor data and making histogram ...") on stdout, where
    ``convert --json`` writes the card: both are silenced."""
    import contextlib
    import os

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            yield
    finally:
        root.setLevel(level)


def fit_tiles(tiles: Any, shape: list[int]) -> Any:
    """Calibration tiles (N, C, T, T) cut to a method's input size: centre crop, or reflect padding when larger."""
    import numpy as np

    h, w = shape[-2:]
    th, tw = tiles.shape[-2:]
    if (h, w) == (th, tw):
        return tiles
    if h <= th and w <= tw:
        y, x = (th - h) // 2, (tw - w) // 2
        return np.ascontiguousarray(tiles[..., y:y + h, x:x + w])
    return np.pad(tiles, ((0, 0), (0, 0), (0, max(0, h - th)), (0, max(0, w - tw))), mode="reflect")[..., :h, :w]


CALIBRATION: dict[str, Any] = {"method": "Percentile", "options": {"CalibPercentile": 99.999}}
"""quantize_static's activation calibration: the 99.999th percentile of |x| per tensor (histogram), which lost less
than MinMax on nsr_sr_x2 (Set5 drop 0.009 vs 0.021 dB, float parts reading float tensors; docs/onnxruntime.md)."""

QUANT_SETTINGS = {"format": "QDQ", "weights": "int8, per output channel, symmetric",
                  "activations": "uint8, per tensor, asymmetric (Percentile 99.999 calibration)",
                  "api": "onnxruntime.quantization.quantize_static"}


def quantize_int8(data: bytes, tiles: Any, exclude: list[str]) -> bytes:
    """``quantize_static`` (QDQ, per-channel symmetric int8 weights, uint8 activations, `CALIBRATION`) calibrated on
    ``tiles`` (N, C, H, W, the graph's input size), the nodes in ``exclude`` left float."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Tiles(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(range(len(tiles)))

        def get_next(self) -> dict[str, Any] | None:
            i = next(self._it, None)
            return None if i is None else {"input": tiles[i:i + 1].astype("float32")}

    with tempfile.TemporaryDirectory(prefix="nsr-edge-ortq-") as tmp, _quiet_quantizer():
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(data)
        quantize_static(str(src), str(dst), Tiles(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=getattr(CalibrationMethod, CALIBRATION["method"]),
                        nodes_to_exclude=list(exclude),
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                       **CALIBRATION["options"]})
        proto = onnx.load(str(dst))
    float_consumers_read_float(proto, set(exclude))
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def float_consumers_read_float(proto: Any, exclude: set[str]) -> int:
    """Re-point the float nodes (``exclude``) that read a dequantized activation at the float tensor itself.

    ``quantize_static`` puts one QuantizeLinear -> DequantizeLinear pair on a tensor and gives EVERY consumer the
    dequantized value, so a residual stream that feeds a bank conv would reach the block's identity Add and the routing
    head rounded to int8: the recipe's float ``residual``/``routing`` parts would be quantized anyway (measured: Set5
    drop 0.123 dB on nsr_sr_x2). PT2E quantizes per edge (only the conv's input is rounded); this does the same.
    Only tensors a float op produced (an excluded node, or one reading no dequantized input) are re-pointed: a
    quantized op's output (DQ -> Conv -> Q) keeps its DQ, so ORT still fuses it into one integer kernel. Returns the
    number of inputs re-pointed."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    dq = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    source = {}  # DQ output -> the float tensor its Q quantized (activations made by float ops only)
    for n in proto.graph.node:
        q = producer.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        made_by = producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
        if made_by is not None and (made_by.name in exclude or not any(i in dq for i in made_by.input)):
            source[n.output[0]] = q.input[0]
    changed = 0
    for n in proto.graph.node:
        if n.name in exclude:
            for i, name in enumerate(n.input):
                if name in source:
                    n.input[i] = source[name]
                    changed += 1
    return changed


def quantized_ops(data: bytes) -> dict[str, int]:
    """Op type -> count of the nodes quantized in QDQ form: every input dequantized and every output quantized
    (DQ -> op -> Q), what ORT runs as an integer kernel (QLinearConv, ...) after its QDQ fusions at session load.
    Float ops that merely read a dequantized tensor are not counted."""
    import onnx

    graph = onnx.load_from_string(data).graph
    dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    q_inputs = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    return dict(Counter(n.op_type for n in graph.node
                        if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                        and all(i in dq for i in n.input[:2] if i) and all(o in q_inputs for o in n.output)))


@register_target
class OnnxRuntimeTarget:
    name = "onnxruntime"
    capabilities = Capabilities(artifact="model.onnx", runner="onnxruntime", recipes=("fp32", "int8-ptq"),
                                calibrated_recipes=("int8-ptq",))

    def check_available(self) -> None:
        require_modules(self.name, "onnx", "onnxruntime", "onnxscript")

    def pt2e_quantizer(self, recipe: Recipe, model: Any) -> Any:
        return None  # int8-ptq is ORT's quantize_static, inside lower, on context.calibration_tiles

    def lower(self, model: Any, examples: list[Any], context: LoweringContext) -> LoweringResult:
        import onnx
        import torch

        recipe = context.recipe
        if recipe.quantized and context.calibration_tiles is None:
            raise RuntimeError("int8-ptq on onnxruntime needs calibration tiles (capabilities.calibrated_recipes)")
        files: dict[str, bytes] = {}
        methods: list[LoweredMethod] = []
        infos: list[dict[str, Any]] = []
        quant: dict[str, Any] = {}
        for i, x in enumerate(examples):
            name = method_name(i, x)
            with torch.no_grad():
                y = model(x)
            data = export_onnx(model, x)
            if recipe.quantized:
                graph = onnx.load_from_string(data).graph
                parts = part_nodes(graph, model, recipe.fp32_parts)
                computed = computed_weight_convs(graph)
                exclude = sorted(set().union(*parts.values(), computed))
                excluded = set(exclude)
                static = [n.name for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm")
                          and n.name not in excluded]
                if not static:
                    why = (f"the {len(computed)} convs with weights computed per tile stay float (no static weights "
                           "to quantize per channel) and " if computed else "")
                    raise UserError(f"onnxruntime: int8-ptq would quantize no conv here: {why}the recipe keeps "
                                    f"{', '.join(recipe.fp32_parts) or 'nothing'} in float; use --strategy output-mix "
                                    "(int8 bank convs) or --quant fp32")
                data = quantize_int8(data, context.calibration_tiles if i == 0
                                     else fit_tiles(context.calibration_tiles, list(x.shape)), exclude)
                if i == 0:
                    quant = {**QUANT_SETTINGS, "calibration_tiles": len(context.calibration_tiles),
                             "fp32_parts": {p: len(v) for p, v in parts.items()},
                             "computed_weight_convs_float": len(computed),
                             "quantized_ops": quantized_ops(data)}
            files[method_file(name)] = data
            infos.append(graph_summary(data))
            methods.append(LoweredMethod(name, list(x.shape), list(y.shape), infos[-1]["nodes"], infos[-1]["nodes"], 1))
        forward = infos[0]
        notes = ["ONNX Runtime CPU execution provider (MLAS): model.onnx holds the card's tile, one "
                 "model_<method>.onnx per extra tile"]
        if forward["computed_weight_convs"]:
            notes.append(f"{forward['computed_weight_convs']} convs take weights computed per tile (mixed or gathered "
                         "from the banks: about one bank's MACs; no weight prepacking)"
                         + ("; they stay float under int8" if recipe.quantized else ""))
        if recipe.quantized:
            q = ", ".join(f"{op} x{c}" for op, c in quant["quantized_ops"].items())
            notes.append(f"int8 by onnxruntime quantize_static (QDQ, per-channel int8 weights, uint8 activations "
                         f"calibrated on {quant['calibration_tiles']} real tiles): {q}; kept float: "
                         f"{', '.join(recipe.fp32_parts) or 'none'}; ORT fuses DQ -> Conv -> Q into QLinearConv")
            if len(examples) > 1:
                quant["extra_tiles_calibration"] = "the same tiles, centre-cropped or reflect-padded to each size"
            forward = {**forward, "quantization": quant}
        return LoweringResult(files, methods, "ORT-CPU", notes, extra={"onnx": forward})

__all__ = [
    "OnnxRuntimeTarget",
    "computed_weight_convs",
    "export_onnx",
    "graph_summary",
    "method_file",
    "part_nodes",
    "quantize_int8",
    "quantized_ops",
]
