"""Run a ``litert`` artifact (``model.tflite``) with the LiteRT interpreter (XNNPACK delegate applied by default).

Torch-free: ``ai_edge_litert.interpreter`` is imported lazily, and ``tflite_runtime.interpreter`` (same API, older
kernels) is used where ai-edge-litert is not installed. One file per method (`method_file`: ``model.tflite`` is
``forward``, the card's tile, ``model_<method>.tflite`` each extra tile), like the ONNX Runtime runner. Inputs and
outputs are NCHW float32 at the session boundary; an int8 model I/O is quantized/dequantized here with the scale and
zero point the interpreter reports (outside the timed call).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from .session import Session


def method_file(method: str) -> str:
    """The file holding ``method`` (the converter writes the same names)."""
    return "model.tflite" if method == "forward" else f"model_{method}.tflite"


def interpreter_class() -> Any:
    """LiteRT's ``Interpreter`` (ai-edge-litert), else tflite-runtime's; one line with the install hint."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise UserError("running .tflite artifacts needs ai-edge-litert (pip install ai-edge-litert) or "
                            "tflite-runtime (pip install tflite-runtime 'numpy<2')") from None
    return Interpreter


class LiteRTSession(Session):
    kind = "LiteRT"
    interpreter: Any = None

    def _load(self, path: str, method: str) -> None:
        interpreter = interpreter_class()
        file = Path(path)
        if method != "forward":
            file = file.parent / method_file(method)
        if not file.is_file():
            raise UserError(f"{file}: no such LiteRT file (method {method!r})")
        try:
            self.interpreter = interpreter(model_path=str(file), num_threads=self.threads if self.threads > 0 else None)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:  # the interpreter's errors for malformed or unsupported models
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{file}: not a loadable LiteRT model ({first[:160]})") from None
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(f"{file}: {len(inputs)} inputs / {len(outputs)} outputs, expected one image in and one out")
        self._in, self._out = inputs[0], outputs[0]
        self.input_shape = tuple(int(s) for s in self._in["shape"])
        self.output_shape = tuple(int(s) for s in self._out["shape"])

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        dtype = self._in["dtype"]
        if dtype == np.float32:
            return x
        scale, zero = self._in["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)

    def _execute(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self._in["index"], x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._out["index"])

    def _finish(self, out: np.ndarray) -> np.ndarray:
        if self._out["dtype"] == np.float32:
            return np.asarray(out, dtype=np.float32)
        scale, zero = self._out["quantization"]
        return ((out.astype(np.float32) - zero) * scale).astype(np.float32)

    def _release(self) -> None:
        self.interpreter = None


open_session = LiteRTSession

__all__ = ["LiteRTSession", "open_session", "method_file", "interpreter_class"]
