"""INT8 recipes and the shared quantization stages: which nodes stay float, calibration data, resumable QAT."""

import numpy as np
import pytest
import torch

from nsr_edge import quant
from nsr_edge.converters.base import RECIPES, Recipe, get_recipe, get_target
from nsr_edge.deploy import to_deploy
from nsr_edge.errors import UserError
from nsr_edge.models import ModelConfig, build_model
from nsr_edge.runtime.tasks import TaskSpec

TINY = ModelConfig("wdsr_nsr", 2, 3, blocks=1, width=8, width_multiplier=2.0, banks=2, cardinality=1)
SR2 = TaskSpec("sr", scale=2)


@pytest.fixture(autouse=True)
def small_training_set(monkeypatch):
    """'set5_train' = Set5's 5 HR images, so data stages take seconds."""
    from nsr_edge.runtime import datasets

    real = datasets.list_eval_images

    def fake(name, scale=None, data_dir=None):
        return real("set5", 2, data_dir) if name == "set5_train" else real(name, scale, data_dir)

    monkeypatch.setattr(datasets, "list_eval_images", fake)


def test_recipes_are_named_data():
    assert {"fp32", "int8-ptq", "int8-qat"} <= set(RECIPES)
    r = get_recipe("int8-ptq", fp32_parts=("routing", "first"), calibration_tiles=8)
    assert r.quantized and r.method == "ptq" and r.fp32_parts == ("routing", "first")
    assert Recipe.from_dict(r.to_dict()) == r
    assert not RECIPES["fp32"].quantized
    with pytest.raises(UserError, match="unknown recipe"):
        get_recipe("int4")
    with pytest.raises(UserError, match="fp32_parts"):
        get_recipe("int8-ptq", fp32_parts=("tail-ish",))


def _quantized_nodes(module):
    """conv nodes whose weight went through a quantize/dequantize pair after PT2E conversion, by module name."""
    names = set()
    for n in module.graph.nodes:
        if n.op == "call_function" and "dequantize_per_channel" in str(n.target):
            for user in n.users:
                stack = list((user.meta.get("nn_module_stack") or {}).values())
                if stack:
                    names.add(stack[-1][0])
    return names


def test_fp32_parts_keep_the_named_modules_in_float():
    torch.manual_seed(0)
    d = to_deploy(build_model(TINY), "output-mix")
    tiles = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    target = get_target("executorch")
    everything = quant.quantize_ptq(d, target.pt2e_quantizer(get_recipe("int8-ptq", fp32_parts=()), d), tiles, False)
    q_all = _quantized_nodes(everything)
    assert {"body.0", "body.2", "skip.0"} <= q_all and any(n.endswith("head.proj") for n in q_all)
    rec = get_recipe("int8-ptq", fp32_parts=("routing", "first", "skip"))
    kept = quant.quantize_ptq(d, target.pt2e_quantizer(rec, d), tiles, False)
    q_kept = _quantized_nodes(kept)
    assert "body.0" not in q_kept and "skip.0" not in q_kept and "body.2" in q_kept
    assert not any(n.endswith("head.proj") for n in q_kept)
    assert any(n.endswith("banks.conv") for n in q_kept)
    # the quantized module re-exports at another tile shape without calibrating again
    x = torch.rand(1, 3, 24, 24)
    ep = quant.export_at(kept, (1, 3, 24, 24))
    assert ep.module()(x).shape == (1, 3, 48, 48)


def test_calibration_tiles_come_from_the_training_set_through_the_tiler():
    a = quant.calibration_tiles(SR2, 32, 10, seed=1, dataset="set5_train", progress=False)
    b = quant.calibration_tiles(SR2, 32, 10, seed=1, dataset="set5_train", progress=False)
    assert a.shape == (10, 3, 32, 32) and a.dtype == np.float32 and np.array_equal(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0
    with pytest.raises(UserError, match="smaller --tile"):
        quant.calibration_tiles(SR2, 2048, 4, dataset="set5_train", progress=False)
    with pytest.raises(UserError, match="calibration data"):
        quant.calibration_tiles(SR2, 32, 4, dataset="no_such_set", progress=False)


def test_qat_fine_tunes_and_resumes(tmp_path):
    torch.manual_seed(0)
    d = to_deploy(build_model(TINY), "output-mix")
    tiles = quant.calibration_tiles(SR2, 24, 4, dataset="set5_train", progress=False)
    target = get_target("executorch")
    rec = get_recipe("int8-qat", qat_steps=3, qat_batch=2, qat_lr=1e-4)
    q1, s1 = quant.quantize_qat(d, target.pt2e_quantizer(rec, d), tiles, SR2, rec, tmp_path / "a",
                                dataset="set5_train", images=2, progress=False)
    assert s1["steps"] == 3 and s1["resumed_from"] == 0 and (tmp_path / "a" / "qat_state.pt").is_file()
    # asking for more steps continues from the saved state
    rec6 = rec.with_(qat_steps=6)
    q2, s2 = quant.quantize_qat(d, target.pt2e_quantizer(rec6, d), tiles, SR2, rec6, tmp_path / "a",
                                dataset="set5_train", images=2, progress=False)
    assert s2["resumed_from"] == 3
    straight, _ = quant.quantize_qat(d, target.pt2e_quantizer(rec6, d), tiles, SR2, rec6, tmp_path / "b",
                                     dataset="set5_train", images=2, progress=False)
    x = torch.from_numpy(tiles[:1])
    assert torch.allclose(q2(x), straight(x), atol=1e-5)
    # the state of another model is refused, not silently reused
    other = to_deploy(build_model(TINY), "output-mix")
    with pytest.raises(UserError, match="another model"):
        quant.quantize_qat(other, target.pt2e_quantizer(rec6, other), tiles, SR2, rec6, tmp_path / "a",
                           dataset="set5_train", images=2, progress=False)
