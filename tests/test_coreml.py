"""Core ML target: real coremltools conversions, real saved packages, evaluated by the MIL reference evaluator.

Tiny models (1-2 blocks, width 8) and 24 px tiles keep each conversion around a second.
"""

import zipfile

import numpy as np
import pytest
import torch

ct = pytest.importorskip("coremltools")

from nsr_edge.converters.coreml import (
    CoreMLOptions,
    convert_coreml,
    float_ops_to_keep,
    package_zip_bytes,
    recommended_compute_units,
    save_mlpackage,
)
from nsr_edge.runtime.coreml_mil import (
    MilError,
    MilEvaluator,
    MilUnsupportedOpError,
    load_artifact,
    load_mlpackage,
)

from nsr_edge.errors import UserError
from nsr_edge.layers import RoutingConfig
from nsr_edge.models import ModelConfig, build_model

TILE = 24


def _model(config: ModelConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(config).eval()


def _convert_and_load(model, recipe, tmp_path, name="m", **opts):
    options = CoreMLOptions(tile=TILE, **opts)
    result = convert_coreml(model, recipe, options, calibration_tiles=[np.random.default_rng(0).random(
        (model.config.channels, TILE, TILE), dtype=np.float32) for _ in range(4)])
    path = save_mlpackage(result.mlmodel, tmp_path / f"{name}.mlpackage")
    return result, load_mlpackage(path)


def _run(package, x: torch.Tensor, backend="numpy") -> np.ndarray:
    return MilEvaluator(package, backend=backend).run({"input": x.numpy()})["output"]


SOFT = ModelConfig("wdsr_nsr", 2, 3, 2, 8, 2.0, 4, 4)


def test_fp16_package_stores_fp16_and_stays_close(tmp_path):
    model = _model(SOFT)
    result, package = _convert_and_load(model, "fp16", tmp_path)
    assert result.card_fields()["compute_precision"] == "fp16"
    ops = package.op_counts()
    assert ops.get("cast", 0) == 2  # fp32 I/O, fp16 inside
    seen = {}
    x = torch.rand(1, 3, TILE, TILE)
    out = MilEvaluator(package).run({"input": x.numpy()}, lambda op, name, v: seen.setdefault(name, v.dtype))
    assert sum(1 for d in seen.values() if d == np.float16) > 20  # every intermediate is stored as fp16
    with torch.no_grad():
        ref = model(x).numpy()
    err = np.abs(out["output"] - ref).max()
    assert 1e-5 < err < 5e-3  # rounded like fp16, but close


def test_w8_weights_are_int8_per_bank_row_and_routing_stays_float(tmp_path):
    model = _model(SOFT)
    result, package = _convert_and_load(model, "w8", tmp_path, precision="fp32")
    ev = MilEvaluator(package)
    quantized = [op for op in ev.block.operations if op.type == "constexpr_affine_dequantize"]
    assert quantized, "no int8 weights"
    banks = [op for op in quantized if "banks" in op.name]
    assert len(banks) == 4  # 2 blocks x 2 sparse convs
    for op in banks:
        q = ev.constant_input(op, "quantized_data")
        assert q.dtype == np.int8
        rows = q.shape[0]
        assert np.asarray(ev.constant_input(op, "scale")).shape == (rows,)  # a scale per bank row: [k*Cout, ...]
        assert int(ev.constant_input(op, "axis")) == 0
    assert not any("head" in op.name for op in quantized)  # routing heads stay float
    assert len(float_ops_to_keep(result.mlmodel)) >= 4
    x = torch.rand(1, 3, TILE, TILE)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(_run(package, x) - ref).max() < 0.02
    assert recommended_compute_units("fp32", "w8") == "CPU_AND_GPU"


def test_w8a8_has_consistent_quantize_pairs_and_stays_close(tmp_path):
    model = _model(SOFT)
    result, package = _convert_and_load(model, "w8a8", tmp_path)
    ops = package.op_counts()
    assert ops["quantize"] > 5 and ops["dequantize"] >= ops["quantize"]
    assert MilEvaluator(package).lint_quantization() == []
    assert result.card_fields()["calibration"]["tiles"] == 4
    x = torch.rand(1, 3, TILE, TILE)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(_run(package, x) - ref).max() < 0.06


def test_w8a8_fp32_parts_keep_output_convs_float(tmp_path):
    """The w8a8 recipe's default keeps the tail conv (body.3 here) and the skip conv float, weights and activations."""
    from nsr_edge.converters.base import get_recipe

    model = _model(SOFT)
    parts = get_recipe("w8a8").fp32_parts
    assert set(parts) == {"routing", "last", "skip"}
    result = convert_coreml(model, "w8a8", CoreMLOptions(tile=TILE), fp32_parts=parts, calibration_tiles=[
        np.random.default_rng(0).random((3, TILE, TILE), dtype=np.float32) for _ in range(2)])
    package = load_mlpackage(save_mlpackage(result.mlmodel, tmp_path / "p.mlpackage"))
    ev = MilEvaluator(package)
    int8_weights = [op.name for op in ev.block.operations if op.type.startswith("constexpr_")]
    assert int8_weights and not [n for n in int8_weights if "skip" in n or "body_3" in n or "head" in n]
    producers = {name: op for op in ev._program for name, _ in op.outputs}
    for op in ev._program:
        if op.type == "conv" and ("skip" in op.inputs["weight"][0].name or "body_3" in op.inputs["weight"][0].name):
            assert producers[op.inputs["x"][0].name].type != "dequantize"  # float input
    assert ev.lint_quantization() == []
    assert result.card_fields()["fp32_parts"] == list(parts)


def test_lint_follows_int8_add_normalization_and_catches_a_wrong_scale(tmp_path):
    """With int8 adds, coremltools rescales add inputs (dequantize scale 1.0 after a quantize of scale s): legal,
    the lint accepts it; a dequantize scale changed by hand changes the meaning, the lint names it."""
    from nsr_edge.converters.coreml import (
        calibration_stats,
        deploy_for_coreml,
        export_for_coreml,
        quantize_activations_int8,
        to_mlmodel,
    )

    model = _model(SOFT)
    options = CoreMLOptions(tile=TILE)
    mlmodel = to_mlmodel(export_for_coreml(deploy_for_coreml(model), options, 3), options, 3)
    tiles = [np.random.default_rng(0).random((3, TILE, TILE), dtype=np.float32)]
    mlmodel = quantize_activations_int8(mlmodel, calibration_stats(mlmodel, tiles), quantize_add=True)
    ev = MilEvaluator(load_mlpackage(save_mlpackage(mlmodel, tmp_path / "adds.mlpackage")))
    unit = [op for op in ev._program if op.type == "dequantize" and float(np.ravel(ev.constant_input(op, "scale"))[0]) == 1.0]
    assert unit, "expected coremltools' add-input normalization (dequantize scale 1.0)"
    assert ev.lint_quantization() == []
    victim = next(op for op in ev._program if op.type == "dequantize" and op not in unit)
    key = victim.inputs["scale"][0].name
    ev._consts[key] = np.asarray(ev._consts[key]) * 2
    assert any(victim.name in line or "factor" in line for line in ev.lint_quantization())


def test_wrong_bank_layout_fails_validation(tmp_path):
    """Negative test: banks stored [Cout, k] instead of [k, Cout] (a plausible reshape bug) convert fine, and the
    evaluator shows the package does not compute the model."""
    from nsr_edge.converters import coreml as coreml_mod

    from nsr_edge.deploy import KernelBanks

    model = _model(SOFT)
    good = coreml_mod.deploy_for_coreml(model)
    bad = coreml_mod.deploy_for_coreml(model)
    for m in bad.modules():
        if isinstance(m, KernelBanks):
            k, w = m.banks, m.conv.weight.data
            cout = w.shape[0] // k
            perm = torch.arange(k * cout).view(k, cout).t().reshape(-1)  # row i*Cout+o <- o*k+i
            m.conv.weight.data = w[perm].clone()
            m.conv.bias.data = m.conv.bias.data[perm].clone()
    options = CoreMLOptions(precision="fp32", tile=TILE)
    packages = {}
    for name, deployed in (("good", good), ("bad", bad)):
        mlmodel = coreml_mod.to_mlmodel(coreml_mod.export_for_coreml(deployed, options, 3), options, 3)
        packages[name] = load_mlpackage(save_mlpackage(mlmodel, tmp_path / f"{name}.mlpackage"))
    x = torch.rand(1, 3, TILE, TILE)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(_run(packages["good"], x) - ref).max() <= 1e-6
    assert np.abs(_run(packages["bad"], x) - ref).max() > 1e-2


def test_enumerated_tiles(tmp_path):
    model = _model(SOFT)
    _, package = _convert_and_load(model, "fp32", tmp_path, enumerated_tiles=(32,))
    assert package.inputs[0].enumerated_shapes == ((1, 3, 24, 24), (1, 3, 32, 32))
    ev = MilEvaluator(package)
    for t in (24, 32):
        x = torch.rand(1, 3, t, t)
        with torch.no_grad():
            ref = model(x).numpy()
        assert np.abs(ev.run({"input": x.numpy()})["output"] - ref).max() <= 1e-6
    with pytest.raises(MilError, match="not one of the enumerated"):
        ev.run({"input": np.zeros((1, 3, 28, 28), np.float32)})


def test_deployment_target_and_precision_options(tmp_path):
    model = _model(SOFT)
    result, package = _convert_and_load(model, "w8", tmp_path, deployment_target="iOS18")
    assert package.spec.specification_version == 9
    assert "constexpr_blockwise_shift_scale" in package.op_counts()
    x = torch.rand(1, 3, TILE, TILE)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(_run(package, x) - ref).max() < 0.02
    assert result.card_fields()["deployment_target"] == "iOS18"
    with pytest.raises(UserError):
        CoreMLOptions(deployment_target="iOS12")
    with pytest.raises(UserError):
        CoreMLOptions(precision="int4")


def test_unsupported_op_is_named(tmp_path):
    class Odd(torch.nn.Module):
        def forward(self, x):
            return torch.erf(x)

    mlmodel = ct.convert(torch.jit.trace(Odd().eval(), torch.rand(1, 3, 4, 4)),
                         inputs=[ct.TensorType(name="input", shape=(1, 3, 4, 4), dtype=np.float32)],
                         convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, skip_model_load=True)
    package = load_mlpackage(save_mlpackage(mlmodel, tmp_path / "odd.mlpackage"))
    with pytest.raises(MilUnsupportedOpError, match="unsupported MIL op erf"):
        MilEvaluator(package)


def test_save_refuses_overwrite_and_zip_artifact_loads(tmp_path):
    model = _model(SOFT)
    result = convert_coreml(model, "fp32", CoreMLOptions(tile=TILE))
    path = save_mlpackage(result.mlmodel, tmp_path / "m.mlpackage")
    with pytest.raises(UserError, match="refusing to overwrite"):
        save_mlpackage(result.mlmodel, path)
    save_mlpackage(result.mlmodel, path, force=True, metadata={"nsr_edge.recipe": "fp32"})
    assert load_mlpackage(path).metadata["nsr_edge.recipe"] == "fp32"
    data = package_zip_bytes(result.mlmodel)
    assert data == package_zip_bytes(result.mlmodel)  # deterministic
    (tmp_path / "m.zip").write_bytes(data)
    with zipfile.ZipFile(tmp_path / "m.zip") as zf:
        assert "model.mlpackage/Manifest.json" in zf.namelist()
    x = torch.rand(1, 3, TILE, TILE)
    assert np.array_equal(_run(load_artifact(tmp_path / "m.zip"), x), _run(load_mlpackage(path), x))


def test_decoder_matches_coremltools_protobuf(tmp_path):
    """The hand-written protobuf decoder reads what coremltools' generated classes read."""
    model = _model(SOFT)
    result, package = _convert_and_load(model, "w8", tmp_path)
    spec = ct.utils.load_spec(str(tmp_path / "m.mlpackage"))
    assert package.spec.specification_version == spec.specificationVersion
    assert [f.name for f in package.inputs] == [f.name for f in spec.description.input]
    assert list(package.inputs[0].shape) == list(spec.description.input[0].type.multiArrayType.shape)
    fn = spec.mlProgram.functions["main"]
    block = fn.block_specializations[fn.opset]
    ours = package.functions["main"].block
    assert [op.type for op in ours.operations] == [op.type for op in block.operations]
    assert [o[0] for op in ours.operations for o in op.outputs] == [o.name for op in block.operations for o in op.outputs]
    assert list(ours.outputs) == list(block.outputs)
    assert dict(package.metadata) == dict(spec.description.metadata.userDefined)


# ---- every op our models produce: FP32 packages reproduce eager PyTorch to 1e-6 (formerly test_coreml_ops.py)

@pytest.mark.parametrize(
    "config",
    [
        SOFT,
        ModelConfig("wdsr_nsr", 2, 3, 1, 8, 2.0, 4, 2,
                    RoutingConfig(kind="sigmoid", pool_grid=2, normalize_logits=True, temperature=0.5)),
        ModelConfig("wdsr_nsr", 1, 1, 1, 8, 2.0, 4, 4, RoutingConfig(kind="straight_through")),
        ModelConfig("wdsr_nsr", 3, 3, 1, 8, 2.0, 4, 4, RoutingConfig(shared=True)),
        ModelConfig("wdsr", 2, 3, 2, 8, 2.0),
    ],
    ids=["softmax", "sigmoid-grid-normalized", "onehot-gray-scale1", "shared-x3", "dense"],
)
def test_fp32_package_equals_eager(config, tmp_path):
    """Every op our models produce is evaluated, and an FP32 package reproduces eager PyTorch to 1e-6."""
    model = _model(config)
    _, package = _convert_and_load(model, "fp32", tmp_path)
    x = torch.rand(1, config.channels, TILE, TILE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x).numpy()
    # Normalised logits with temperature 0.5 amplify float32 rounding: there the eager deploy form itself differs
    # from the eager training form by ~1.4e-6, so the package is held to the same 2e-6.
    tol = 2e-6 if config.routing.normalize_logits else 1e-6
    for backend in ("numpy", "torch"):
        out = _run(package, x, backend)
        assert out.shape == ref.shape and out.dtype == np.float32
        assert np.abs(out - ref).max() <= tol, backend


def test_trace_source_equals_export(tmp_path):
    model = _model(SOFT)
    _, a = _convert_and_load(model, "fp32", tmp_path, "a")
    _, b = _convert_and_load(model, "fp32", tmp_path, "b", source="trace")
    x = torch.rand(1, 3, TILE, TILE)
    assert np.abs(_run(a, x) - _run(b, x)).max() <= 1e-6


@pytest.mark.parametrize("flow", ["pt2e", pytest.param("linear_quantizer", marks=pytest.mark.slow)])
def test_int8_qat_flows(flow, tmp_path):
    """int8-qat (a few steps on random pairs) through ExecuTorch's CoreMLQuantizer (PT2E, the default) and
    coremltools' LinearQuantizer: int8 weights and activations in the package, quantization consistent."""
    model = _model(SOFT)
    gen = torch.Generator().manual_seed(0)

    def batches(step):
        x = torch.rand(2, 3, TILE, TILE, generator=gen)
        with torch.no_grad():
            return x, model(x)

    result = convert_coreml(model, "int8-qat", CoreMLOptions(tile=TILE), qat_batches=batches, qat_steps=3,
                            qat_flow=flow)
    package = load_mlpackage(save_mlpackage(result.mlmodel, tmp_path / "qat.mlpackage"))
    ops = package.op_counts()
    assert ops.get("quantize", 0) > 0 and ops.get("constexpr_affine_dequantize", 0) > 0
    ev = MilEvaluator(package)
    assert ev.lint_quantization() == []
    x = torch.rand(1, 3, TILE, TILE)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(ev.run({"input": x.numpy()})["output"] - ref).max() < 0.1
