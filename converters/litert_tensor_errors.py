"""INT8 LiteRT: per-tensor error of the quantized ``.tflite`` against its float one, from ai-edge-quantizer's own
validation (``Quantizer.validate``), for the model card's ``tensor_errors`` (`card.TensorErrorReport`) and
``nsr-edge validate``.

AEQ runs both models on the same inputs with every tensor preserved and compares each tensor present in both by name
(``model_validator.compare_model``): MSE and SNR (float tensor power / squared error) per input, averaged over the
inputs. It splits them into input, output, constant and intermediate tensors per signature. Both models run on
LiteRT's builtin kernels (``use_xnnpack=False``): every op then writes its output tensor, which an XNNPACK partition
need not do. The inputs are real calibration tiles (a fixed, evenly spaced subset: ``SAMPLES``).

What we add: the ranking (lowest SNR first; tensors equal in both models are counted, not ranked), the op behind each
tensor, whether the artifact stores it as integers, and which recipe ``fp32_parts`` entry would keep its op float
(the same ``no_quantize`` regexes the converter uses, matched on AEQ's op scope: the op's output names joined by
``;``, plus ``;``). The card keeps the worst ``TOP`` per signature; ``FILE`` beside the artifact has every tensor.
"""

from __future__ import annotations

import json
import math
import statistics
import warnings
from dataclasses import asdict
from typing import Any

from nsr_edge.runtime.card import SignatureTensorErrors, TensorError, TensorErrorReport

SAMPLES = 16  # calibration inputs per signature run through both models (two interpreters each: seconds)
TOP = 10  # tensors per signature in the card
FILE = "tensor_errors.json"
KINDS = ("input", "output", "constant", "intermediate")  # AEQ's SingleSignatureComparisonResult fields


def subset(samples: dict[str, list[Any]], n: int = SAMPLES) -> dict[str, list[Any]]:
    """At most ``n`` inputs per signature, evenly spaced (the calibration tiles are in data set order)."""
    return {k: v[:: max(1, math.ceil(len(v) / n))][:n] for k, v in samples.items()}


def tile_samples(fp32: bytes, tiles: Any) -> dict[str, list[dict[str, Any]]]:
    """The single signature of a one-graph model fed with tiles (N, C, T, T), as `litert.quantize_aeq` calibrates."""
    (key,) = _graph(fp32)
    return {key: [{"args_0": t[None].astype("float32")} for t in tiles]}


def _graph(data: bytes) -> dict[str, dict[str, Any]]:
    """Signature -> {"producer": name -> (op, scope), "reader": name -> [(op, scope), ...], "dtype": name -> type} of
    its subgraph, read from the flatbuffer (the interpreter's op details cover subgraph 0 only)."""
    from ai_edge_litert import schema_py_generated as schema

    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)

    def text(v: Any) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    out = {}
    for sig in model.signatureDefs or []:
        sg = model.subgraphs[sig.subgraphIndex]
        names = [text(t.name) for t in sg.tensors]
        producer: dict[str, tuple[str, str]] = {}
        reader: dict[str, list[tuple[str, str]]] = {}
        for op in sg.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            kind = op_names.get(max(int(code.builtinCode or 0), int(code.deprecatedBuiltinCode or 0)), "?")
            outs = [names[i] for i in op.outputs if i >= 0]
            scope = ";".join(outs) + ";"  # AEQ's op scope (tfl_flatbuffer_utils.get_op_scope)
            for n in outs:
                producer[n] = (kind, scope)
            for i in op.inputs:
                if i >= 0:
                    reader.setdefault(names[i], []).append((kind, scope))
        out[text(sig.signatureKey)] = {"producer": producer, "reader": reader,
                                       "dtype": {n: int(t.type) for n, t in zip(names, sg.tensors)}}
    return out


def _part(scopes: list[str], parts: dict[str, str]) -> str | None:
    """The part whose regex matches the op scope(s); for a constant read by several ops (the converter shares equal
    constants), only when every reader is in that same part."""
    import re

    found = {next((p for p, rx in parts.items() if re.search(rx, scope)), None) for scope in scopes}
    return found.pop() if len(found) == 1 else None


def _db(snr: float) -> float | None:
    return 10.0 * math.log10(snr) if snr > 0 and math.isfinite(snr) else None


def tensor_errors(fp32: bytes, quantized: bytes, samples: dict[str, list[dict[str, Any]]], parts: dict[str, str],
                  data: str, top: int = TOP) -> tuple[TensorErrorReport, bytes]:
    """AEQ's validation of ``quantized`` against ``fp32`` on ``samples`` (signature -> list of {input name: array},
    at most `SAMPLES` used); ``parts``: fp32 part -> the converter's ``no_quantize`` regex for it (every part, not
    only the recipe's). Returns the card's report and the full list (`FILE`'s bytes, its SHA-256 in the report)."""
    import hashlib
    from importlib import metadata

    from ai_edge_quantizer import quantizer
    from ai_edge_quantizer.utils import validation_utils as vu

    m = vu.ValidationErrorMetric
    samples = subset(samples)
    with warnings.catch_warnings():  # the interpreter warns that it preserves all tensors: that is the point here
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
        result = quantizer.Quantizer(bytearray(fp32), previous_quantized_model=bytearray(quantized)).validate(
            samples, error_metrics=[m.MSE, m.SNR], use_xnnpack=False, num_threads=1)
    graph_f, graph_q = _graph(fp32), _graph(quantized)
    signatures, full = {}, {}
    for key in result.available_signature_keys():
        res = result.get_signature_comparison_result(key)
        gf, gq = graph_f[key], graph_q[key]
        rows, total, exact = [], 0, 0
        for kind in KINDS:
            for name, v in getattr(res, f"{kind}_tensors").items():
                total += 1
                if v["mse"] == 0.0:
                    exact += 1
                    continue
                if kind == "constant":
                    ops = gf["reader"].get(name, [])
                else:
                    ops = [gf["producer"][name]] if name in gf["producer"] else []
                rows.append(TensorError(name=name, kind=kind, quantized=gq["dtype"].get(name) != gf["dtype"].get(name),
                                        mse=float(v["mse"]), op=ops[0][0] if ops else None, snr_db=_db(v["snr"]),
                                        part=_part([scope for _, scope in ops], parts)))
        rows.sort(key=lambda t: (t.snr_db is not None, t.snr_db or 0.0, t.name))  # no-signal first, then lowest SNR
        ranked = [t.snr_db for t in rows if t.snr_db is not None]
        outs = [t.snr_db for t in rows if t.kind == "output" and t.snr_db is not None]
        int8 = [t for t in rows if t.quantized]
        by_part: dict[str, float | None] = {}
        for t in int8:  # worst first: the first tensor seen per part is its lowest SNR
            if t.part:
                by_part.setdefault(t.part, t.snr_db)
        signatures[key] = SignatureTensorErrors(
            tensors=total, exact=exact, median_snr_db=statistics.median(ranked) if ranked else None,
            worst_snr_db=min(ranked) if ranked else None, output_snr_db=min(outs) if outs else None,
            worst_int8_snr_db=int8[0].snr_db if int8 else None, int8_parts=by_part, worst=rows[:top])
        full[key] = [asdict(t) for t in rows]
    tool = f"ai-edge-quantizer {metadata.version('ai-edge-quantizer')}"
    body = json.dumps({"tool": tool, "metric": "snr_db", "data": data, "signatures": full}, indent=1,
                      sort_keys=True).encode() + b"\n"
    n = max((len(v) for v in samples.values()), default=0)
    report = TensorErrorReport(
        tool=tool, metric="snr_db", samples=n, data=data, top=top, signatures=signatures, file=FILE,
        kernels="LiteRT builtin kernels (no XNNPACK: every intermediate tensor written), 1 thread",
        sha256=hashlib.sha256(body).hexdigest())
    return report, body


__all__ = ["SAMPLES", "TOP", "FILE", "subset", "tile_samples", "tensor_errors"]
