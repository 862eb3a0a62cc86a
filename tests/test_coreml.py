"""Core ML target: real coremltools conversions through `CoreMLTarget.lower` (what `nsr-edge convert` runs), real
package folders on disk, evaluated by the MIL reference evaluator.

Tiny models (1-2 blocks, width 8) and 24 px tiles keep each conversion around a second.
"""

import json

import numpy as np
import pytest
import torch

ct = pytest.importorskip("coremltools")

from nsr_edge.converters.base import LoweringContext, get_recipe, get_target
from nsr_edge.converters.coreml import (
    CONVERSION_DATE_KEY,
    CoreMLTarget,
    PackageSpec,
    deploy_for_coreml,
    deterministic_spec,
    export_for_coreml,
    float_ops_to_keep,
    package_files,
    recommended_compute_units,
    to_mlmodel,
)
from nsr_edge.runtime.coreml_mil import (
    MilError,
    MilEvaluator,
    MilUnsupportedOpError,
    load_artifact,
)
from nsr_edge.runtime.files import artifact_digest, path_digest

from nsr_edge.errors import UserError
from nsr_edge.layers import RoutingConfig
from nsr_edge.models import ModelConfig, build_model

TILE = 24


def _model(config: ModelConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(config).eval()


def _lower(model, recipe, tiles=(TILE,), target=None, deployed=None, calibration=4):
    """`lower` as the pipeline calls it: the deploy form, one example per tile, the recipe's calibration tiles."""
    recipe = get_recipe(recipe)
    c = model.config.channels
    tiles_ = None
    if recipe.name in ("w8a8", "int8-qat"):
        tiles_ = np.random.default_rng(0).random((calibration, c, tiles[0], tiles[0]), dtype=np.float32)
    examples = [torch.rand(1, c, t, t) for t in tiles]
    return (target or get_target("coreml")).lower(deployed if deployed is not None else deploy_for_coreml(model),
                                                  examples, LoweringContext(recipe, calibration_tiles=tiles_))


def _write(files, folder):
    """What the pipeline does with `LoweringResult.files`: nested paths under the artifact folder."""
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder / "model.mlpackage"


def _load(result, tmp_path, name="m"):
    return load_artifact(_write(result.files, tmp_path / name))


def _save(mlmodel, tmp_path, name):
    return load_artifact(_write(package_files(mlmodel), tmp_path / name))


def _run(package, x: torch.Tensor, backend="numpy") -> np.ndarray:
    return MilEvaluator(package, backend=backend).run({"input": x.numpy()})["output"]


SOFT = ModelConfig("wdsr_nsr", 2, 3, 2, 8, 2.0, 4, 4)


def test_fp16_package_stores_fp16_and_stays_close(tmp_path):
    model = _model(SOFT)
    result = _lower(model, "fp16")
    package = _load(result, tmp_path)
    assert result.extra["coreml"]["compute_precision"] == "fp16"
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
    package = _load(_lower(model, "w8"), tmp_path)
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
    spec = PackageSpec(((1, 3, TILE, TILE),))
    mlmodel = to_mlmodel(export_for_coreml(deploy_for_coreml(model), spec), spec)
    routing, heads = (set(float_ops_to_keep(mlmodel, parts)) for parts in (("routing",), ("heads",)))
    assert len(routing) >= 4
    assert heads and heads < routing  # `heads`: the head convs only, not the gate-expansion matmuls
    x = torch.rand(1, 3, TILE, TILE)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(_run(package, x) - ref).max() < 0.02
    assert recommended_compute_units("fp32", "w8") == "CPU_AND_GPU"


def test_w8a8_has_consistent_quantize_pairs_and_stays_close(tmp_path):
    model = _model(SOFT)
    result = _lower(model, "w8a8")
    package = _load(result, tmp_path)
    ops = package.op_counts()
    assert ops["quantize"] > 5 and ops["dequantize"] >= ops["quantize"]
    assert MilEvaluator(package).lint_quantization() == []
    assert result.extra["coreml"]["calibration"]["tiles"] == 4
    x = torch.rand(1, 3, TILE, TILE)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(_run(package, x) - ref).max() < 0.06


def test_w8a8_fp32_parts_keep_output_convs_float(tmp_path):
    """The w8a8 recipe's default keeps the tail conv (body.3 here) and the skip conv float, weights and activations."""
    model = _model(SOFT)
    parts = get_recipe("w8a8").fp32_parts
    assert set(parts) == {"routing", "last", "skip"}
    result = _lower(model, "w8a8", calibration=2)
    ev = MilEvaluator(_load(result, tmp_path))
    int8_weights = [op.name for op in ev.block.operations if op.type.startswith("constexpr_")]
    assert int8_weights and not [n for n in int8_weights if "skip" in n or "body_3" in n or "head" in n]
    producers = {name: op for op in ev._program for name, _ in op.outputs}
    for op in ev._program:
        if op.type == "conv" and ("skip" in op.inputs["weight"][0].name or "body_3" in op.inputs["weight"][0].name):
            assert producers[op.inputs["x"][0].name].type != "dequantize"  # float input
    assert ev.lint_quantization() == []
    assert result.extra["coreml"]["fp32_parts"] == list(parts)


def test_w8a8_without_calibration_tiles_is_refused():
    """w8a8 calibrates on the pipeline's tiles only (capabilities.calibrated_recipes): no tiles, no package."""
    assert "w8a8" in get_target("coreml").capabilities.calibrated_recipes
    model = _model(SOFT)
    with pytest.raises(UserError, match="calibration tiles"):
        get_target("coreml").lower(deploy_for_coreml(model), [torch.rand(1, 3, TILE, TILE)],
                                   LoweringContext(get_recipe("w8a8")))


def test_lint_follows_int8_add_normalization_and_catches_a_wrong_scale(tmp_path):
    """With int8 adds, coremltools rescales add inputs (dequantize scale 1.0 after a quantize of scale s): legal,
    the lint accepts it; a dequantize scale changed by hand changes the meaning, the lint names it."""
    from nsr_edge.converters.coreml import calibration_stats, quantize_activations_int8

    model = _model(SOFT)
    spec = PackageSpec(((1, 3, TILE, TILE),))
    mlmodel = to_mlmodel(export_for_coreml(deploy_for_coreml(model), spec), spec)
    tiles = [np.random.default_rng(0).random((3, TILE, TILE), dtype=np.float32)]
    mlmodel = quantize_activations_int8(mlmodel, calibration_stats(mlmodel, tiles), quantize_add=True)
    ev = MilEvaluator(_save(mlmodel, tmp_path, "adds"))
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
    from nsr_edge.deploy import KernelBanks

    model = _model(SOFT)
    good = deploy_for_coreml(model)
    bad = deploy_for_coreml(model)
    for m in bad.modules():
        if isinstance(m, KernelBanks):
            k, w = m.banks, m.conv.weight.data
            cout = w.shape[0] // k
            perm = torch.arange(k * cout).view(k, cout).t().reshape(-1)  # row i*Cout+o <- o*k+i
            m.conv.weight.data = w[perm].clone()
            m.conv.bias.data = m.conv.bias.data[perm].clone()
    packages = {name: _load(_lower(model, "fp32", deployed=deployed), tmp_path, name)
                for name, deployed in (("good", good), ("bad", bad))}
    x = torch.rand(1, 3, TILE, TILE)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(_run(packages["good"], x) - ref).max() <= 1e-6
    assert np.abs(_run(packages["bad"], x) - ref).max() > 1e-2


def test_enumerated_tiles(tmp_path):
    model = _model(SOFT)
    result = _lower(model, "fp32", tiles=(TILE, 32))
    assert [m.name for m in result.methods] == ["forward", "forward_32x32"]
    package = _load(result, tmp_path)
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
    result = _lower(model, "w8", target=CoreMLTarget(deployment_target="iOS18"))
    package = _load(result, tmp_path)
    assert package.spec.specification_version == 9
    assert "constexpr_blockwise_shift_scale" in package.op_counts()
    x = torch.rand(1, 3, TILE, TILE)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(_run(package, x) - ref).max() < 0.02
    assert result.extra["coreml"]["deployment_target"] == "iOS18"
    with pytest.raises(UserError):
        CoreMLTarget(deployment_target="iOS12")
    with pytest.raises(UserError):
        PackageSpec(((1, 3, TILE, TILE),), precision="int4")


def test_unsupported_op_is_named(tmp_path):
    class Odd(torch.nn.Module):
        def forward(self, x):
            return torch.erf(x)

    mlmodel = ct.convert(torch.jit.trace(Odd().eval(), torch.rand(1, 3, 4, 4)),
                         inputs=[ct.TensorType(name="input", shape=(1, 3, 4, 4), dtype=np.float32)],
                         convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, skip_model_load=True)
    package = _save(mlmodel, tmp_path, "odd")
    with pytest.raises(MilUnsupportedOpError, match="unsupported MIL op erf"):
        MilEvaluator(package)


@pytest.mark.parametrize("recipe", ["fp32", "w8a8"])
def test_package_folder_is_deterministic(recipe, tmp_path):
    """Converting twice gives the same files: coremltools' random Manifest.json identifiers are replaced by ones
    derived from the item paths, protobuf maps are written sorted and the conversion date is left to the card. The
    digest the card records for the folder (artifact_digest) is the one path_digest computes on disk."""
    model = _model(SOFT)
    a, b = _lower(model, recipe), _lower(model, recipe)
    assert a.files == b.files
    art = "model.mlpackage"
    assert {"model.mlpackage/Manifest.json", "model.mlpackage/Data/com.apple.CoreML/model.mlmodel",
            "model.mlpackage/Data/com.apple.CoreML/weights/weight.bin"} <= set(a.files)
    assert all(name.startswith(art + "/") for name in a.files)
    manifest = json.loads(a.files["model.mlpackage/Manifest.json"])
    root = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]
    assert root["path"] == "com.apple.CoreML/model.mlmodel"
    spec_bytes = a.files["model.mlpackage/Data/com.apple.CoreML/model.mlmodel"]
    assert deterministic_spec(spec_bytes) == spec_bytes  # maps already sorted: a fixed point
    folder = _write(a.files, tmp_path / "out")
    assert path_digest(folder) == artifact_digest(a.files, art)
    package = load_artifact(folder)
    assert CONVERSION_DATE_KEY not in package.metadata
    assert package.metadata["com.github.apple.coremltools.version"] == ct.__version__


def test_decoder_matches_coremltools_protobuf(tmp_path):
    """The hand-written protobuf decoder reads what coremltools' generated classes read."""
    model = _model(SOFT)
    package = _load(_lower(model, "w8"), tmp_path)
    spec = ct.utils.load_spec(str(tmp_path / "m" / "model.mlpackage"))
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
    package = _load(_lower(model, "fp32"), tmp_path)
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
    a = _load(_lower(model, "fp32"), tmp_path, "a")
    result = _lower(model, "fp32", target=CoreMLTarget(source="trace"))
    assert result.extra["coreml"]["export_source"] == "trace"
    b = _load(result, tmp_path, "b")
    x = torch.rand(1, 3, TILE, TILE)
    assert np.abs(_run(a, x) - _run(b, x)).max() <= 1e-6


def test_int8_qat_through_the_shared_pt2e_qat(tmp_path):
    """int8-qat as the pipeline runs it (a few steps): the target's CoreMLQuantizer through nsr_edge.quant's shared,
    resumable QAT, then `lower` of the PT2E-converted module: int8 weights and activations in the package,
    quantization consistent."""
    from nsr_edge.runtime.tasks import TaskSpec

    from nsr_edge import quant

    model = _model(SOFT)
    target = get_target("coreml")
    recipe = get_recipe("int8-qat", qat_steps=3, qat_batch=2)
    deployed = deploy_for_coreml(model)
    task = TaskSpec("sr", 2)
    tiles = quant.calibration_tiles(task, TILE, 4, dataset="t91", progress=False)
    qat, summary = quant.quantize_qat(deployed, target.pt2e_quantizer(recipe, deployed), tiles, task, recipe,
                                      tmp_path / "qat", dataset="t91", images=2, progress=False)
    assert summary["steps"] == 3
    with pytest.raises(UserError, match="PT2E QAT"):  # int8-qat lowers only what the pipeline's QAT produced
        target.lower(deployed, [torch.rand(1, 3, TILE, TILE)], LoweringContext(recipe, calibration_tiles=tiles))
    result = target.lower(qat, [torch.rand(1, 3, TILE, TILE)],
                          LoweringContext(recipe, quantized=True, calibration_tiles=tiles))
    package = _load(result, tmp_path)
    ops = package.op_counts()
    assert ops.get("quantize", 0) > 0 and ops.get("constexpr_affine_dequantize", 0) > 0
    ev = MilEvaluator(package)
    assert ev.lint_quantization() == []
    x = torch.from_numpy(tiles[:1])  # a real tile: activation ranges were calibrated on real images
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(ev.run({"input": x.numpy()})["output"] - ref).max() < 0.1
