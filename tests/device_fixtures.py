"""Build the artifacts the device-side tests run (`make device-fixtures`; tests/runtime/test_device_env.py).

Runs in the full venv (torch, the converters): ``python tests/device_fixtures.py OUT``. Writes, at a small tile:

- ``litert-fp32``, ``litert-int8``, ``ort-fp32``, ``ort-int8``: ``nsr_sr_x2`` converted by `convert` (the same
  pipeline as the CLI; each folder holds the artifact, ``model.json`` and ``reference.npz``);
- ``bad/``: inputs the device runtime must refuse in one line: ``int8-div`` (a ``.tflite`` with an int8 DIV, an op
  tflite-runtime 2.14 lacks; AEQ writes one where a softmax over a non-last axis is decomposed) and ``opset-99`` (an
  ``.onnx`` whose default-domain opset no ONNX Runtime knows), each with a card that vouches for its bytes.

The device venv (numpy<2, tflite-runtime, onnxruntime, no torch) then validates and profiles them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

TILE = 32
CALIBRATION_TILES = 8
ARTIFACTS = {  # folder: (target, recipe)
    "litert-fp32": ("litert", "fp32"),
    "litert-int8": ("litert", "int8-ptq"),
    "ort-fp32": ("onnxruntime", "fp32"),
    "ort-int8": ("onnxruntime", "int8-ptq"),
}


def _vouched(source: Path, folder: Path, name: str, data: bytes) -> None:
    """``folder``: ``data`` as the artifact ``name`` of ``source``'s card (size and SHA-256 updated) beside the
    source's reference outputs: what fails is the runtime loading the file."""
    card = json.loads((source / "model.json").read_text())
    folder.mkdir(parents=True)
    (folder / name).write_bytes(data)
    shutil.copyfile(source / card["reference_outputs"]["file"], folder / card["reference_outputs"]["file"])
    card["artifact"].update(file=name, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (folder / "model.json").write_text(json.dumps(card, indent=2) + "\n")


def int8_div_tflite() -> bytes:
    """A small int8 ``.tflite`` holding DIV (softmax over channels, decomposed by litert-torch, fully int8 by AEQ)."""
    import numpy as np
    import torch
    from nsr_edge.converters.litert import convert_fp32, op_summary, quantize_aeq

    class ChannelSoftmax(torch.nn.Module):
        def forward(self, x):  # a softmax over a non-last axis: exp / sum(exp), the DIV stays
            e = torch.exp(x - x.amax(dim=1, keepdim=True))
            return e / e.sum(dim=1, keepdim=True)

    x = torch.rand(1, 3, TILE, TILE, generator=torch.Generator().manual_seed(0))
    fp32 = convert_fp32(ChannelSoftmax().eval(), x)
    tiles = np.random.default_rng(0).random((4, 3, TILE, TILE), dtype=np.float32)
    data, _ = quantize_aeq(fp32, tiles, {})
    ops = op_summary(data)
    assert ops["int8_ops"].get("DIV"), f"no int8 DIV in the test model: {ops['int8_ops']}"
    return data


def opset99_onnx(model: Path) -> bytes:
    import onnx

    m = onnx.load(str(model))
    for op in m.opset_import:
        if op.domain in ("", "ai.onnx"):
            op.version = 99
    return m.SerializeToString()


def main(out: str) -> None:
    from nsr_edge.converters.pipeline import ConvertOptions, convert

    root = Path(out)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, (target, recipe) in ARTIFACTS.items():
        opts = ConvertOptions("nsr_sr_x2", target, recipe, tile=TILE, calibration_tiles=CALIBRATION_TILES,
                              progress=False)
        _, card = convert(opts, str(tmp / name))
        assert card.reference_outputs is not None, f"{name}: no reference outputs stored"
        print(f"{name}: {card.artifact.file} {card.artifact.bytes / 1e3:.0f} kB, reference {card.reference_outputs.tiles} tiles")
    _vouched(tmp / "litert-fp32", tmp / "bad" / "int8-div", "model.tflite", int8_div_tflite())
    _vouched(tmp / "ort-fp32", tmp / "bad" / "opset-99", "model.onnx", opset99_onnx(tmp / "ort-fp32" / "model.onnx"))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "build/device-fixtures")
