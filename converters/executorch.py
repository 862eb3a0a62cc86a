"""ExecuTorch target: XNNPACK-delegated ``.pte``, FP32 or INT8 (PT2E, XNNPACKQuantizer), one method per tile shape.

The artifact holds ``forward`` at the card's tile and ``forward_{H}x{W}`` for every extra tile asked for. The
delegation summary counts, per method, the edge ops inside the XNNPACK delegate and every op left outside it, with
the partitioner's own reason (its ``WhyNoPartition`` log) or, where it gave none, that XNNPACK has no kernel for it.
An ETRecord is written next to the artifact (``etrecord.bin``) for per-op profiling and numeric comparison.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from typing import Any, Callable


from .base import (Capabilities, Fallback, LoweredMethod, LoweringContext, LoweringResult, Recipe, method_name,
                   register_target, require_modules)

_NON_COMPUTE = {"getitem", "executorch_call_delegate", "output", "placeholder", "get_attr",
                "alloc"}  # alloc: ExecuTorch's memory planning op (to_executorch() rewrites the edge graph in place)


class _WhyLog(logging.Handler):
    """Collects the XNNPACK partitioner's 'why not delegated' reasons by node name."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.reasons: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.msg
        node, reason = getattr(msg, "node", None), getattr(msg, "reason", None)
        if node is not None and reason:
            self.reasons.setdefault(str(getattr(node, "name", node)), str(reason))


def _op_name(node: Any) -> str:
    target = node.target
    name = getattr(target, "__name__", None) or str(target)
    return name.replace("aten.", "").split(".default")[0].removesuffix(".out")


def export_methods(model: Any, examples: list[Any]) -> tuple[dict[str, Any], dict[str, tuple[list[int], list[int]]]]:
    """One exported program per example tile (`method_name`), and each method's (input, output) shapes."""
    import torch

    programs: dict[str, Any] = {}
    shapes: dict[str, tuple[list[int], list[int]]] = {}
    for i, x in enumerate(examples):
        name = method_name(i, x)
        with torch.no_grad():
            y = model(x)
        programs[name] = torch.export.export(model, (x,))
        shapes[name] = (list(x.shape), list(y.shape))
    return programs, shapes


@register_target
class ExecuTorchTarget:
    name = "executorch"
    capabilities = Capabilities(
        artifact="model.pte", runner="executorch", recipes=("fp32", "int8-ptq", "int8-qat"),
        calibrated_recipes=("int8-ptq", "int8-qat"),
    )

    def check_available(self) -> None:
        require_modules(self.name, "executorch.exir", "executorch.backends.xnnpack.partition.xnnpack_partitioner")

    def pt2e_quantizer(self, recipe: Recipe, model: Any) -> Any:
        if not recipe.quantized:
            return None
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

        from nsr_edge.quant import node_filter

        config = get_symmetric_quantization_config(is_per_channel=recipe.per_channel, is_qat=recipe.method == "qat")
        quantizer = XNNPACKQuantizer().set_global(config)
        if recipe.fp32_parts:
            quantizer.set_filter_function(node_filter(model, recipe.fp32_parts))
        return quantizer

    def lower(self, model: Any, examples: list[Any], context: LoweringContext) -> LoweringResult:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        programs, shapes = export_methods(model, examples)

        why = _WhyLog()
        xnn_logger = logging.getLogger("executorch.backends.xnnpack")
        old_level = xnn_logger.level
        xnn_logger.setLevel(logging.DEBUG)
        xnn_logger.addHandler(why)
        try:
            edge = to_edge_transform_and_lower(programs, partitioner=[XnnpackPartitioner()], generate_etrecord=True)
        finally:
            xnn_logger.removeHandler(why)
            xnn_logger.setLevel(old_level)
        et = edge.to_executorch()

        methods = []
        for name in programs:
            methods.append(delegation_of(edge, name, shapes[name][0], shapes[name][1],
                                         lambda n: why.reasons.get(n.name, _default_reason(_op_name(n), context.quantized))))

        notes = []
        if any(m.fallbacks for m in methods):
            notes.append("ops outside the delegate run in ExecuTorch's portable kernels (much slower; int8 ones need "
                         "executorch.kernels.quantized, which the runner loads)")
        side: dict[str, bytes] = {}
        try:
            buf = io.BytesIO()
            et.get_etrecord().save(buf)
            side["etrecord.bin"] = buf.getvalue()
        except Exception as e:  # noqa: BLE001 - ETRecord is a debugging aid; the artifact stays valid without it
            notes.append(f"no ETRecord written ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
        return LoweringResult({self.capabilities.artifact: et.buffer}, methods, "XNNPACK", notes, side_files=side)


def delegation_of(edge: Any, name: str, input_shape: list[int], output_shape: list[int],
                  reason_for: Callable[[Any], str]) -> LoweredMethod:
    """What ran where in one lowered method: compute ops inside XNNPACK delegates, and each op kind left outside
    with the reason ``reason_for(node)`` gives for its first occurrence."""
    gm = edge.exported_program(name).graph_module
    outside = [n for n in gm.graph.nodes if n.op == "call_function" and _op_name(n) not in _NON_COMPUTE]
    delegates = [n for n in gm.graph.nodes if n.op == "call_function" and _op_name(n) == "executorch_call_delegate"]
    inside = 0
    for d in delegates:
        inner = getattr(gm, d.args[0].target).original_module.graph_module.graph.nodes
        inside += sum(1 for n in inner if n.op == "call_function" and _op_name(n) not in _NON_COMPUTE)
    counts = Counter(_op_name(n) for n in outside)
    reasons: dict[str, str] = {}
    for n in outside:
        reasons.setdefault(_op_name(n), reason_for(n))
    fallbacks = [Fallback(op, c, reasons[op]) for op, c in counts.most_common()]
    return LoweredMethod(name, input_shape, output_shape, inside, inside + len(outside), len(delegates), fallbacks)


def _default_reason(op: str, quantized: bool) -> str:
    if op in ("quantize_per_tensor", "dequantize_per_tensor", "quantize_per_channel", "dequantize_per_channel"):
        return "quantize/dequantize at a float/int8 boundary outside a delegated int8 region"
    if op in ("_clone_dim_order", "_to_dim_order_copy"):
        return "layout copy (NCHW <-> channels-last) between delegates or at an output"
    if op in ("convolution",):
        return "convolution with a non-static (computed) weight: XNNPACK needs static weights"
    return "not supported by the XNNPACK partitioner in this graph form (no reason logged)"
