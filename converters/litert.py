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

``--strategy hard`` (hard-routed models, d=1; `lower_hard`): executorch-dispatch's plan (`build_plan`: the same
programs and stages) as ONE ``model.tflite`` with one signature per program (channels-last float32 I/O), the card's
``target_extra.dispatch`` in executorch-dispatch's shape (`plan_section`), run by the litert runner through the one
dispatch loop (``runtime/dispatch.py``). INT8: AEQ per signature, each program calibrated on its own inputs
(`calibration_inputs`), the recipe's float parts kept float, program I/O float. Sparse and d=1 are checked in
`build_plan` (the capability requirements cannot be per strategy yet), after the model is loaded.
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from contextlib import contextmanager
from typing import Any, Iterator

from nsr_edge.errors import UserError
from nsr_edge.runtime.runners.litert_runner import interpreter_class, method_file  # one naming rule for both sides

from . import litert_tensor_errors as TE
from .base import (FP32_PARTS, HARD_DISPATCH_REQUIREMENTS, Capabilities, Fallback, LoweredMethod, LoweringContext,
                   LoweringResult, Recipe, method_name, register_target, require_modules)

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
        elif part == "heads":  # the routing heads only: the gate multiply and bank sums of output mixing are int8
            out[part] = r"RoutingHead_head"
        elif part == "output":  # ops of the network's own forward (input shift, body + skip, +0.5) and the output
            out[part] = r"^[^/;]+;|^[^/;]+/[^/;]*_shuf/|^serving_default_output"
        elif part == "residual":  # the identity add of each residual block
            out[part] = r"ResidualBlock_\d+;"
        elif part in names:
            out[part] = "^[^/;]+" + module(names[part])
    return out


def quantize_aeq(fp32: bytes, tiles: Any, exclusions: dict[str, str], calibration: Any = None,
                 progress: bool = False) -> tuple[bytes, Any]:
    """ai-edge-quantizer ``static_wi8_ai8`` with ``no_quantize`` for every exclusion regex; calibrated on ``tiles``
    (N, C, T, T), or with a previous calibration result (the same tensor names: extra tiles share the scales)."""
    samples = None
    if calibration is None:
        (key,) = _signature_keys(fp32)
        samples = {key: [{"args_0": t[None].astype("float32")} for t in tiles]}
    return _aeq(fp32, exclusions, samples, calibration, progress=progress)


@contextmanager
def _quiet_aeq(show: bool) -> Iterator[None]:
    """ai-edge-quantizer draws tqdm bars (calibration, parameters, transformations) whatever it is told: its
    calibration bar takes no switch. Without ``show`` every bar is created disabled, and the interpreter's debugging
    warning (it preserves all tensors to calibrate) is not printed."""
    import warnings

    from ai_edge_quantizer.utils import progress_utils

    if show:
        yield
        return
    original = progress_utils.ProgressBar.__init__

    def disabled(self: Any, total_steps: int, description: str = "", disappear_on_finish: bool = False,
                 enable: bool | None = None) -> None:
        original(self, total_steps, description, disappear_on_finish, enable=False)

    progress_utils.ProgressBar.__init__ = disabled
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
            yield
    finally:
        progress_utils.ProgressBar.__init__ = original


def _aeq(fp32: bytes, exclusions: dict[str, str], samples: dict[str, list[dict[str, Any]]] | None,
         calibration: Any = None, float_io: bool = False, progress: bool = False) -> tuple[bytes, Any]:
    """ai-edge-quantizer ``static_wi8_ai8`` minus the exclusions (``no_quantize``), calibrated on ``samples``
    (signature -> list of {input name: array}) unless a calibration result is given. ``float_io``: every signature's
    inputs and outputs stay float32 (AEQ's virtual INPUT/OUTPUT ops are not quantized). Its progress bars only with
    ``progress``."""
    with _quiet_aeq(progress):
        return _aeq_run(fp32, exclusions, samples, calibration, float_io)


def _aeq_run(fp32: bytes, exclusions: dict[str, str], samples: dict[str, list[dict[str, Any]]] | None,
             calibration: Any, float_io: bool) -> tuple[bytes, Any]:
    from ai_edge_quantizer import algorithm_manager, quantizer, recipe

    q = quantizer.Quantizer(bytearray(fp32))
    q.load_quantization_recipe(recipe.static_wi8_ai8())
    for regex in exclusions.values():
        q.update_quantization_recipe(regex, "*", algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
    for io in ("INPUT", "OUTPUT") if float_io else ():
        q.update_quantization_recipe(".*", io, algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
    if calibration is None:
        calibration = q.calibrate(samples, num_threads=1)
    result = q.quantize(calibration, enable_progress_report=False)
    return bytes(result.quantized_model), calibration


def _signature_keys(data: bytes) -> list[str]:
    interp = interpreter_class()(model_content=data)
    return list(interp.get_signature_list())


# ----------------------------------------------------------------------------------------- hard routing (dispatch)
# The plan of executorch-dispatch (converters/executorch_dispatch.py: build_plan, the same programs and stages), as
# ONE .tflite with one signature per program, run by runtime/dispatch.py through the litert runner.

_PART_SCOPES = {  # part -> regex over the op scopes (output tensor names) litert-torch writes for the plan programs
    "routing": r"Router_router",
    "first": r"_head[;/]",
    "last": r"_last[;/]",
    "skip": r"_skip[;/]",
    "output": r"(Stem|Tail|WithTail)_wrapped;|_shuf/",  # the programs' own -0.5 / + skip / +0.5 and the shuffle
    "residual": r"(LayerProgram|BlockProgram)_(wrapped|body);",  # the residual add (and its layout copy)
}


def _output_part(stage: dict[str, Any], name: str) -> str | None:
    """The float part that produces a stage output (a program's output tensors carry the signature's output name,
    not the module path): logits -> routing, the stem's x -> first, ``output`` -> output, a block's x -> residual;
    ``h`` (a bank conv's output) -> None (quantized)."""
    if name == "logits":
        return "routing"
    if name == "output":
        return "output"
    if name == "x":
        return "first" if stage["name"] == "stem" else "residual"
    return None


def plan_exclusions(plan: Any, outputs: dict[str, list[str]], fp32_parts: tuple[str, ...]) -> dict[str, str]:
    """Part -> ``no_quantize`` regex for the plan's programs: the module scopes of `_PART_SCOPES`, plus the output
    tensors (named after the signature: ``outputs``, per signature in output order) the part produces (an op's scope
    in ai-edge-quantizer is its output tensor names, each followed by ``;``)."""
    out = {}
    for part in fp32_parts:
        names = [outputs[m][i] for st in plan.stages for m in st["methods"]
                 for i, n in enumerate(st["outputs"]) if _output_part(st, n) == part]
        out[part] = "|".join([_PART_SCOPES[part]] + [f"^{re.escape(n)};$" for n in names])
    return out


def signature_io(data: bytes) -> dict[str, tuple[list[str], list[str], list[str]]]:
    """Signature -> (input names in argument order, output names in output order, output tensor names)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)

    def text(v: Any) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    def order(items: list[Any]) -> list[Any]:  # args_0, args_1, ... / output_0, output_1, ...: by the index
        return sorted(items, key=lambda t: int(text(t.name).rsplit("_", 1)[-1]))

    out = {}
    for sig in model.signatureDefs or []:
        tensors = model.subgraphs[sig.subgraphIndex].tensors
        outs = order(sig.outputs)
        out[text(sig.signatureKey)] = ([text(t.name) for t in order(sig.inputs)], [text(t.name) for t in outs],
                                       [text(tensors[t.tensorIndex].name) for t in outs])
    return out


def _model_t(data: bytes) -> Any:
    """The flatbuffer as an object tree whose buffers are all inline (ai-edge-quantizer writes large buffers after the
    flatbuffer, addressed by offset; re-packing would lose them: "Constant buffer specified an out of range offset")."""
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    for buffer in model.buffers or []:
        if buffer.offset and buffer.offset > 1:
            buffer.data = np.frombuffer(data, np.uint8, int(buffer.size), int(buffer.offset)).copy()
            buffer.offset = buffer.size = 0
    return model


def _pack(model: Any) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def signature_file(data: bytes, key: str) -> bytes:
    """A copy of a multi-signature flatbuffer holding only signature ``key`` (as subgraph 0): the interpreter's op
    details cover subgraph 0 only, so each program's delegation is read from its own copy."""
    model = _model_t(data)
    (sig,) = [s for s in model.signatureDefs if (s.signatureKey.decode() if isinstance(s.signatureKey, bytes)
                                                 else s.signatureKey) == key]
    model.subgraphs = [model.subgraphs[sig.subgraphIndex]]
    sig.subgraphIndex = 0
    model.signatureDefs = [sig]
    return _pack(model)


def repair_signatures(fp32: bytes, quantized: bytes) -> bytes:
    """Point every signature input/output of ``quantized`` at the subgraph I/O tensor in the position it had in
    ``fp32``. ai-edge-quantizer 0.10 replaces a subgraph output that a quantized op produces by a DEQUANTIZE's output
    but leaves the SignatureDef on the old (int8, never written) tensor: the interpreter then fails with "Tensor data
    is null" (measured on a layer-mode plan, whose conv0 programs end in the bank conv)."""
    from ai_edge_litert import schema_py_generated as schema

    before = schema.ModelT.InitFromPackedBuf(bytearray(fp32), 0)
    after = _model_t(quantized)
    changed = False
    for old, new in zip(before.signatureDefs or [], after.signatureDefs or []):
        sg_old, sg_new = before.subgraphs[old.subgraphIndex], after.subgraphs[new.subgraphIndex]
        for ends_old, ends_new, io_old, io_new in ((sg_old.inputs, sg_new.inputs, old.inputs, new.inputs),
                                                   (sg_old.outputs, sg_new.outputs, old.outputs, new.outputs)):
            position = {int(t): i for i, t in enumerate(ends_old)}
            for a, b in zip(io_old, io_new):
                want = int(ends_new[position[int(a.tensorIndex)]])
                if int(b.tensorIndex) != want:
                    b.tensorIndex, changed = want, True
    return _pack(after) if changed else quantized


def _nhwc(t: Any) -> Any:
    return t.permute(0, 2, 3, 1).contiguous() if t.ndim == 4 else t


def convert_programs(modules: dict[str, Any], examples: dict[str, tuple], progress: bool = False) -> bytes:
    """Every program as one signature of one flatbuffer, channels-last I/O (NHWC tensors in and out: the plan's
    ``channels_last`` layout; logits stay ``[1, k]``)."""
    import litert_torch
    import torch

    converter = litert_torch.Converter()
    for name, module in modules.items():
        args = examples[name]
        with torch.no_grad():
            outs = module(*args)
        wrapped = litert_torch.to_channel_last_io(module, args=[i for i, a in enumerate(args) if a.ndim == 4],
                                                  outputs=[i for i, o in enumerate(outs) if o.ndim == 4]).eval()
        converter.signature(name, wrapped, tuple(_nhwc(a) for a in args))
    with _quiet_progress(progress), torch.no_grad():
        return bytes(converter.convert().model_content())


def lower_hard(model: Any, examples: list[Any], context: LoweringContext) -> LoweringResult:
    """``--strategy hard``: executorch-dispatch's plan (build_plan), one signature per program, INT8 per signature
    (AEQ, each program calibrated on its own inputs: calibration_inputs), the card's ``dispatch`` section
    (plan_section) and ``forward`` as the host orchestration (runtime/dispatch.py)."""
    import numpy as np

    from .executorch_dispatch import (build_plan, calibration_inputs, forward_method, plan_section,
                                      program_examples)

    if len(examples) != 1:
        raise UserError("target litert --strategy hard writes one tile size per artifact (no --extra-tiles)")
    x = examples[0]
    recipe = context.recipe
    plan = build_plan(model, target="target litert --strategy hard",
                      dense_hint="use --strategy output-mix for dense models")
    ex = program_examples(plan, x)
    data = convert_programs(plan.programs, ex, context.progress)
    calibration = None
    io = signature_io(data)
    exclusions: dict[str, str] = {}
    errors: tuple[Any, bytes] | None = None
    if recipe.quantized:
        if context.calibration_tiles is None:
            raise RuntimeError("int8-ptq on LiteRT needs calibration tiles (capabilities.calibrated_recipes)")
        inputs, calibration = calibration_inputs(plan, context.calibration_tiles)
        samples = {name: [{k: np.ascontiguousarray(_nhwc(a).numpy()) for k, a in zip(io[name][0], args)}
                          for args in own] for name, own in inputs.items()}
        exclusions = plan_exclusions(plan, {n: v[2] for n, v in io.items()}, recipe.fp32_parts)
        quantized, _ = _aeq(data, exclusions, samples, float_io=True,  # the plan's io_dtype: float32
                            progress=context.progress)
        fp32, data = data, repair_signatures(data, quantized)
        every = tuple(p for p in FP32_PARTS if p in _PART_SCOPES)  # every part the plan's scopes know
        errors = TE.tensor_errors(fp32, data, samples, plan_exclusions(plan, {n: v[2] for n, v in io.items()}, every),
                                  "calibration inputs per program")
    bad = custom_ops(data)
    if bad:
        raise UserError(f"litert: the converted graph has Flex/custom ops ({', '.join(sorted(set(bad)))}), "
                        "which LiteRT's builtin runtime cannot run; nothing was written")
    summaries, methods = {}, []
    for name, args in ex.items():
        s = summaries[name] = op_summary(signature_file(data, name))
        fallbacks = [Fallback(op, c, _fallback_reason(op, s)) for op, c in s["not_delegated"].items()]
        out = [list(o["shape"]) for o in s["outputs"]]
        nchw = [o[:1] + o[-1:] + o[1:-1] if len(o) == 4 else o for o in out]  # the card's shapes are NCHW
        methods.append(LoweredMethod(name, list(args[0].shape), nchw[0], s["xnnpack_ops"], s["total_ops"],
                                     s["xnnpack_partitions"], fallbacks))
    dispatch = plan_section(plan, recipe, ex, methods, calibration)
    for n in plan.notes:
        print(f"litert: warning: {n}", file=sys.stderr)
    notes = plan.notes + [f"{len(methods)} programs as signatures of one .tflite (channels-last I/O), "
                          f"{dispatch['calls_per_tile']} calls per tile ({dispatch['mode']} dispatch); forward is the "
                          "host orchestration in the card (target_extra.dispatch), run by runtime/dispatch.py"]
    extra: dict[str, Any] = {"dispatch": dispatch, "litert": {"programs": summaries}}
    if recipe.quantized:
        notes.append(f"int8 by ai-edge-quantizer static_wi8_ai8 per signature, each program calibrated on its own "
                     f"inputs from {len(context.calibration_tiles)} real tiles; kept float: "
                     f"{', '.join(recipe.fp32_parts) or 'none'}")
        extra["litert"]["quantizer"] = {"tool": "ai-edge-quantizer", "recipe": "static_wi8_ai8",
                                        "calibration_tiles": int(len(context.calibration_tiles)),
                                        "fp32_parts": dict(exclusions)}
    return LoweringResult({"model.tflite": data}, [forward_method(x, model, methods)], "XNNPACK", notes, extra=extra,
                          side_files={TE.FILE: errors[1]} if errors else {}, tensor_errors=errors and errors[0])



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
        strategies=("output-mix", "kernel-mix", "hard"),  # hard: host dispatch over per-bank signatures (d=1)
        requirements=HARD_DISPATCH_REQUIREMENTS,
    )

    def check_available(self) -> None:
        require_modules(self.name, "ai_edge_litert.interpreter", "ai_edge_quantizer", "litert_torch")

    def pt2e_quantizer(self, recipe: Recipe, model: Any) -> Any:
        return None  # int8-ptq is ai-edge-quantizer's, inside lower, on context.calibration_tiles

    def lower(self, model: Any, examples: list[Any], context: LoweringContext) -> LoweringResult:
        import torch

        if context.strategy == "hard":
            return lower_hard(model, examples, context)
        recipe = context.recipe
        exclusions = fp32_regexes(model, recipe.fp32_parts) if recipe.quantized else {}
        if recipe.quantized and context.calibration_tiles is None:
            raise RuntimeError("int8-ptq on LiteRT needs calibration tiles (capabilities.calibrated_recipes)")
        files: dict[str, bytes] = {}
        methods: list[LoweredMethod] = []
        summaries: dict[str, dict[str, Any]] = {}
        calibration = None
        errors: tuple[Any, bytes] | None = None
        for i, x in enumerate(examples):
            name = method_name(i, x)
            with torch.no_grad():
                y = model(x)
            data = fp32 = convert_fp32(model, x)
            if recipe.quantized:
                data, calibration = quantize_aeq(data, context.calibration_tiles, exclusions, calibration,
                                                 progress=context.progress)
                if i == 0:  # the card's tile: AEQ's per-tensor float-vs-int8 errors (converters/litert_tensor_errors.py)
                    errors = TE.tensor_errors(fp32, data, TE.tile_samples(fp32, context.calibration_tiles),
                                              fp32_regexes(model, FP32_PARTS), "calibration tiles")
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
        return LoweringResult(files, methods, "XNNPACK", notes, extra={"litert": extra},
                              side_files={TE.FILE: errors[1]} if errors else {}, tensor_errors=errors and errors[0])


__all__ = ["LiteRTTarget", "convert_fp32", "quantize_aeq", "fp32_regexes", "custom_ops", "op_summary", "method_file",
           "convert_programs", "lower_hard", "plan_exclusions", "signature_io", "signature_file"]
