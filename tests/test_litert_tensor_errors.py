"""INT8 LiteRT per-tensor errors (converters/litert_tensor_errors.py): ai-edge-quantizer's own validation of the
quantized .tflite against the float one, recorded in the card's ``tensor_errors`` (worst tensors per signature, the
full list in tensor_errors.json) and shown by ``validate`` and ``convert``.

One tiny INT8 conversion through the CLI (seconds); the numbers are checked against an independent computation
(both interpreters run here) and against a deliberately mis-calibrated model."""

import hashlib
import json
from pathlib import Path

import helpers
import jsonschema
import numpy as np
import pytest
import torch
from helpers import one_line_error, run_cli

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_quantizer")

from nsr_edge.checkpoint import Checkpoint, save_checkpoint  # noqa: E402
from nsr_edge.converters import litert as L  # noqa: E402
from nsr_edge.converters import litert_tensor_errors as TE  # noqa: E402
from nsr_edge.converters.base import FP32_PARTS, get_recipe  # noqa: E402
from nsr_edge.deploy import to_deploy  # noqa: E402
from nsr_edge.models import ModelConfig, build_model  # noqa: E402
from nsr_edge.runtime import card as C  # noqa: E402
from nsr_edge.runtime.tasks import TaskSpec  # noqa: E402
from nsr_edge.runtime.validate import short_tensor_name  # noqa: E402

TILE = 32
CFG = ModelConfig("wdsr_nsr", 2, 3, blocks=2, width=8, width_multiplier=2.0, banks=3, cardinality=1)


def _model():
    torch.manual_seed(0)
    model = build_model(CFG).eval()
    with torch.no_grad():  # routing with visible spread (as tests/test_litert.py)
        for name, p in model.named_parameters():
            if "head" in name or "routing" in name:
                p.mul_(20.0)
    return model


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    root = tmp_path_factory.mktemp("litert-te")
    ckpt = root / "m.pt"
    save_checkpoint(Checkpoint(CFG, _model().state_dict(), {"task": TaskSpec("sr", scale=2).to_dict()}), ckpt)
    r = run_cli("convert", "--model", ckpt, "--target", "litert", "--tile", TILE, "--quant", "int8-ptq",
                "--calibration-tiles", "8", "--out", root / "int8")
    assert r.returncode == 0, r.stderr[-800:]
    return {"dir": root / "int8", "convert_stdout": r.stdout}


def test_the_card_records_finite_errors_and_the_full_list(art):
    data = C.read_card_json(art["dir"])
    te = data["tensor_errors"]
    assert te["tool"].startswith("ai-edge-quantizer ") and te["metric"] == "snr_db" and te["samples"] == 8
    (sig,) = te["signatures"].values()
    assert 0 < len(sig["worst"]) <= te["top"] and sig["exact"] < sig["tensors"]
    for t in sig["worst"]:
        assert t["mse"] > 0 and np.isfinite(t["mse"]) and np.isfinite(t["snr_db"]), t
    snrs = [t["snr_db"] for t in sig["worst"]]
    assert snrs == sorted(snrs) and sig["worst_snr_db"] == snrs[0] <= sig["median_snr_db"] <= sig["output_snr_db"]
    # the full list beside the artifact, vouched for by the card; its head is the card's worst
    body = (art["dir"] / te["file"]).read_bytes()
    assert hashlib.sha256(body).hexdigest() == te["sha256"]
    full = json.loads(body)["signatures"]["serving_default"]
    assert full[: len(sig["worst"])] == sig["worst"] and len(full) == sig["tensors"] - sig["exact"]
    # the default recipe keeps all but the bank convs float: the int8 convs are the banks, which no part covers
    convs = [t for t in full if t["op"] == "CONV_2D" and t["kind"] == "intermediate"]
    assert {t["part"] for t in convs if t["quantized"]} == {None}
    floats = {t["part"] for t in convs if not t["quantized"]}
    assert floats and floats <= set(FP32_PARTS)
    assert sig["int8_parts"] == {} and sig["worst_int8_snr_db"] == min(t["snr_db"] for t in full if t["quantized"])


def test_the_field_round_trips_and_passes_the_shipped_schema(art, tmp_path):
    data = C.read_card_json(art["dir"])
    jsonschema.validate(data, json.loads(C.SCHEMA_FILE.read_text()))
    card = C.parse_card(data)
    assert isinstance(card.tensor_errors, C.TensorErrorReport)
    assert isinstance(card.tensor_errors.signatures["serving_default"].worst[0], C.TensorError)
    assert card.to_dict() == data


@pytest.mark.parametrize("path, value, message", [
    (("signatures", "serving_default", "worst", 0, "snr_db"), "low", "worst[0].snr_db: expected number or null"),
    (("metric",), "mse", "tensor_errors.metric: 'mse' is not one of snr_db"),
    (("signatures",), [], "tensor_errors.signatures: expected an object"),
])
def test_a_broken_field_is_refused_in_one_line(art, tmp_path, path, value, message):
    data = C.read_card_json(art["dir"])
    node = data["tensor_errors"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    (tmp_path / C.CARD_FILE).write_text(json.dumps(data))
    assert message in one_line_error(run_cli("validate", tmp_path, "--dataset", "set5"))


def test_validate_and_convert_show_the_worst_tensors(art):
    card = C.load_card(art["dir"])
    worst = card.tensor_errors.signatures["serving_default"].worst[0]
    r = run_cli("validate", art["dir"], "--dataset", "set5", "--limit", "1", "--no-reference", "--quiet")
    assert r.returncode == 0, r.stderr[-600:]
    table = r.stdout[r.stdout.index("INT8 per-tensor error"):].splitlines()
    head = next(i for i, line in enumerate(table) if line.split()[:2] == ["SNR", "dB"])
    first = table[head + 1]
    assert f"{worst.snr_db:.1f}" in first and short_tensor_name(worst.name) in first, table[: head + 2]
    rows = [line for line in table[head + 1:] if line.strip() and line.split()[0].replace(".", "").isdigit()]
    assert len(rows) == len(card.tensor_errors.signatures["serving_default"].worst)
    r = run_cli("validate", art["dir"], "--dataset", "set5", "--limit", "1", "--no-reference", "--quiet", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["tensor_errors"] == card.to_dict()["tensor_errors"]
    assert "int8 per-tensor error" in art["convert_stdout"] and f"worst {worst.snr_db:.1f} dB" in art["convert_stdout"]


def test_validate_on_a_device_shows_the_worst_tensors_too(art, tmp_path):
    """`validate --remote-python` (the device path, torch-free venv with tflite-runtime): the same table and JSON
    field as on the host, from the card."""
    device_python = Path(__file__).resolve().parents[1] / ".venv-runtime" / "bin" / "python"
    assert device_python.exists(), f"{device_python} is missing: run `make setup-runtime` (the device environment)"
    card = C.load_card(art["dir"])
    worst = card.tensor_errors.signatures["serving_default"].worst[0]
    r = run_cli("validate", art["dir"], "--remote-python", device_python, "--remote-tmp", tmp_path)
    assert r.returncode == 0, r.stderr[-600:]
    assert "INT8 per-tensor error" in r.stdout and short_tensor_name(worst.name) in r.stdout, r.stdout[-1500:]
    r = run_cli("validate", art["dir"], "--remote-python", device_python, "--remote-tmp", tmp_path, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["tensor_errors"] == card.to_dict()["tensor_errors"]
    assert list(tmp_path.iterdir()) == []


def test_short_names_keep_the_module_path():
    name = ("nsr_edge.models.WDSR/torch.nn.modules.container.Sequential_body/nsr_edge.models.ResidualBlock_2/"
            "torch.nn.modules.container.Sequential_body/nsr_edge.deploy.OutputMixingConv_2;1;;other")
    assert short_tensor_name(name) == "body.2.body.2 (OutputMixingConv);1"
    assert short_tensor_name("serving_default_output_0_output") == "serving_default_output_0_output"


# ---- the numbers themselves, on flatbuffers made here


@pytest.fixture(scope="module")
def graphs():
    """The tiny model's float .tflite, real tiles, and INT8 files calibrated well (real tiles) and badly (the same
    tiles scaled by 0.05: activation ranges ~20x too small, so real inputs clip)."""
    deploy = to_deploy(_model(), "output-mix")
    fp32 = L.convert_fp32(deploy, torch.rand(1, 3, TILE, TILE))
    tiles = helpers.real_tiles(TILE, 8)
    rx = L.fp32_regexes(deploy, get_recipe("int8-ptq").fp32_parts)
    good, _ = L.quantize_aeq(fp32, tiles, rx)
    bad, _ = L.quantize_aeq(fp32, tiles * 0.05, rx)
    lean, _ = L.quantize_aeq(fp32, tiles, L.fp32_regexes(deploy, ("routing",)))  # only the routing heads float
    return {"fp32": fp32, "tiles": tiles, "good": good, "bad": bad, "lean": lean,
            "parts": L.fp32_regexes(deploy, FP32_PARTS)}


def _output_mse(fp32: bytes, quantized: bytes, tiles) -> float:
    """Mean over tiles of the output MSE, quantized vs float, both run here on LiteRT's builtin kernels."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    outs = []
    for data in (fp32, quantized):
        it = Interpreter(model_content=data,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        run = it.get_signature_runner()
        outs.append([next(iter(run(args_0=t[None]).values())) for t in tiles])
    return float(np.mean([np.mean((q.astype(np.float64) - f) ** 2) for f, q in zip(*outs, strict=True)]))


def test_output_error_equals_an_independent_computation(graphs):
    report, body = TE.tensor_errors(graphs["fp32"], graphs["good"], TE.tile_samples(graphs["fp32"], graphs["tiles"]),
                                    graphs["parts"], "test tiles")
    sig = report.signatures["serving_default"]
    full = json.loads(body)["signatures"]["serving_default"]
    (out,) = [t for t in full if t["kind"] == "output"]
    want = _output_mse(graphs["fp32"], graphs["good"], graphs["tiles"])
    assert want > 0 and out["mse"] == pytest.approx(want, rel=1e-6)
    assert sig.output_snr_db == out["snr_db"] and report.samples == len(graphs["tiles"])


def test_bad_calibration_shows_as_larger_errors(graphs):
    samples = TE.tile_samples(graphs["fp32"], graphs["tiles"])
    good, _ = TE.tensor_errors(graphs["fp32"], graphs["good"], samples, graphs["parts"], "test tiles")
    bad, _ = TE.tensor_errors(graphs["fp32"], graphs["bad"], samples, graphs["parts"], "test tiles")
    g, b = good.signatures["serving_default"], bad.signatures["serving_default"]
    assert b.output_snr_db < g.output_snr_db - 6 and b.worst_snr_db < g.worst_snr_db - 6, (g, b)


def test_samples_are_an_evenly_spaced_subset():
    assert TE.subset({"s": list(range(64))}, 16)["s"] == list(range(0, 64, 4))
    assert TE.subset({"s": list(range(5))}, 16)["s"] == list(range(5))
    assert len(TE.subset({"s": list(range(20))}, 16)["s"]) <= 16


def test_int8_tensors_are_attributed_to_the_parts_that_would_keep_them_float(graphs):
    """With only the routing heads float, the image-side convs, the residual adds and the output ops are int8: each
    is named with the part whose --fp32-parts entry keeps it float; with the default recipe none is left."""
    samples = TE.tile_samples(graphs["fp32"], graphs["tiles"])
    lean, body = TE.tensor_errors(graphs["fp32"], graphs["lean"], samples, graphs["parts"], "test tiles")
    sig = lean.signatures["serving_default"]
    assert {"first", "last", "skip", "residual"} <= set(sig.int8_parts) <= set(FP32_PARTS) - {"routing"}
    full = json.loads(body)["signatures"]["serving_default"]
    for part, worst in sig.int8_parts.items():
        assert worst == min(t["snr_db"] for t in full if t["quantized"] and t["part"] == part)
    good, _ = TE.tensor_errors(graphs["fp32"], graphs["good"], samples, graphs["parts"], "test tiles")
    assert good.signatures["serving_default"].int8_parts == {}


def test_heads_part_keeps_only_the_routing_heads_float(graphs):
    """`heads` (the int8-ptq-mix recipe's part) names the routing heads' tensors only: a strict subset of `routing`,
    which also keeps the gate multiply and bank sums of output mixing float."""
    import re

    from ai_edge_litert.interpreter import Interpreter

    names = [t["name"] for t in Interpreter(model_content=graphs["fp32"]).get_tensor_details()]
    heads, routing = (re.compile(graphs["parts"][p]) for p in ("heads", "routing"))
    in_heads = {n for n in names if heads.search(n)}
    in_routing = {n for n in names if routing.search(n)}
    assert in_heads and in_heads < in_routing, (sorted(in_heads)[:5], sorted(in_routing - in_heads)[:5])
