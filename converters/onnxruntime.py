"""ONNX Runtime target: the deploy form as a ``.onnx`` graph for ONNX Runtime's CPU execution provider (MLAS kernels).

Why it matters for NSR: ORT's ``Conv`` takes a computed weight tensor (no static-weight requirement, unlike XNNPACK),
so ``--strategy kernel-mix`` runs as is: per tile, the routing head mixes the k banks into one kernel and one conv of
one bank's MACs runs with it. That is the fused "mixed-kernel conv" of issue 6 without a custom operator: exact soft
routing (no hard-routing accuracy cost) at about the equal-MACs cost plus the mixing (docs/onnxruntime.md). Convs with
computed weights lose ORT's weight prepacking; the static convs keep it.

Export: ``torch.onnx.export(..., dynamo=True)`` (torch.export -> onnxscript), opset from the exporter, fixed batch-1
tile (one ``.onnx`` per tile size: ``model.onnx`` for the card's tile, ``model_<method>.onnx`` for ``--extra-tiles``).
Recipes: fp32 only for now (an int8 QDQ path for static convs is ORT's `quantize_static`; not wired).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from nsr_edge.errors import UserError
from nsr_edge.runtime.runners.onnxruntime_runner import method_file  # one naming rule for writer and reader

from .base import Capabilities, LoweredMethod, LoweringContext, LoweringResult, Recipe, method_name, register_target


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
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def graph_summary(data: bytes) -> dict[str, Any]:
    """Op counts, and the convs whose weight is computed in the graph (kernel-mix): those run without ORT's
    prepacked weights. Every node runs in the CPU provider: nothing is partitioned out."""
    import onnx

    graph = onnx.load_from_string(data).graph
    constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    dynamic = sum(1 for n in graph.node if n.op_type == "Conv" and n.input[1] not in constants)
    ops = Counter(n.op_type for n in graph.node)
    return {"nodes": len(graph.node), "ops": dict(ops.most_common()), "computed_weight_convs": dynamic}


@register_target
class OnnxRuntimeTarget:
    name = "onnxruntime"
    capabilities = Capabilities(artifact="model.onnx", runner="onnxruntime", recipes=("fp32",))

    def check_available(self) -> None:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as e:
            raise UserError(f"target onnxruntime needs onnx, onnxscript and onnxruntime ({e}); "
                            "pip install -e '.[full]'") from None

    def pt2e_quantizer(self, recipe: Recipe, model: Any) -> Any:
        return None  # fp32 only (recipes)

    def lower(self, model: Any, examples: list[Any], context: LoweringContext) -> LoweringResult:
        import torch

        files: dict[str, bytes] = {}
        methods: list[LoweredMethod] = []
        infos: list[dict[str, Any]] = []
        for i, x in enumerate(examples):
            name = method_name(i, x)
            with torch.no_grad():
                y = model(x)
            data = export_onnx(model, x)
            files[method_file(name)] = data
            infos.append(graph_summary(data))
            methods.append(LoweredMethod(name, list(x.shape), list(y.shape), infos[-1]["nodes"], infos[-1]["nodes"], 1))
        forward = infos[0]
        notes = ["ONNX Runtime CPU execution provider (MLAS): model.onnx holds the card's tile, one "
                 "model_<method>.onnx per extra tile"]
        if forward["computed_weight_convs"]:
            notes.append(f"{forward['computed_weight_convs']} convs take weights computed per tile (mixed or gathered "
                         "from the banks: about one bank's MACs; no weight prepacking)")
        return LoweringResult(files, methods, "ORT-CPU", notes, extra={"onnx": forward})

__all__ = ["OnnxRuntimeTarget", "export_onnx", "graph_summary", "method_file"]
