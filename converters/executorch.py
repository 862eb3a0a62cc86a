"""ExecuTorch target: XNNPACK-delegated ``.pte``, FP32 or INT8 (PT2E, XNNPACKQuantizer), one method per tile shape.

The artifact holds ``forward`` at the card's tile and ``forward_{H}x{W}`` for every extra tile asked for. The
delegation summary counts, per method, the edge ops inside the XNNPACK delegate and every op left outside it, with
the partitioner's own reason (its ``WhyNoPartition`` log) or, where it gave none, that XNNPACK has no kernel for it.
An ETRecord is written next to the artifact (``etrecord.bin``) for per-op profiling and numeric comparison.
"""

from __future__ import annotations

import io
import logging
import sys
from collections import Counter
from typing import Any, Callable


from nsr_edge.errors import UserError

from .base import (HARD_DISPATCH_REQUIREMENTS, Capabilities, Fallback, LoweredMethod, LoweringContext, LoweringResult,
                   Recipe, method_name, register_target, require_modules)

_NON_COMPUTE = {"getitem", "executorch_call_delegate", "output", "placeholder", "get_attr", "cond",
                "alloc"}  # alloc: ExecuTorch's memory planning op (to_executorch() rewrites the edge graph in place)


_ROUTING_OPS = {"argmax", "select_copy.int", "lt.Scalar", "lt.Scalar_out", "eq.Scalar", "view_copy"}  # strategy hard: picks the branch


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
        artifact="model.pte", runner="executorch", recipes=("fp32", "int8-ptq", "int8-qat", "int8-ptq-mix"),
        calibrated_recipes=("int8-ptq", "int8-qat", "int8-ptq-mix"),
        requirements=HARD_DISPATCH_REQUIREMENTS,  # --strategy hard: routing inside the program (control_flow.py)
    )

    def check_available(self) -> None:
        require_modules(self.name, "executorch.exir", "executorch.backends.xnnpack.partition.xnnpack_partitioner")

    def pt2e_quantizer(self, recipe: Recipe, model: Any) -> Any:
        if not recipe.quantized:
            return None
        if _hard_routed(model):  # quantized per bank program inside lower() (PT2E cannot see into cond branches)
            if recipe.method != "ptq":
                raise UserError(f"target executorch --strategy hard supports fp32 and int8-ptq, not {recipe.name} "
                                "(its programs are quantized one by one after routing; QAT would need the same split)")
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

        if context.strategy == "hard":
            return self.lower_hard(model, examples, context)
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


    def lower_hard(self, model: Any, examples: list[Any], context: LoweringContext) -> LoweringResult:
        """Hard routing inside one ``forward``: the dispatch plan's programs (quantized one by one for INT8, each bank
        on the tiles routed to it) composed with ``torch.cond``, every branch delegated (`control_flow`)."""
        import torch

        from .control_flow import compose_plan, lower_with_control_flow
        from .executorch_dispatch import build_plan, quantize_plan

        if len(examples) != 1:
            raise UserError("target executorch --strategy hard writes one tile size per artifact (no --extra-tiles)")
        x = examples[0]
        plan = build_plan(model, target="target executorch --strategy hard",
                          dense_hint="convert dense models with --strategy output-mix",
                          output_layout="contiguous")  # the tail writes NCHW inside its delegate: no layout copy
        if plan.mode != "block":
            # Measured, not a design limit: every per-layer-routed composite we lowered (1-2 blocks, k = 2-3, 24 and
            # 64 px tiles; the code before the layout change too) crashes ExecuTorch 1.5.1 in load_method (SIGSEGV
            # or SIGBUS in the branch delegates' init; without XNNPACK the same graph loads), or, lowered under some
            # hash seeds, loads and wires a delegate to the wrong tensors (docs/dispatch.md). Never ship that.
            raise UserError("target executorch --strategy hard: per-layer routing (each conv routed on its own input) "
                            "lowers to a program that crashes ExecuTorch 1.5.1 on load; use --target "
                            "executorch-dispatch, or a shared-routing model (--shared-routing: one program per block)")
        modules, notes, extra = plan.programs, list(plan.notes), {}
        for n in plan.notes:  # e.g. soft routing made hard: said on stderr too, as executorch-dispatch does
            print(f"executorch --strategy hard: warning: {n}", file=sys.stderr)
        if context.recipe.quantized:
            if context.calibration_tiles is None or not len(context.calibration_tiles):
                raise UserError("target executorch --strategy hard: int8 recipes need calibration tiles")
            q = quantize_plan(plan, context.calibration_tiles, context.recipe)
            modules = q["modules"]
            extra["in_program_routing"] = {"calibration": q["calibration"]}
        composite = compose_plan(modules, plan.stages)
        with torch.no_grad():
            out_shape = list(composite(x).shape)
        edge, et = lower_with_control_flow(composite, x)
        method = delegation_of(edge, "forward", list(x.shape), out_shape,
                               lambda n: _default_reason(_op_name(n), context.recipe.quantized))
        warning = portable_ops_verdict("target executorch --strategy hard", method.fallbacks, _ROUTING_OPS)
        routed = sum(1 for st in plan.stages if len(st["methods"]) > 1)
        extra.setdefault("in_program_routing", {}).update(
            {"banks": plan.banks, "mode": plan.mode, "routed_stages": routed, "programs": len(modules),
             "routing": "argmax over each routed stage's k logits (first index on ties) inside the program; "
                        "torch.cond picks the bank's delegated branch"})
        notes.append(f"hard routing inside one forward: {routed} routed stages x {plan.banks} banks as torch.cond "
                     f"branches, {method.partitions} XNNPACK partitions"
                     + ("" if warning else "; only the routing decision runs outside"))
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
            notes.append(warning)
        return LoweringResult({self.capabilities.artifact: et.buffer}, [method], "XNNPACK", notes, extra=extra)


def portable_ops_verdict(target: str, fallbacks: list[Fallback], expected: set[str] | frozenset[str] = frozenset()
                         ) -> str | None:
    """What a routed program's ops outside XNNPACK mean for shipping it: a `UserError` (nothing written) when a
    convolution stayed outside (portable kernels, ~100x slower: field notes), else a one-line warning with the count
    of every other op outside besides ``expected`` (the routing decision), or None when there is none."""
    stray = {f.op: f.count for f in fallbacks if f.op not in expected}
    if stray.get("convolution"):
        raise UserError(f"{target}: {stray['convolution']} convolution(s) did not delegate to XNNPACK (they would run "
                        "~100x slower in portable kernels); not writing the artifact")
    if not stray:
        return None
    return (f"{target}: {sum(stray.values())} op(s) outside XNNPACK run in portable kernels: "
            + ", ".join(f"{k} x{v}" for k, v in stray.items()))


def _hard_routed(model: Any) -> bool:
    from nsr_edge.deploy import HardRoutedConv

    return any(isinstance(m, HardRoutedConv) for m in model.modules())


def delegation_of(edge: Any, name: str, input_shape: list[int], output_shape: list[int],
                  reason_for: Callable[[Any], str]) -> LoweredMethod:
    """What ran where in one lowered method: compute ops inside XNNPACK delegates, and each op kind left outside
    with the reason ``reason_for(node)`` gives for its first occurrence."""
    from .control_flow import control_flow_modules

    outside, inside, partitions = [], 0, 0
    for gm in control_flow_modules(edge.exported_program(name).graph_module):  # cond branches too (strategy hard)
        calls = [n for n in gm.graph.nodes if n.op == "call_function"]
        outside += [n for n in calls if _op_name(n) not in _NON_COMPUTE]
        for d in (n for n in calls if _op_name(n) == "executorch_call_delegate"):
            inner = getattr(gm, d.args[0].target).original_module.graph_module.graph.nodes
            inside += sum(1 for n in inner if n.op == "call_function" and _op_name(n) not in _NON_COMPUTE)
            partitions += 1
    counts = Counter(_op_name(n) for n in outside)
    reasons: dict[str, str] = {}
    for n in outside:
        reasons.setdefault(_op_name(n), reason_for(n))
    fallbacks = [Fallback(op, c, reasons[op]) for op, c in counts.most_common()]
    return LoweredMethod(name, input_shape, output_shape, inside, inside + len(outside), partitions, fallbacks)


def _default_reason(op: str, quantized: bool) -> str:
    if op in ("quantize_per_tensor", "dequantize_per_tensor", "quantize_per_channel", "dequantize_per_channel"):
        return "quantize/dequantize at a float/int8 boundary outside a delegated int8 region"
    if op in ("_clone_dim_order", "_to_dim_order_copy"):
        return "layout copy (NCHW <-> channels-last) between delegates or at an output"
    if op in _ROUTING_OPS:
        return "the routing decision (argmax of k logits, scalar compares choosing the cond branch): by design outside XNNPACK"
    if op in ("convolution",):
        return "convolution with a non-static (computed) weight: XNNPACK needs static weights"
    return "not supported by the XNNPACK partitioner in this graph form (no reason logged)"
