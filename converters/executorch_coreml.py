"""ExecuTorch target with the Core ML delegate: a ``.pte`` whose methods run inside Core ML on Apple devices.

``CoreMLPartitioner`` lowers the output-mix deploy form to one Core ML delegate per method; the ``.pte`` embeds each
delegate's *uncompiled* ``.mlpackage`` (ExecuTorch's flattened-directory format), so on Linux the runner extracts that
payload and runs it with the MIL reference evaluator (`nsr_edge.runtime.coreml_mil.coreml_payloads`), exactly as it
does a ``--target coreml`` package. On an Apple device the ExecuTorch runtime with the Core ML backend runs it.

Recipes: ``fp32`` and ``fp16`` (the delegate's compute precision) and ``w8`` (int8 per-channel weights through the
backend's ``op_linear_quantizer_config``, i.e. coremltools' ``linear_quantize_weights`` inside the delegate; the
backend takes one global config, so unlike ``--target coreml`` the routing heads' weights are int8 too).
Activation int8 is not offered here yet (``--target coreml --quant w8a8 / int8-qat`` are the activation-int8
routes); PT2E ``CoreMLQuantizer`` + ``CoreMLPartitioner`` would be the way to add it.
"""

from __future__ import annotations

import logging
from typing import Any

from nsr_edge.errors import UserError

from .base import Capabilities, LoweredMethod, LoweringContext, LoweringResult, Recipe, register_target, require_modules
from .coreml import COREML_REFUSED_STRATEGIES


@register_target
class ExecuTorchCoreMLTarget:
    name = "executorch-coreml"
    capabilities = Capabilities(
        artifact="model.pte", runner="coreml", recipes=("fp32", "fp16", "w8"),
        strategies=("output-mix",), refused_strategies=COREML_REFUSED_STRATEGIES,
    )
    deployment_target = "iOS17"

    def check_available(self) -> None:
        require_modules(self.name, "coremltools", "executorch.backends.apple.coreml.partition")

    def pt2e_quantizer(self, recipe: Recipe, model: Any) -> Any:
        return None  # w8 happens inside the delegate (op_linear_quantizer_config)

    def lower(self, model: Any, examples: list[Any], context: LoweringContext) -> LoweringResult:
        import coremltools as ct
        from executorch.backends.apple.coreml.compiler import CoreMLBackend
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner
        from executorch.exir import to_edge_transform_and_lower
        from nsr_edge.runtime.coreml_mil import coreml_payloads

        recipe = context.recipe  # strategy and recipe were checked against capabilities before any work
        quantizer_config = None
        if recipe.name == "w8":
            quantizer_config = {"mode": "linear_symmetric", "dtype": "int8", "granularity": "per_channel",
                                "weight_threshold": 0}
        specs = CoreMLBackend.generate_compile_specs(
            compute_precision=ct.precision.FLOAT32 if recipe.name == "fp32" else ct.precision.FLOAT16,
            minimum_deployment_target=getattr(ct.target, self.deployment_target),
            op_linear_quantizer_config=quantizer_config,
        )
        from .executorch import export_methods

        programs, shapes = export_methods(model.eval(), examples)
        # The backend logs every partitioned node at INFO and a spec-version WARNING per method: keep them quiet.
        names = ["executorch.backends.apple.coreml"] + [n for n in logging.root.manager.loggerDict
                                                         if n.startswith("executorch.backends.apple.coreml.")]
        saved = {n: logging.getLogger(n).level for n in names}
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
        try:
            edge = to_edge_transform_and_lower(programs, partitioner=[CoreMLPartitioner(compile_specs=specs)])
        finally:
            for n, level in saved.items():
                logging.getLogger(n).setLevel(level)
        pte = edge.to_executorch().buffer

        payloads = coreml_payloads(pte)
        if not payloads:
            raise UserError("executorch-coreml: the .pte holds no Core ML payload")
        by_shape = {tuple(p.inputs_of(f)[0].shape): (p, f) for p in payloads for f in p.functions}
        methods = []
        for name in programs:
            gm = edge.exported_program(name).graph_module
            calls = [n for n in gm.graph.nodes if n.op == "call_function"
                     and "executorch_call_delegate" in str(n.target)]
            outside = [n for n in gm.graph.nodes if n.op == "call_function"
                       and "executorch_call_delegate" not in str(n.target) and "getitem" not in str(n.target)]
            found = by_shape.get(tuple(shapes[name][0]))
            if found is None:
                raise UserError(f"executorch-coreml: no Core ML payload for method {name} in the .pte")
            payload, function = found
            ops = sum(v for k, v in payload.op_counts(function).items()
                      if k != "const" and not k.startswith("constexpr_"))
            methods.append(LoweredMethod(name, shapes[name][0], shapes[name][1], ops, ops + len(outside), len(calls)))
        extra = {"coreml": {
            "format": "executorch .pte with Core ML delegate (uncompiled mlpackage payload)",
            "compute_precision": "fp32" if recipe.name == "fp32" else "fp16",
            "deployment_target": self.deployment_target,
            "compute_units_recommendation": "CPU_AND_GPU" if recipe.name == "fp32" else "ALL",
            "weights": "int8 per-channel symmetric" if recipe.name == "w8" else recipe.weights,
            "payload_functions": sorted(payloads[0].functions),
            "mil_ops": payloads[0].op_counts(),
        }}
        notes = ["each method is one Core ML delegate; on Linux its payload is validated with the MIL evaluator"]
        return LoweringResult({self.capabilities.artifact: pte}, methods, "CoreML", notes, extra)
