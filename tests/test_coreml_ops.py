"""Every op our models produce, through real coremltools conversions, evaluated by the MIL reference evaluator:
FP32 packages reproduce eager PyTorch to 1e-6. Helpers shared with tests/test_coreml.py."""

import numpy as np
import pytest
import torch

ct = pytest.importorskip("coremltools")

from nsr_edge.converters.coreml import CoreMLOptions, convert_coreml, save_mlpackage
from nsr_edge.runtime.coreml_mil import MilEvaluator, load_mlpackage

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
