"""INT8 variants of the soft model on ExecuTorch (issue 12 item 3, docs/int8_breakdown.md): `int8-ptq-mix` quantizes
the gate multiply and bank sums of output mixing while the routing heads stay float; the artifact is one XNNPACK
partition whose mixing runs on int8 tensors, and its output stays close to FP32.

Real PT2E quantization, real lowering and the real runtime on a tiny model (1 block, width 8), tiles of Set5.
"""

import numpy as np
import pytest
import torch
from helpers import real_tiles, tiny_checkpoint, tiny_config
from nsr_edge import quant
from nsr_edge.converters.base import get_recipe, get_target
from nsr_edge.converters.pipeline import ConvertOptions, convert
from nsr_edge.deploy import OutputMixingConv, RoutingHead, to_deploy
from nsr_edge.models import build_model
from nsr_edge.runtime.card import read_card_json
from nsr_edge.runtime.runners.child import RunnerProcess

TINY = tiny_config()
MIX = f"{OutputMixingConv.__module__}.{OutputMixingConv.__qualname__}"
HEAD = f"{RoutingHead.__module__}.{RoutingHead.__qualname__}"


def _innermost(node) -> str:
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    return str(stack[-1][1]) if stack else ""


def _dequantized_inputs(node) -> bool:
    ins = [a for a in node.args if isinstance(a, torch.fx.Node)]
    return bool(ins) and all("dequantize" in str(a.target) for a in ins)


def test_int8_ptq_mix_is_a_named_recipe_the_executorch_target_serves():
    r = get_recipe("int8-ptq-mix")
    assert r.quantized and r.method == "ptq" and "heads" in r.fp32_parts and "routing" not in r.fp32_parts
    assert set(r.fp32_parts) - {"heads"} == set(get_recipe("int8-ptq").fp32_parts) - {"routing"}
    assert "int8-ptq-mix" in get_target("executorch").capabilities.recipes


def test_heads_keep_the_routers_float_and_quantize_the_mixing():
    torch.manual_seed(0)
    d = to_deploy(build_model(TINY), "output-mix")
    tiles = real_tiles(24, 4)
    target = get_target("executorch")
    graphs = {}
    for name in ("int8-ptq", "int8-ptq-mix"):
        rec = get_recipe(name)
        graphs[name] = quant.quantize_ptq(d, target.pt2e_quantizer(rec, d), tiles, False).graph
    for name, graph in graphs.items():
        muls = [n for n in graph.nodes if n.target == torch.ops.aten.mul.Tensor and _innermost(n) == MIX]
        assert muls, name  # the gate multiply of each mixing conv
        assert all(_dequantized_inputs(n) for n in muls) == (name == "int8-ptq-mix"), name
        # the routing heads' 1x1 conv stays float in both: its weight never goes through a dequantize
        head_convs = [n for n in graph.nodes if "conv" in str(n.target) and _innermost(n).endswith("Conv2d")
                      and any(str(v[1]) == HEAD for v in (n.meta.get("nn_module_stack") or {}).values())]
        assert head_convs and not any(_dequantized_inputs(n) for n in head_convs), name


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    ckpt = tiny_checkpoint(root / "tiny.pt")
    out = {"ckpt": ckpt}
    for recipe in ("int8-ptq", "int8-ptq-mix"):
        opts = ConvertOptions(str(ckpt), recipe=recipe, tile=32, calibration_tiles=8, calibration_dataset="set5",
                              progress=False)
        out[recipe], _ = convert(opts, str(root / recipe))
    return out


def test_int8_mixing_artifact_is_one_partition_and_close_to_fp32(artifacts):
    from nsr_edge.checkpoint import load_checkpoint

    card = read_card_json(artifacts["int8-ptq-mix"])
    assert card["recipe"]["name"] == "int8-ptq-mix" and "heads" in card["recipe"]["fp32_parts"]
    fwd = card["delegation"]["methods"]["forward"]
    assert fwd["fully_delegated"] and fwd["partitions"] == 1, fwd
    model = load_checkpoint(artifacts["ckpt"]).build()
    x = real_tiles(32, 4)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    errs = {}
    for recipe in ("int8-ptq", "int8-ptq-mix"):
        with RunnerProcess("executorch", str(artifacts[recipe] / "model.pte")) as p:
            y = p.run(x)
        errs[recipe] = float(np.abs(y - ref).mean())
    # int8 mixing adds rounding at the gate multiply and the bank sums: close to, but not the same as, float mixing
    assert 0 < errs["int8-ptq-mix"] < 0.02 and errs["int8-ptq-mix"] != errs["int8-ptq"], errs
