"""Run a ``litert`` artifact (``model.tflite``) with the LiteRT interpreter (XNNPACK delegate applied by default).

Torch-free: ``ai_edge_litert.interpreter`` is imported lazily, and ``tflite_runtime.interpreter`` (same API, older
kernels) is used where ai-edge-litert is not installed. One file per method (`method_file`: ``model.tflite`` is
``forward``, the card's tile, ``model_<method>.tflite`` each extra tile), like the ONNX Runtime runner. Inputs and
outputs are NCHW float32 at the session boundary; an int8 model I/O is quantized/dequantized here with the scale and
zero point the interpreter reports (outside the timed call).

A hard-routed artifact (``litert --strategy hard``: one ``model.tflite`` with one signature per program, and the
card's ``target_extra.dispatch`` plan) opens as `LiteRTDispatchSession`: the plan runs in the one dispatch loop
(`runtime.dispatch`), each program call is the signature's runner; values are NHWC float32 numpy arrays (the plan's
``channels_last`` layout).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..card import CARD_FILE, read_card_json
from ..dispatch import DispatchLoop, RoutedSession, check_plan, from_layout, to_layout
from ..errors import UserError
from .session import Session


def method_file(method: str) -> str:
    """The file holding ``method`` (the converter writes the same names)."""
    return "model.tflite" if method == "forward" else f"model_{method}.tflite"


def runtime_name(interpreter: Any = None) -> str:
    """``ai-edge-litert X`` or ``tflite-runtime X``: the package whose interpreter runs (for messages and records)."""
    from importlib import metadata

    module = getattr(interpreter or interpreter_class(), "__module__", "") or ""
    dist = "tflite-runtime" if module.startswith("tflite_runtime") else "ai-edge-litert"
    try:
        return f"{dist} {metadata.version(dist)}"
    except metadata.PackageNotFoundError:
        return dist


def invoke_error(file: Path | str, e: Exception) -> UserError:
    """One line for an interpreter that fails inside ``invoke`` (or while allocating): an op its kernels do not
    have for these types is named, with what to install. tflite-runtime 2.14 has no int8 DIV, for example:
    ``Div only supports FLOAT32, INT32 and quantized UINT8 now, got 9.Node number 8 (DIV) failed to invoke.``"""
    text = " ".join(str(e).split())
    node = re.search(r"Node number (\d+) \((\w+)\) failed to (invoke|prepare)", text)
    missing = re.search(r"Didn't find op for builtin opcode '(\w+)' version '(\d+)'", text)
    if missing:
        op, what = missing.group(1), f"op {missing.group(1)} version {missing.group(2)}"
    elif node:
        op, what = node.group(2), f"op {node.group(2)} (node {node.group(1)})"
    else:
        return UserError(f"{file}: the LiteRT interpreter failed ({runtime_name()}): {text[:200]}")
    detail = text.split("Node number")[0].strip().rstrip(".")[:160]
    return UserError(f"{file}: {what} is not supported by the installed {runtime_name()}"
                     + (f" ({detail})" if detail and not missing else "")
                     + f": run it with ai-edge-litert (pip install ai-edge-litert), or convert "
                       f"again without {op} (e.g. keep that part float with --fp32-parts)")


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
        self.interpreter = _open(interpreter, file, self.threads)
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
        try:
            self.interpreter.invoke()
        except RuntimeError as e:  # an op the installed kernels lack for these types (tflite-runtime: int8 DIV)
            raise invoke_error(self.path if self.method_name == "forward" else method_file(self.method_name), e) from None
        return self.interpreter.get_tensor(self._out["index"])

    def _finish(self, out: np.ndarray) -> np.ndarray:
        if self._out["dtype"] == np.float32:
            return np.asarray(out, dtype=np.float32)
        scale, zero = self._out["quantization"]
        return ((out.astype(np.float32) - zero) * scale).astype(np.float32)

    def _release(self) -> None:
        self.interpreter = None


def _open(interpreter: Any, file: Path, threads: int, allocate: bool = True) -> Any:
    try:
        interp = interpreter(model_path=str(file), num_threads=threads if threads > 0 else None)
        if allocate:
            interp.allocate_tensors()
    except (ValueError, RuntimeError) as e:  # the interpreter's errors for malformed or unsupported models
        if re.search(r"Didn't find op for builtin opcode|failed to prepare", str(e)):
            raise invoke_error(file, e) from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{file}: not a loadable LiteRT model ({first[:160]})") from None
    return interp


class LiteRTDispatchSession(RoutedSession, Session):
    """A hard-routed ``.tflite``: one signature per program, orchestrated by the card's plan."""

    kind = "LiteRT"
    interpreter: Any = None

    def _load(self, path: str, method: str) -> None:
        card, plan = self._open_plan(path, method, "--target litert --strategy hard")
        self.interpreter = _open(interpreter_class(), Path(path), self.threads, allocate=False)
        signatures = self.interpreter.get_signature_list()
        check_plan(plan, signatures, where=path)

        def resolve(name: str) -> Any:
            runner = self.interpreter.get_signature_runner(name)
            order = lambda names: sorted(names, key=lambda n: int(n.rsplit("_", 1)[-1]))  # noqa: E731 - args_0, ...
            return runner, order(signatures[name]["inputs"]), order(signatures[name]["outputs"])

        def call(program: Any, inputs: list[np.ndarray]) -> list[np.ndarray]:
            runner, names, outputs = program
            try:
                result = runner(**dict(zip(names, inputs)))  # copies of the outputs
            except RuntimeError as e:
                raise invoke_error(path, e) from None
            return [result[n] for n in outputs]

        self.loop = DispatchLoop(plan, call, resolve=resolve)
        self._start(card)

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        return to_layout(x, self.layout)

    def _finish(self, out: np.ndarray) -> np.ndarray:
        self._keep_routes()
        return from_layout(out, self.layout)

    def _release(self) -> None:
        self.loop = None
        self.interpreter = None


def _has_plan(path: str) -> bool:
    card = Path(path).parent / CARD_FILE
    if not card.is_file():
        return False
    try:
        return "dispatch" in (read_card_json(card.parent).get("target_extra") or {})
    except (UserError, OSError, ValueError, AttributeError):
        return False  # an unreadable card: the plain session's own errors say what is wrong with the file


def open_session(path: str, method: str = "forward", threads: int = 1, etdump: str | None = None,
                 debug_buffer: str | None = None, debug_buffer_size: int = 0) -> Session:
    """`LiteRTDispatchSession` where the card beside ``path`` has a dispatch plan, else `LiteRTSession`."""
    cls = LiteRTDispatchSession if _has_plan(path) else LiteRTSession
    return cls(path, method, threads, etdump, debug_buffer, debug_buffer_size)


__all__ = ["LiteRTSession", "LiteRTDispatchSession", "open_session", "method_file", "interpreter_class",
           "runtime_name", "invoke_error"]
