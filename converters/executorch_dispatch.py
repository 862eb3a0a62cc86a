"""ExecuTorch dispatch target: hard-routed NSR as a set of static XNNPACK programs in ONE ``.pte``, run by the host.

Why: every fast CPU path wants static conv weights (field notes), so output mixing pays k x the MACs of one bank. With
hard (top-1) routing a tile needs only its bank; the host picks it and calls that bank's program. The artifact is one
multi-method ``.pte`` (ExecuTorch allows several methods, each its own graph) plus the orchestration in the model card
(``target_extra.dispatch``), run by ``runtime/runners/dispatch_runner.py`` (torch-free orchestration; argmax in numpy).

Programs (batch 1, fixed tile), d=1 (one bank per tile and layer):
- ``stem``: ``t -> x = head(t - 0.5)`` and the first routing logits (the first sparse conv's router on ``x``);
- ``layer`` mode (every sparse conv routes on its own input, the reference): per block b and bank i
  ``b{b}_c0_k{i}: x -> h = relu(conv0_i(x))`` (+ conv1's router logits on ``h``) and
  ``b{b}_c1_k{i}: (h, x) -> x' = conv1_i(h) + x`` (+ the next block's router logits on ``x'``): 2 calls per block;
- ``block`` mode (shared routing: both convs routed from the block input, `RoutingConfig(shared=True)`): one fused
  program per block and bank ``b{b}_k{i}: x -> x' = conv1_i(relu(conv0_i(x))) + x`` (+ next logits): 1 call per block;
- ``tail``: ``(x, t) -> PixelShuffle(last(x) + skip(t - 0.5) + 0.5)``, fused by default into the last routed stage's
  programs (``..._k{i}: (inputs, t) -> output``), which saves one call per tile.
Routers stay FP32 (a 1x1 conv on the pooled tile, inside the program); INT8 recipes quantize each program on its own
(PT2E, XNNPACKQuantizer per-channel), every bank program calibrated on the calibration tiles routed to it.
Program I/O is float32 (int8 outputs do not lower in ExecuTorch 1.5.1; see docs/dispatch.md).

The same programs run in PyTorch through `run_programs` (the reference the tests compare the artifact with).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from nsr_edge.errors import UserError

from .base import (HARD_DISPATCH_REQUIREMENTS, Capabilities, Fallback, LoweredMethod, LoweringContext, LoweringResult,
                   Recipe, register_target, require_modules)

MODES = ("layer", "block")
LAYOUT = "channels_last"  # of every program input and output, the tile included (the card's dispatch.layout)


# ------------------------------------------------------------------------------------------------ program modules


def _modules():  # torch imported lazily: the registry imports this module only when the target is used
    import torch
    import torch.nn.functional as F
    from torch import nn

    def _nhwc(y: torch.Tensor) -> torch.Tensor:
        # Every program's I/O is channels-last (XNNPACK's own layout; the host hands the tile over channels-last): a
        # program then skips the NCHW<->NHWC copies at its boundaries (13% of a block call at 64 px, measured). A no-op
        # on channels-last inputs; it pins the layout where an op would change it.
        return y.contiguous(memory_format=torch.channels_last)

    class Stem(nn.Module):
        def __init__(self, head: nn.Module, router: nn.Module | None) -> None:
            super().__init__()
            self.head, self.router = head, router

        def forward(self, t: torch.Tensor):
            x = self.head(t - 0.5)
            return (x, _logits(self.router, x)) if self.router is not None else (x,)

    class LayerProgram(nn.Module):
        """One bank of one sparse conv: conv (+ReLU) (+residual), then the next router's logits."""

        def __init__(self, conv: nn.Module, relu: bool, residual: bool, router: nn.Module | None) -> None:
            super().__init__()
            self.conv, self.router, self.relu, self.residual = conv, router, relu, residual

        def forward(self, h: torch.Tensor, *skip: torch.Tensor):
            y = self.conv(h)
            if self.relu:
                y = F.relu(y)
            if self.residual:
                y = y + skip[0]
            y = _nhwc(y)
            return (y, _logits(self.router, y)) if self.router is not None else (y,)

    class BlockProgram(nn.Module):
        """One bank of a whole block (shared routing): conv0 -> ReLU -> conv1 + x, then the next router's logits."""

        def __init__(self, conv0: nn.Module, conv1: nn.Module, router: nn.Module | None) -> None:
            super().__init__()
            self.conv0, self.conv1, self.router = conv0, conv1, router

        def forward(self, x: torch.Tensor):
            y = _nhwc(self.conv1(F.relu(self.conv0(x))) + x)
            return (y, _logits(self.router, y)) if self.router is not None else (y,)

    def _shuffled(shuf: nn.Module, y: torch.Tensor, layout: str | None) -> torch.Tensor:
        # y is channels-last. ``layout`` None: pixel shuffle as is; it restores y's layout with a ``_clone_dim_order``
        # that XNNPACK does not take (it changes the dim order), so it runs in portable kernels. Otherwise the layout
        # changes are written as ``.to(memory_format=...)`` (``_to_dim_order_copy``), which XNNPACK takes into the
        # delegate: NCHW before the shuffle, and back to channels-last after it for ``channels_last``.
        if layout is None:
            return shuf(y)
        out = shuf(y.to(memory_format=torch.contiguous_format))
        return out.to(memory_format=torch.channels_last) if layout == "channels_last" else out

    class Tail(nn.Module):
        def __init__(self, last: nn.Module, skip: nn.Module, shuf: nn.Module, layout: str | None = None) -> None:
            super().__init__()
            self.last, self.skip, self.shuf, self.layout = last, skip, shuf, layout

        def forward(self, x: torch.Tensor, t: torch.Tensor):
            # +0.5 first (the shuffle permutes): one delegate
            return (_shuffled(self.shuf, self.last(x) + self.skip(t - 0.5) + 0.5, self.layout),)

    class WithTail(nn.Module):
        """The last routed program with the tail fused in (one call fewer per tile): ``(*inputs, t) -> output``."""

        def __init__(self, body: nn.Module, tail: Tail) -> None:
            super().__init__()
            self.body, self.last, self.skip, self.shuf, self.layout = body, tail.last, tail.skip, tail.shuf, tail.layout

        def forward(self, *args: torch.Tensor):
            *inputs, t = args
            x = self.body(*inputs)[0]
            return (_shuffled(self.shuf, self.last(x) + self.skip(t - 0.5) + 0.5, self.layout),)

    def _logits(router: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return router(x)

    return Stem, LayerProgram, BlockProgram, Tail, WithTail


def _router(head: Any):
    """A routing head as a module named ``router`` whose forward gives the scaled logits ``(1, k)`` (d == 1): called as
    a module, so its nodes carry ``router`` in their module stack and the quantizer can leave them in float."""
    from torch import nn

    class Router(nn.Module):
        def __init__(self, head: nn.Module) -> None:
            super().__init__()
            self.head = head

        def forward(self, x):
            return self.head.logits(x).reshape(x.shape[0], -1)

    return Router(head) if head is not None else None


@dataclass
class DispatchPlan:
    """Programs (name -> torch module) and the stages the host runs, in order (the card's ``dispatch.stages``).

    A stage: ``{"name", "methods": [one per bank, or one], "inputs": [env names], "outputs": [env names],
    "route": env name of the logits that choose the bank (absent for single-method stages)}``. The env starts with
    ``tile`` (the network input) and ends with ``output``.
    """

    mode: str
    banks: int
    programs: dict[str, Any]
    stages: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    def card(self) -> dict[str, Any]:
        return {"mode": self.mode, "banks": self.banks, "cardinality": 1, "batch": 1, "layout": LAYOUT,
                "stages": self.stages,
                "routing": "argmax over the k logits of the stage's 'route' (first index on ties), chosen on the host",
                "calls_per_tile": len(self.stages)}


def _bank_conv(sparse: Any, i: int):
    from torch import nn

    w, b = sparse.banks.bank(i)
    conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], padding=w.shape[2] // 2)
    conv.weight.data.copy_(w.detach())
    conv.bias.data.copy_(b.detach())
    return conv


def build_plan(deploy: Any, mode: str | None = None, fuse_tail: bool = True,
               target: str = "target executorch-dispatch", dense_hint: str = "use --target executorch for dense models",
               output_layout: str | None = None) -> DispatchPlan:
    """Split a deploy-form WDSR-NSR (`nsr_edge.deploy.to_deploy`, any strategy: heads and banks are the same) into
    dispatch programs. ``mode`` None: ``block`` for shared-routing models, else ``layer``. ``fuse_tail``: the tail runs
    inside the last routed stage's programs (k copies of its small convs, one call fewer per tile). ``target`` and
    ``dense_hint`` word the refusals for the target that asks. ``output_layout``: the layout of ``output`` written
    with conversions XNNPACK delegates (``channels_last``: the plan's ``LAYOUT``; ``contiguous``: NCHW, for the
    in-program form whose output is the method's); None: pixel shuffle's own (LiteRT)."""
    import copy

    from torch import nn

    from nsr_edge.deploy import DeploySparseConv
    from nsr_edge.models import ResidualBlock

    Stem, LayerProgram, BlockProgram, Tail, WithTail = _modules()
    config = getattr(deploy, "config", None)
    body = getattr(deploy, "body", None)
    if config is None or body is None or not config.is_sparse:
        raise UserError(f"{target} lowers WDSR-NSR models (sparse convs); {dense_hint}")
    if config.cardinality != 1:
        raise UserError(f"{target} needs cardinality d=1 (one bank per tile and layer); this model "
                        f"has d={config.cardinality}: it would need {config.banks}^{config.cardinality} programs per layer")
    shared = config.routing.shared
    mode = mode or ("block" if shared else "layer")
    if output_layout not in (None, "channels_last", "contiguous"):
        raise ValueError(f"output_layout must be None, 'channels_last' or 'contiguous', not {output_layout!r}")
    if mode not in MODES:
        raise UserError(f"dispatch mode must be one of {', '.join(MODES)}")
    if mode == "block" and not shared:
        raise UserError("block-fused dispatch needs shared routing (both convs of a block routed from the block input; "
                        "train with --shared-routing); per-layer routing dispatches per layer")
    k = config.banks
    blocks = [m for m in body if isinstance(m, ResidualBlock)]
    head, last = body[0], body[len(body) - 1]
    for m in blocks:
        if not all(isinstance(c, DeploySparseConv) for c in (m.body[0], m.body[2])):
            raise UserError(f"{target}: every residual block must hold two sparse convs")
    heads = []  # the router that chooses each block's first conv's bank: on the block input
    for m in blocks:
        heads.append(m.body[0].head)
    programs: dict[str, Any] = {}
    stages: list[dict[str, Any]] = []
    programs["stem"] = Stem(copy.deepcopy(head), _router(copy.deepcopy(heads[0])) if blocks else None)
    stages.append({"name": "stem", "methods": ["stem"], "inputs": ["tile"],
                   "outputs": ["x", "logits"] if blocks else ["x"]})
    for b, m in enumerate(blocks):
        c0, c1 = m.body[0], m.body[2]
        nxt = heads[b + 1] if b + 1 < len(blocks) else None
        if mode == "block":
            names = [f"b{b}_k{i}" for i in range(k)]
            for i, n in enumerate(names):
                programs[n] = BlockProgram(_bank_conv(c0, i), _bank_conv(c1, i), _router(copy.deepcopy(nxt)))
            stages.append({"name": f"block{b}", "methods": names, "inputs": ["x"], "route": "logits",
                           "outputs": ["x", "logits"] if nxt is not None else ["x"]})
            continue
        own = c1.head is not None  # per-layer routing: conv1 routes on its own input h
        names0 = [f"b{b}_c0_k{i}" for i in range(k)]
        for i, n in enumerate(names0):
            programs[n] = LayerProgram(_bank_conv(c0, i), True, False, _router(copy.deepcopy(c1.head)) if own else None)
        stages.append({"name": f"block{b}.conv0", "methods": names0, "inputs": ["x"], "route": "logits",
                       "outputs": ["h", "logits"] if own else ["h"]})
        names1 = [f"b{b}_c1_k{i}" for i in range(k)]
        for i, n in enumerate(names1):
            programs[n] = LayerProgram(_bank_conv(c1, i), False, True, _router(copy.deepcopy(nxt)))
        stages.append({"name": f"block{b}.conv1", "methods": names1, "inputs": ["h", "x"], "route": "logits",
                       "outputs": ["x", "logits"] if nxt is not None else ["x"]})
    skip = copy.deepcopy(deploy.skip) if len(deploy.skip) else nn.Identity()
    tail = Tail(copy.deepcopy(last), skip, copy.deepcopy(deploy.shuf), output_layout)
    if fuse_tail and blocks:
        final = stages[-1]  # the last block's (last conv's) stage: its programs end in the tail
        for n in final["methods"]:
            programs[n] = WithTail(programs[n], copy.deepcopy(tail))
        final["inputs"] = final["inputs"] + ["tile"]
        final["outputs"] = ["output"]
        final["name"] += "+tail"
    else:
        programs["tail"] = tail
        stages.append({"name": "tail", "methods": ["tail"], "inputs": ["x", "tile"], "outputs": ["output"]})
    for p in programs.values():
        p.eval()
        for q in p.parameters():
            q.requires_grad_(False)
    notes = []
    if not config.routing.is_hard_at_eval:
        notes.append(f"this model routes with {config.routing.kind} (soft) routing: hard top-1 dispatch changes its "
                     "output (train or fine-tune with straight_through/gumbel routing; validate shows the cost)")
    return DispatchPlan(mode, k, programs, stages, notes)


def run_programs(programs: dict[str, Any], stages: list[dict[str, Any]], tile: Any,
                 record: dict[str, list] | None = None) -> Any:
    """Run the plan in PyTorch on one batch-1 tile, exactly as the host runner does. ``record``: stage -> inputs and
    chosen banks (for calibration and tests)."""
    import torch

    env = {"tile": tile.contiguous(memory_format=torch.channels_last)}  # as the host hands it over (LAYOUT)
    with torch.no_grad():
        for st in stages:
            methods = st["methods"]
            bank = int(env[st["route"]].reshape(-1).argmax()) if len(methods) > 1 else 0
            args = [env[n] for n in st["inputs"]]
            if record is not None:
                record.setdefault(st["name"], []).append((bank, args))
            outs = programs[methods[bank]](*args)
            env.update(zip(st["outputs"], outs))
    return env["output"]


# ---------------------------------------------------------------------------------------------------- quantization


def _float_filter(program: Any, fp32_parts: tuple[str, ...]):
    """PT2E node filter (True: may be quantized): the ``router`` modules stay float with ``routing``, the stem's head
    conv, the tail's last conv and the skip conv with ``first``/``last``/``skip``, the programs' own adds (residual,
    skip + 0.5) with ``residual``/``output``."""
    prefixes = tuple(p for part, p in (("routing", "router"), ("first", "head"), ("last", "last"), ("skip", "skip"))
                     if part in fp32_parts)

    float_adds = "residual" in fp32_parts or "output" in fp32_parts

    def allowed(node: Any) -> bool:
        fqns = [str(v[0]) for v in (node.meta.get("nn_module_stack") or {}).values()]
        if float_adds and "add" in str(node.target) and (not fqns or fqns[-1] in ("", "body")):
            return False  # the program's own adds: the residual add, the tail's skip add and +0.5 (``body``: WithTail)
        return not any(f == p or f.startswith(p + ".") for f in fqns for p in prefixes)

    return allowed


MIN_BANK_TILES = 16


def calibration_inputs(plan: DispatchPlan, tiles: Any, min_bank_tiles: int = MIN_BANK_TILES
                       ) -> tuple[dict[str, list[tuple]], dict[str, Any]]:
    """Each program's calibration inputs (argument tuples, channels-last torch tensors), from the calibration tiles
    pushed through the FP32 plan: a bank program gets the tiles routed to it, or, when fewer than ``min_bank_tiles``
    chose it, every tile that reached its stage; and the card's calibration summary. Shared by every target that
    quantizes a plan per program (executorch-dispatch, litert --strategy hard)."""
    import torch

    record: dict[str, list] = {}
    for t in tiles:
        run_programs(plan.programs, plan.stages, torch.from_numpy(t[None].copy()), record)
    inputs: dict[str, list[tuple]] = {}
    counts: dict[str, int] = {}
    borrowed: list[str] = []
    for st in plan.stages:
        seen = record[st["name"]]
        for bank, name in enumerate(st["methods"]):
            own = [args for b, args in seen if b == bank or len(st["methods"]) == 1]
            counts[name] = len(own)
            if len(own) < min_bank_tiles:  # too few tiles chose this bank: calibrate on the stage's tiles, say so
                own = [args for _, args in seen]
                if len(st["methods"]) > 1:
                    borrowed.append(name)
            inputs[name] = own
    summary = {"tiles": int(len(tiles)), "per_program_tiles": counts, "per_bank": True,
               "min_bank_tiles": min_bank_tiles}
    if borrowed:
        summary["calibrated_on_stage_tiles"] = borrowed
    return inputs, summary


def quantize_plan(plan: DispatchPlan, tiles: Any, recipe: Recipe, min_bank_tiles: int = MIN_BANK_TILES) -> dict[str, Any]:
    """PT2E-quantize every program on its own inputs: a bank program on the calibration tiles routed to it, or, when
    fewer than ``min_bank_tiles`` chose it, on all the tiles that reached its stage (a handful of tiles gives ranges
    that clip the tiles a device will route there). Returns the converted modules by name and a calibration summary."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    inputs, summary = calibration_inputs(plan, tiles, min_bank_tiles)
    config = get_symmetric_quantization_config(is_per_channel=recipe.per_channel)
    converted: dict[str, Any] = {}
    for name, own in inputs.items():
        module = plan.programs[name]
        quantizer = XNNPACKQuantizer().set_global(config)
        quantizer.set_filter_function(_float_filter(module, recipe.fp32_parts))
        gm = torch.export.export(module, tuple(own[0])).module()
        prepared = prepare_pt2e(gm, quantizer)
        with torch.no_grad():
            for args in own:
                prepared(*args)
        converted[name] = convert_pt2e(prepared)
    return {"modules": converted, "calibration": summary}


# ------------------------------------------------------------------------------------------------------- lowering


def lower_programs(modules: dict[str, Any], examples: dict[str, tuple]) -> tuple[bytes, list[LoweredMethod]]:
    """All programs into one multi-method XNNPACK ``.pte``; per-method delegation counts."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from .executorch import _default_reason, _op_name, delegation_of

    exported, shapes = {}, {}
    for name, module in modules.items():
        args = examples[name]
        with torch.no_grad():
            outs = module(*args)
        exported[name] = torch.export.export(module, tuple(args))
        shapes[name] = ([list(a.shape) for a in args], [list(o.shape) for o in outs])
    edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    et = edge.to_executorch()
    methods = []
    for name in exported:
        methods.append(delegation_of(edge, name, shapes[name][0][0], shapes[name][1][0],
                                     lambda n: _default_reason(_op_name(n), True)))
    return et.buffer, methods


def program_examples(plan: DispatchPlan, tile: Any) -> dict[str, tuple]:
    """One example input tuple per program (from running the plan on ``tile``, every bank gets its stage's inputs)."""
    record: dict[str, list] = {}
    run_programs(plan.programs, plan.stages, tile, record)
    out = {}
    for st in plan.stages:
        args = record[st["name"]][0][1]
        for name in st["methods"]:
            out[name] = tuple(args)
    return out


def dispatch_artifact(deploy: Any, example: Any, recipe: Recipe, tiles: Any = None, mode: str | None = None,
                      fuse_tail: bool = True) -> tuple[bytes, dict[str, Any], list[LoweredMethod], list[str]]:
    """Plan -> (quantize) -> one .pte. Returns (pte bytes, the card's dispatch section, methods, notes)."""
    # The tail's layout changes written so that XNNPACK takes them: no portable copy of the output (the card's
    # channels-last contract kept).
    plan = build_plan(deploy, mode, fuse_tail, output_layout=LAYOUT)
    modules, card = plan.programs, plan.card()
    if recipe.quantized:
        if tiles is None or not len(tiles):
            raise UserError("executorch-dispatch: int8 recipes need calibration tiles")
        q = quantize_plan(plan, tiles, recipe)
        modules = q["modules"]
        card["calibration"] = q["calibration"]
    examples = program_examples(plan, example)
    pte, methods = lower_programs(modules, examples)
    return pte, plan_section(plan, recipe, examples, methods, card.get("calibration")), methods, plan.notes


def plan_section(plan: DispatchPlan, recipe: Recipe, examples: dict[str, tuple], methods: list[LoweredMethod],
                 calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """The card's ``target_extra.dispatch`` (`nsr_edge.runtime.card.Dispatch`): the plan, each program's input
    shapes (NCHW; memory order per ``layout``) and delegation, and the precisions. One shape for every target that
    runs a plan, so apps follow one orchestration."""
    card = plan.card()
    if calibration is not None:
        card["calibration"] = calibration
    card["programs"] = {m.name: {"inputs": [list(a.shape) for a in examples[m.name]], "output_shape": m.output_shape,
                                 "delegated_ops": m.delegated_ops, "total_ops": m.total_ops,
                                 "partitions": m.partitions,
                                 "outside": {f.op: f.count for f in m.fallbacks}}
                        for m in methods}
    card["io_dtype"] = "float32"
    card["routers"] = "float32" if (not recipe.quantized or "routing" in recipe.fp32_parts) else "int8"
    return card


def forward_method(example: Any, model: Any, methods: list[LoweredMethod]) -> LoweredMethod:
    """The card's ``forward``: the whole network as the host orchestrates it (what validate/profile run), with the
    programs' delegation summed (one fallback line per op kind over all programs)."""
    import torch

    with torch.no_grad():
        out_shape = list(model(example).shape)
    outside: dict[str, Fallback] = {}
    for f in (f for m in methods for f in m.fallbacks):
        prev = outside.get(f.op)
        outside[f.op] = Fallback(f.op, f.count + (prev.count if prev else 0), f.reason)
    return LoweredMethod("forward", list(example.shape), out_shape,
                         sum(m.delegated_ops for m in methods), sum(m.total_ops for m in methods),
                         sum(m.partitions for m in methods), list(outside.values()))


@register_target
class ExecuTorchDispatchTarget:
    name = "executorch-dispatch"
    capabilities = Capabilities(
        artifact="model.pte", runner="dispatch", recipes=("fp32", "int8-ptq"),
        calibrated_recipes=("int8-ptq",),  # quantizes per program in lower(), on the pipeline's calibration tiles
        strategies=("hard",),  # hard (top-1) routing, dispatched per tile on the host
        extra_tiles=False, multi_program=True,
        requirements=HARD_DISPATCH_REQUIREMENTS,
    )

    def check_available(self) -> None:
        require_modules(self.name, "executorch.exir", "executorch.backends.xnnpack.partition.xnnpack_partitioner")

    def pt2e_quantizer(self, recipe: Recipe, model: Any) -> Any:
        return None  # every program is quantized on its own tiles in lower()

    def lower(self, model: Any, examples: list[Any], context: LoweringContext) -> LoweringResult:
        if len(examples) != 1:
            raise UserError("target executorch-dispatch writes one tile size per artifact (no --extra-tiles)")
        x = examples[0]
        pte, dispatch, methods, notes = dispatch_artifact(model, x, context.recipe, context.calibration_tiles)
        for n in notes:
            print(f"executorch-dispatch: warning: {n}", file=sys.stderr)
        fwd = forward_method(x, model, methods)  # "forward" is the orchestrated whole network; the programs: the card
        from .executorch import portable_ops_verdict

        warning = portable_ops_verdict("target executorch-dispatch", fwd.fallbacks)  # summed over the programs
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
            notes = notes + [warning]
        notes = notes + [f"{len(methods)} programs in one .pte, {dispatch['calls_per_tile']} calls per tile "
                         f"({dispatch['mode']} dispatch); forward is the host orchestration in the card"]
        return LoweringResult({self.capabilities.artifact: pte}, [fwd], "XNNPACK", notes, extra={"dispatch": dispatch})


__all__ = ["MODES", "DispatchPlan", "build_plan", "run_programs", "calibration_inputs", "quantize_plan",
           "lower_programs", "program_examples", "plan_section", "forward_method", "dispatch_artifact",
           "ExecuTorchDispatchTarget"]
