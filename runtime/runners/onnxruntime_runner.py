"""Run an ``onnxruntime`` artifact (``model.onnx``) with ONNX Runtime's CPU execution provider.

Torch-free (ORT takes numpy arrays): this runner works in the device-side environment. One file per method
(`method_file`: ``model.onnx`` is ``forward``, the card's tile). Used through `child.RunnerProcess` like every
runner, so a native abort in ORT becomes a one-line error.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..card import method_file as card_method_file
from ..errors import UserError
from .session import Session


def method_file(method: str) -> str:
    """The file holding ``method`` (the converter writes the same names: `card.method_file`)."""
    return card_method_file("model", ".onnx", method)


class OnnxRuntimeSession(Session):
    kind = "ONNX Runtime"
    session: Any = None

    def _load(self, path: str, method: str) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise UserError(f"running .onnx artifacts needs onnxruntime ({e}); pip install onnxruntime") from None
        file = Path(path)
        if method != "forward":
            file = file.parent / method_file(method)
        if not file.is_file():
            raise UserError(f"{file}: no such ONNX file (method {method!r})")
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(0, self.threads)  # 0: ORT's default (all cores)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types for malformed models
            raise UserError(load_error(file, str(e), ort.__version__)) from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(f"{file}: {len(inputs)} inputs / {len(outputs)} outputs, expected one image in and one out")
        shape = inputs[0].shape
        if not all(isinstance(s, int) for s in shape):
            raise UserError(f"{file}: input shape {shape} is not fixed; nsr-edge writes fixed-tile graphs")
        self._input = inputs[0].name
        self.input_shape = tuple(int(s) for s in shape)
        self.output_shape = tuple(int(s) if isinstance(s, int) else -1 for s in outputs[0].shape)

    def _execute(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input: x})[0]

    def _release(self) -> None:
        self.session = None


def load_error(file: Path, message: str, version: str) -> str:
    """One line for a model ORT refuses: an opset it does not support is named with what it supports (the raw
    message is a C++ signature and a paragraph)."""
    opset = re.search(r"Opset (\d+) is under development", message)
    if opset:
        upto = re.search(r"support for domain (\S+) is till opset (\d+)", message)
        known = f" (it supports {upto.group(1)} up to opset {upto.group(2)})" if upto else ""
        return (f"{file}: ONNX opset {opset.group(1)} is not supported by the installed onnxruntime {version}{known}; "
                "convert again with an opset it supports, or upgrade it (pip install -U onnxruntime)")
    opset = re.search(r"[Oo]pset.*?(\d+).*?not supported|Unsupported model IR version: (\d+)[^.\n]*", message)
    first = message.strip().splitlines()[0] if message.strip() else "no message"
    first = re.sub(r"/onnxruntime_src/\S+ [^)]*\) ", "", first)  # drop the C++ location and signature
    if opset:
        return (f"{file}: the installed onnxruntime {version} cannot load it ({first[:200]}); upgrade it "
                "(pip install -U onnxruntime) or convert again")
    return f"{file}: not a loadable ONNX model ({first[:200]})"


open_session = OnnxRuntimeSession
