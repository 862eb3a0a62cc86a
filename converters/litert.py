"""LiteRT target: the deploy form as ``.tflite`` flatbuffers for the LiteRT interpreter (XNNPACK delegate on CPUs),
the runtime most Android apps ship.

Conversion: ``litert_torch.convert`` (litert-torch, no TensorFlow) of the deploy form at a fixed batch-1 tile, one
file per tile size (``model.tflite`` for the card's tile, ``model_<method>.tflite`` for ``--extra-tiles``, like the
ONNX Runtime target). I/O stays NCHW float32: the card's ``io`` section is written by the pipeline as NCHW for every
target, and the layout transposes this costs are counted in ``target_extra.litert`` (docs/litert.md).

INT8 (``int8-ptq``): ai-edge-quantizer's ``static_wi8_ai8`` (int8 per-channel symmetric weights, int8 per-tensor
activations) calibrated on the recipe's real tiles (``context.calibration_tiles``), with the recipe's ``fp32_parts``
kept float by ``no_quantize`` entries matched on the tensor names litert-torch writes (they carry the module path).
The PT2E route is not used: the field notes measured it ~19x less accurate than its own simulation on the NSR layer.

Every file is checked for Flex/custom ops (refused) and summarised: op counts, which ops the XNNPACK delegate takes
(read back from a real interpreter), the I/O dtypes, shapes, scales and zero points the interpreter reports.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from nsr_edge.errors import UserError
from nsr_edge.runtime.runners.litert_runner import interpreter_class, method_file  # one naming rule for both sides

from .base import (Capabilities, Fallback, LoweredMethod, LoweringContext, LoweringResult, Recipe, method_name,
                   register_target)

_HARD_REFUSAL = ("litert-torch 0.10.0 cannot lower the one-hot gates (F.one_hot exports aten._assert_async.msg: "
                 "'Lowering not found'); hard routing on LiteRT is issue 11 item 2")


@contextmanager
def _quiet_progress(show: bool) -> Iterator[None]:
    """litert-torch prints a progress tree to the console unless LITERT_TORCH_SHOW_PROGRESS=n."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    old = os.environ.get(key)
    os.environ[key] = "y" if show else "n"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def convert_fp32(model: Any, example: Any, progress: bool = False) -> bytes:
    """One fixed-shape float flatbuffer (weights embedded)."""
    import litert_torch
    import torch

    with _quiet_progress(progress), torch.no_grad():
        return bytes(litert_torch.convert(model.eval(), (example,)).model_content())


# ------------------------------------------------------------------------------------------------------ quantization


def fp32_regexes(model: Any, fp32_parts: tuple[str, ...]) -> dict[str, str]:
    """Part -> regex over the tensor names litert-torch writes (``<Type>_<attr>`` per module level, ``;`` then an
    index after the innermost one), matching the ops `nsr_edge.quant.node_filter` keeps float on ExecuTorch."""
    from nsr_edge.quant import part_names

    names = part_names(model)

    def module(fqn: str) -> str:  # body.0 -> /<Type>_body/<Type>_0 followed by ; or /
        return "".join(rf"/[^/;]*_{re.escape(p)}" for p in fqn.split(".")) + "[;/]"

    out = {}
    for part in fp32_parts:
        if part == "routing":  # the routing heads, and the gate matmul/multiply/sum owned by the mixing conv itself
            out[part] = r"RoutingHead_head|deploy\.\w+Conv_\d+;"
        elif part == "output":  # ops of the network's own forward (input shift, body + skip, +0.5) and the output
            out[part] = r"^[^/;]+;|^[^/;]+/[^/;]*_shuf/|^serving_default_output"
        elif part == "residual":  # the identity add of each residual block
            out[part] = r"ResidualBlock_\d+;"
        elif part in names:
            out[part] = "^[^/;]+" + module(names[part])
    return out


def quantize_aeq(fp32: bytes, tiles: Any, exclusions: dict[str, str], calibration: Any = None) -> tuple[bytes, Any]:
    """ai-edge-quantizer ``static_wi8_ai8`` with ``no_quantize`` for every exclusion regex; calibrated on ``tiles``
    (N, C, T, T), or with a previous calibration result (the same tensor names: extra tiles share the scales)."""
    from ai_edge_quantizer import algorithm_manager, quantizer, recipe

    q = quantizer.Quantizer(bytearray(fp32))
    q.load_quantization_recipe(recipe.static_wi8_ai8())
    for regex in exclusions.values():
        q.update_quantization_recipe(regex, "*", algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
    if calibration is None:
        (key,) = _signature_keys(fp32)
        samples = [{"args_0": t[None].astype("float32")} for t in tiles]
        calibration = q.calibrate({key: samples}, num_threads=1)
    result = q.quantize(calibration, enable_progress_report=False)
    return bytes(result.quantized_model), calibration


def _signature_keys(data: bytes) -> list[str]:
    interp = interpreter_class()(model_content=data)
    return list(interp.get_signature_list())


# ----------------------------------------------------------------------------------------------------------- checks


def custom_ops(data: bytes) -> list[str]:
    """Names of Flex/custom ops in a flatbuffer (read from its operator codes, so it works on files the interpreter
    cannot load)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    custom = schema.BuiltinOperator.CUSTOM
    out = []
    for code in model.operatorCodes or []:
        builtin = max(int(code.builtinCode or 0), int(code.deprecatedBuiltinCode or 0))
        if builtin == custom:
            out.append((code.customCode or b"?").decode() if isinstance(code.customCode, bytes) else str(code.customCode))
    return out


def op_summary(data: bytes) -> dict[str, Any]:
    """Op counts, which ops the XNNPACK delegate took (the original nodes behind each DELEGATE node, found by walking
    back from its outputs to its inputs), and the I/O the interpreter reports (dtype, shape, scale, zero point)."""
    import numpy as np
    from ai_edge_litert.interpreter import OpResolverType

    plain = interpreter_class()

    bare = plain(model_content=data, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    original = bare._get_ops_details()
    n = len(original)
    interp = plain(model_content=data, num_threads=1)
    interp.allocate_tensors()
    nodes = interp._get_ops_details()
    producer = {int(t): o["index"] for o in original for t in o["outputs"]}
    inside: set[int] = set()
    delegates = [o for o in nodes if o["index"] >= n and o["op_name"] == "DELEGATE"]
    for d in delegates:
        stop = {int(t) for t in d["inputs"]}
        todo = [int(t) for t in d["outputs"]]
        while todo:
            t = todo.pop()
            p = producer.get(t)
            if p is None or p in inside:
                continue
            inside.add(p)
            todo.extend(int(i) for i in original[p]["inputs"] if int(i) >= 0 and int(i) not in stop)
    ops = Counter(o["op_name"] for o in original)
    outside = Counter(o["op_name"] for o in original if o["index"] not in inside)
    computed = sum(1 for o in original if o["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")
                   and len(o["inputs"]) > 1 and int(o["inputs"][1]) in producer)
    dtypes = {t["index"]: t["dtype"] for t in bare.get_tensor_details()}
    int8 = Counter(o["op_name"] for o in original if len(o["outputs"]) and dtypes.get(int(o["outputs"][0])) == np.int8)

    def io(detail: dict[str, Any]) -> dict[str, Any]:
        scale, zero = detail["quantization"]
        return {"name": detail["name"], "dtype": detail["dtype"].__name__, "shape": [int(s) for s in detail["shape"]],
                "scale": float(scale), "zero_point": int(zero)}

    return {"ops": dict(ops.most_common()), "total_ops": n, "xnnpack_ops": len(inside),
            "xnnpack_partitions": len(delegates), "not_delegated": dict(outside.most_common()),
            "int8_ops": dict(int8.most_common()), "computed_weight_convs": computed,
            "inputs": [io(d) for d in interp.get_input_details()],
            "outputs": [io(d) for d in interp.get_output_details()]}


def _fallback_reason(op: str, summary: dict[str, Any]) -> str:
    if op == "CONV_2D" and summary["computed_weight_convs"]:
        return ("weights computed in the graph (kernel mixing): the XNNPACK delegate takes convs with static "
                "weights only; runs in LiteRT's builtin kernels")
    return "not taken by the XNNPACK delegate: runs in LiteRT's builtin kernels"


@register_target
class LiteRTTarget:
    name = "litert"
    capabilities = Capabilities(
        artifact="model.tflite", runner="litert", recipes=("fp32", "int8-ptq"), calibrated_recipes=("int8-ptq",),
        strategies=("output-mix", "kernel-mix"), refused_strategies={"hard": _HARD_REFUSAL},
    )

    def check_available(self) -> None:
        try:
            import ai_edge_litert.interpreter  # noqa: F401
            import ai_edge_quantizer  # noqa: F401
            import litert_torch  # noqa: F401
        except ImportError as e:
            raise UserError(f"target litert needs litert-torch, ai-edge-litert and ai-edge-quantizer ({e}); "
                            "pip install -e '.[full]'") from None

    def pt2e_quantizer(self, recipe: Recipe, model: Any) -> Any:
        return None  # int8-ptq is ai-edge-quantizer's, inside lower, on context.calibration_tiles

    def lower(self, model: Any, examples: list[Any], context: LoweringContext) -> LoweringResult:
        import torch

        recipe = context.recipe
        exclusions = fp32_regexes(model, recipe.fp32_parts) if recipe.quantized else {}
        if recipe.quantized and context.calibration_tiles is None:
            raise RuntimeError("int8-ptq on LiteRT needs calibration tiles (capabilities.calibrated_recipes)")
        files: dict[str, bytes] = {}
        methods: list[LoweredMethod] = []
        summaries: dict[str, dict[str, Any]] = {}
        calibration = None
        for i, x in enumerate(examples):
            name = method_name(i, x)
            with torch.no_grad():
                y = model(x)
            data = convert_fp32(model, x)
            if recipe.quantized:
                data, calibration = quantize_aeq(data, context.calibration_tiles, exclusions, calibration)
            bad = custom_ops(data)
            if bad:
                raise UserError(f"litert: the converted graph has Flex/custom ops ({', '.join(sorted(set(bad)))}), "
                                "which LiteRT's builtin runtime cannot run; nothing was written")
            files[method_file(name)] = data
            s = summaries[name] = op_summary(data)
            fallbacks = [Fallback(op, c, _fallback_reason(op, s)) for op, c in s["not_delegated"].items()]
            methods.append(LoweredMethod(name, list(x.shape), list(y.shape), s["xnnpack_ops"], s["total_ops"],
                                         s["xnnpack_partitions"], fallbacks))
        forward = summaries["forward"]
        notes = ["LiteRT interpreter, XNNPACK delegate (default on CPU): model.tflite holds the card's tile, one "
                 "model_<method>.tflite per extra tile",
                 f"NCHW float32 I/O: {forward['ops'].get('TRANSPOSE', 0)} TRANSPOSE ops in forward (layout changes "
                 "at the I/O and around PixelShuffle)"]
        if forward["computed_weight_convs"]:
            notes.append(f"{forward['computed_weight_convs']} convs take weights computed per tile (kernel mixing): "
                         "outside XNNPACK, in float (no static weights to quantize), slower than output-mix here")
        if recipe.quantized:
            kept = ", ".join(recipe.fp32_parts) or "none"
            notes.append(f"int8 by ai-edge-quantizer static_wi8_ai8, calibrated on {len(context.calibration_tiles)} "
                         f"real tiles; kept float (no_quantize by tensor name): {kept}")
        extra = {"methods": summaries}
        if recipe.quantized:
            extra["quantizer"] = {"tool": "ai-edge-quantizer", "recipe": "static_wi8_ai8",
                                  "calibration_tiles": int(len(context.calibration_tiles)),
                                  "fp32_parts": dict(exclusions)}
        return LoweringResult(files, methods, "XNNPACK", notes, extra={"litert": extra})


__all__ = ["LiteRTTarget", "convert_fp32", "quantize_aeq", "fp32_regexes", "custom_ops", "op_summary", "method_file"]
