"""The target contract (converters/base.py): capabilities as data, checked before any work, with one-line reasons."""

from __future__ import annotations

import json

import pytest

from helpers import one_line_error, run_cli
from nsr_edge.converters.base import (STRATEGIES, Capabilities, LoweringContext, TARGET_MODULES, get_recipe,
                                      get_target, register_target)


def test_base_strategies_are_the_deploy_forms():
    from nsr_edge.deploy import STRATEGIES as DEPLOY

    assert STRATEGIES == DEPLOY


@pytest.mark.parametrize("argv, message, needs_model", [
    (["--model", "nsr_sr_x2", "--target", "coreml", "--strategy", "kernel-mix"],
     "target coreml refuses --strategy kernel-mix: Core ML needs static conv weights", False),
    (["--model", "nsr_sr_x2", "--target", "executorch-coreml", "--strategy", "hard"],
     "target executorch-coreml refuses --strategy hard", False),
    (["--model", "nsr_sr_x2", "--target", "onnxruntime", "--quant", "int8-qat"],
     "target onnxruntime does not support recipe int8-qat (it supports fp32, int8-ptq)", False),
    (["--model", "nsr_sr_x2", "--target", "executorch-dispatch"],
     "target executorch-dispatch lowers strategy hard only (pass --strategy hard)", False),
    (["--model", "nsr_sr_x2_hard", "--target", "executorch-dispatch", "--strategy", "hard", "--extra-tiles", "48"],
     "one tile size per artifact", False),
    (["--model", "dense_sr_x2_eqmacs", "--target", "litert", "--strategy", "hard"],
     "target litert: hard dispatch lowers WDSR-NSR models", True),
    (["--model", "dense_sr_x2_eqmacs", "--target", "executorch-dispatch", "--strategy", "hard"],
     "target executorch-dispatch: hard dispatch lowers WDSR-NSR models", True),
])
def test_requests_a_target_cannot_serve_are_refused_first_in_one_line(tmp_path, monkeypatch, argv, message,
                                                                      needs_model):
    """Refused before any work: before the model is even loaded where the request alone decides, and always before
    calibration, deploy form or lowering (those stages are made to fail loudly if reached)."""
    from nsr_edge import hub, quant
    from nsr_edge.converters import pipeline

    def reached(stage):
        def fail(*a, **k):
            raise AssertionError(f"{stage} ran for a request the target refuses")
        return fail

    if not needs_model:
        monkeypatch.setattr(hub, "resolve", reached("model loading"))
    monkeypatch.setattr(quant, "calibration_tiles", reached("calibration"))
    monkeypatch.setattr(pipeline.Conversion, "make_deploy", reached("the deploy form"))
    line = one_line_error(run_cli("convert", *argv, "--out", tmp_path / "art", "--quiet"))
    assert message in line
    assert not list(tmp_path.iterdir())


def test_targets_command_lists_every_target_with_its_capabilities():
    r = run_cli("targets", "--json")
    assert r.returncode == 0, r.stderr
    listed = {t["name"]: t for t in json.loads(r.stdout)}
    assert set(listed) == set(TARGET_MODULES)
    coreml = listed["coreml"]["capabilities"]
    assert coreml["artifact"] == "model.mlpackage" and coreml["artifact_kind"] == "directory"
    assert "w8a8" in coreml["calibrated_recipes"] and "kernel-mix" in coreml["refused_strategies"]
    assert listed["executorch-dispatch"]["capabilities"]["multi_program"] is True
    assert [r["name"] for r in listed["executorch-dispatch"]["capabilities"]["requirements"]] == [
        "sparse", "cardinality-1"]


def test_requirements_apply_to_their_strategies_only():
    from nsr_edge.converters.base import HARD_DISPATCH_REQUIREMENTS, ModelFacts

    caps = Capabilities(artifact="m.bin", runner="x", recipes=("fp32",), requirements=HARD_DISPATCH_REQUIREMENTS)
    d4 = ModelFacts("wdsr_nsr", 2, 3, sparse=True, cardinality=4)
    dense = ModelFacts("wdsr", 2, 3, sparse=False)
    assert "cardinality d=1" in caps.refusal("t", "hard", "fp32", (32,), d4)
    assert "WDSR-NSR" in caps.refusal("t", "hard", "fp32", (32,), dense)
    assert caps.refusal("t", "output-mix", "fp32", (32,), d4) is None
    assert caps.refusal("t", "output-mix", "fp32", (32,), dense) is None


def test_capabilities_are_checked_when_declared():
    with pytest.raises(ValueError, match="unknown recipes"):
        Capabilities(artifact="m.bin", runner="x", recipes=("int3",))
    with pytest.raises(ValueError, match="subset"):
        Capabilities(artifact="m.bin", runner="x", recipes=("fp32",), calibrated_recipes=("int8-ptq",))
    with pytest.raises(ValueError, match="not also refused"):
        Capabilities(artifact="m.bin", runner="x", recipes=("fp32",), refused_strategies={"hard": "no"})


def test_a_class_without_the_protocol_is_not_registered():
    class NoCapabilities:
        name = "broken"

        def check_available(self): ...

        def pt2e_quantizer(self, recipe, model): ...

        def lower(self, module, examples, context): ...

    with pytest.raises(TypeError, match="Target protocol"):
        register_target(NoCapabilities)


def test_every_target_lowers_with_the_one_signature():
    import inspect

    for name in TARGET_MODULES:
        target = get_target(name)
        params = list(inspect.signature(target.lower).parameters)
        assert params == ["module", "examples", "context"] or params == ["model", "examples", "context"], (name, params)
    assert LoweringContext(get_recipe("fp32")).calibration_tiles is None


def test_aliases_name_the_registered_target():
    assert get_target("tflite") is get_target("litert")
    assert "unknown target 'tpu'" in one_line_error(run_cli("convert", "--model", "nsr_sr_x2", "--target", "tpu",
                                                            "--out", "/tmp/never-written"))
