"""Hard routing inside ONE ExecuTorch program: the dispatch plan's bank programs chosen by ``torch.cond``, with every
branch delegated to XNNPACK (``--target executorch --strategy hard``).

Why: host dispatch (`executorch_dispatch`) pays a Python/pybind call, output copies and float boundaries per program
call (7-14 per tile), and every app must run the loop. Written with ``torch.cond`` on the argmax of each router, the
whole tile is one ``forward``. Two things kept the branches out of XNNPACK on ExecuTorch 1.5.1 (measured: 1087 ms vs
2.3 ms): ``XnnpackPartitioner`` tags only the top-level graph (exir's ``_partition_and_lower`` already recurses into
control-flow submodules, so tags inside branches are honoured), and inside a branch the conv weights arrive as cond
operands (placeholders), while XNNPACK's conv constraint wants static weights ("Expected weight to be a static
param"). So:

- `inline_branch_constants`: in every cond branch (nested ones too), a placeholder whose operand is a parameter,
  buffer or lifted constant of the program becomes a ``get_attr`` of that tensor on the branch module. XNNPACK's
  ``is_param_node`` takes ``get_attr`` nodes as static data, and torch's verifier allows tensor attributes in
  higher-order-op subgraphs ("subgm in HOP's argument could have getattr(weight) nodes").
- `ControlFlowXnnpackPartitioner`: XNNPACK's own partitioner on the top-level graph and on every control-flow branch,
  with tags unique per branch.

Only the routing decision stays outside the delegates (argmax of k logits and 1-3 scalar compares per routed stage:
ExecuTorch's portable kernels, microseconds). INT8 reuses the dispatch target's per-program PT2E quantization (each
bank program calibrated on the tiles routed to it): PT2E cannot annotate inside cond branches (measured: no observers
there, and ``convert_pt2e`` fails on the nested branch modules), so programs are quantized first and composed after.
"""

from __future__ import annotations

import types
from typing import Any, Iterator


def compose_plan(programs: dict[str, Any], stages: list[dict[str, Any]]) -> Any:
    """One module that runs the dispatch plan's stages in order, choosing each routed stage's bank program with
    ``torch.cond`` on the argmax of its logits (first index on ties, as the host runner). NCHW tile in, NCHW out;
    channels-last between programs (their own layout). With a plan built with ``output_layout="contiguous"`` every
    layout change is inside an XNNPACK delegate (the tile's in the stem's, the output's in the tail branches')."""
    import torch
    from torch import nn

    class InProgramDispatch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.programs = nn.ModuleDict(programs)
            self.stages = [dict(s) for s in stages]

        def forward(self, tile: torch.Tensor) -> torch.Tensor:
            # ``.to(memory_format=...)`` (``_to_dim_order_copy``), not ``.contiguous(...)`` (``_clone_dim_order``):
            # XNNPACK takes the former into the stem's delegate; the latter changes the dim order and stays portable.
            env = {"tile": tile.to(memory_format=torch.channels_last)}
            for st in self.stages:
                args = tuple(env[n] for n in st["inputs"])
                fns = [self.programs[m] for m in st["methods"]]
                if len(fns) == 1:
                    outs = fns[0](*args)
                else:
                    outs = select_branch(env[st["route"]].reshape(-1).argmax(), fns, args)
                    # ExecuTorch 1.5.1 plans every cond branch in one shared arena and *moves* branch outputs into the
                    # cond's outputs (the emitter's MoveCall): an output still needed after the next cond (the residual
                    # x in layer routing) would be overwritten by that cond's branch. A copy into top-level memory
                    # keeps it (measured: 8.4 max-abs error without, 5e-7 with, 2-block layer routing).
                    outs = tuple(o.clone() for o in outs)
                env.update(zip(st["outputs"], outs))
            # A no-op (no copy) when the plan's tail writes NCHW (`build_plan(..., output_layout="contiguous")`)
            return env["output"].contiguous()

    module = InProgramDispatch()
    module.training = False  # not .eval(): it recurses into the PT2E-converted programs, which refuse it
    return module


def select_branch(index: Any, fns: list[Any], args: tuple, first: int = 0) -> Any:
    """``fns[index - first](*args)`` as a balanced tree of ``torch.cond`` (ceil(log2 k) conds per call, not k-1)."""
    import torch

    if len(fns) == 1:
        return tuple(fns[0](*args))
    mid = len(fns) // 2
    return torch.cond(index < first + mid,
                      lambda *a: select_branch(index, fns[:mid], a, first),
                      lambda *a: select_branch(index, fns[mid:], a, first + mid),
                      args)


def control_flow_modules(gm: Any) -> Iterator[Any]:
    """``gm`` and every control-flow branch module under it (nested ones included), top-level first."""
    from executorch.exir.graph_module import get_control_flow_submodules

    yield gm
    for _, sub, _ in get_control_flow_submodules(gm):
        yield from control_flow_modules(sub)


def inline_branch_constants(program: Any) -> int:
    """In every cond branch of ``program`` (an edge ``ExportedProgram``, changed in place), replace each placeholder
    fed by a parameter, buffer or lifted constant with a ``get_attr`` of that tensor. Returns how many."""
    import torch
    from torch._export.utils import (get_buffer, get_lifted_tensor_constant, get_param, is_buffer,
                                     is_lifted_tensor_constant, is_param)

    def top_level_constant(node: Any) -> Any:
        if node.op != "placeholder":
            return None
        for is_kind, get in ((is_param, get_param), (is_buffer, get_buffer),
                             (is_lifted_tensor_constant, get_lifted_tensor_constant)):
            if is_kind(program, node):
                return get(program, node)
        return None

    inlined = 0

    def visit(gm: Any, constant_of: Any) -> None:
        nonlocal inlined
        for node in list(gm.graph.nodes):
            if node.op != "call_function" or node.target is not torch.ops.higher_order.cond:
                continue
            _, true_fn, false_fn, operands = node.args
            for branch_node in (true_fn, false_fn):
                branch = getattr(gm, branch_node.target)
                placeholders = [n for n in branch.graph.nodes if n.op == "placeholder"]
                constants = {ph: t for ph, op in zip(placeholders, operands)
                             if (t := constant_of(op)) is not None}
                visit(branch, constants.get)  # nested conds receive these placeholders as operands
                for ph, tensor in constants.items():
                    name = f"_const_{ph.name}"
                    branch.register_buffer(name, tensor.detach().clone(), persistent=False)
                    with branch.graph.inserting_after(ph):
                        attr = branch.graph.get_attr(name)
                    attr.meta = dict(ph.meta)
                    ph.replace_all_uses_with(attr)
                    inlined += 1
                branch.graph.lint()
                branch.recompile()

    visit(program.graph_module, top_level_constant)
    return inlined


def control_flow_partitioner() -> Any:
    """XNNPACK's partitioner applied to the top-level graph and inside every control-flow branch."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir.backend.partitioner import Partitioner, PartitionResult
    from executorch.exir.graph_module import get_control_flow_submodules

    class ControlFlowXnnpackPartitioner(Partitioner):
        def __init__(self) -> None:
            super().__init__()
            self.inner = XnnpackPartitioner()
            self.delegation_spec = self.inner.delegation_spec

        def ops_to_not_decompose(self, ep: Any) -> Any:
            return self.inner.ops_to_not_decompose(ep)

        def partition(self, exported_program: Any) -> Any:
            tags = dict(self.inner.partition(exported_program).partition_tags)

            class BranchView:  # what the XNNPACK configs read of a program, for one branch graph
                # No parameters by signature: a branch placeholder can share its name with a top-level parameter
                # without being it; static data inside a branch is what `inline_branch_constants` made get_attr.
                graph_signature = types.SimpleNamespace(inputs_to_parameters={}, inputs_to_buffers={},
                                                        inputs_to_lifted_tensor_constants={})

                def __init__(self, gm: Any) -> None:
                    self.graph_module = gm
                    self.state_dict: dict = {}
                    self.constants: dict = {}

            def visit(gm: Any, prefix: str) -> None:
                for name, sub, _ in get_control_flow_submodules(gm):
                    for part in self.inner.generate_partitions(BranchView(sub)):
                        tag = f"{prefix}{name}_tag{part.id}"  # partition ids restart per graph: prefix them
                        for node in part.nodes:
                            node.meta["delegation_tag"] = tag
                        tags[tag] = self.delegation_spec
                    visit(sub, f"{prefix}{name}_")

            visit(exported_program.graph_module, "cf_")
            return PartitionResult(tagged_exported_program=exported_program, partition_tags=tags)

    return ControlFlowXnnpackPartitioner()


def lower_with_control_flow(module: Any, example: Any) -> tuple[Any, Any]:
    """Export ``module`` on ``example``, inline branch constants, lower with XNNPACK inside the branches.
    Returns (edge program manager, ExecuTorch program manager)."""
    import logging

    import torch
    from executorch.exir import to_edge

    program = torch.export.export(module, (example,))
    edge = to_edge(program)
    inline_branch_constants(edge.exported_program())
    xnn_logger = logging.getLogger("executorch.backends.xnnpack.partition.xnnpack_partitioner")
    level = xnn_logger.level
    xnn_logger.setLevel(logging.ERROR)  # its "use to_edge_transform_and_lower" deprecation note: not for this flow
    try:
        edge = edge.to_backend(control_flow_partitioner())
    finally:
        xnn_logger.setLevel(level)
    return edge, edge.to_executorch()


__all__ = ["compose_plan", "select_branch", "control_flow_modules", "inline_branch_constants",
           "control_flow_partitioner", "lower_with_control_flow"]
