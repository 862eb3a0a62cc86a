"""Run a Core ML artifact: a ``model.mlpackage`` folder (what `nsr-edge convert --target coreml` writes), its zip
(``model.mlpackage.zip``, the earlier artifact form; still read), or an ExecuTorch ``.pte`` with a Core ML delegate
payload.

Two backends, chosen by ``NSR_EDGE_COREML_BACKEND`` (``auto`` by default):
- ``coreml`` (macOS only): real Core ML prediction, ``coremltools.models.MLModel(path, compute_units=...)``
  ``.predict({"input": tile})``. Compute units from ``NSR_EDGE_COREML_COMPUTE_UNITS``: ``ALL`` (default),
  ``CPU_AND_NE``, ``CPU_AND_GPU``, ``CPU_ONLY``. Measures the device's kernels, placement and latency.
- ``mil`` (any OS, numpy only): nsr-edge's MIL reference evaluator (`nsr_edge.runtime.coreml_mil`). Verifies the
  graph, the stored weights, scales and shapes; it cannot measure Apple's kernel arithmetic or latency, so
  ``time_once`` refuses (profiling a Core ML artifact needs a Mac).
``auto`` is ``coreml`` on macOS with coremltools installed, ``mil`` elsewhere.
"""

from __future__ import annotations

import os
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..card import CardError, method_tile
from ..errors import UserError
from .session import Session

COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")


def backend_name() -> str:
    choice = os.environ.get("NSR_EDGE_COREML_BACKEND", "auto").lower()
    if choice not in ("auto", "coreml", "mil"):
        raise UserError(f"NSR_EDGE_COREML_BACKEND must be auto, coreml or mil, not {choice!r}")
    if choice == "auto":
        return "coreml" if sys.platform == "darwin" and _has_coremltools() else "mil"
    if choice == "coreml" and sys.platform != "darwin":
        raise UserError("Core ML prediction runs only on macOS; use NSR_EDGE_COREML_BACKEND=mil on this machine")
    return choice


def _has_coremltools() -> bool:
    import importlib.util

    return importlib.util.find_spec("coremltools") is not None


def _method_tile(method: str) -> int | None:
    """The square tile a method serves (one Core ML function takes every tile as an enumerated shape)."""
    try:
        tile = method_tile(method)
    except CardError:
        tile = (0, 1)
    if tile is not None and tile[0] != tile[1]:
        raise UserError(f"Core ML artifacts have methods 'forward' and 'forward_TxT', not {method!r}")
    return None if tile is None else tile[0]


# ExecuTorch's Core ML backend flattens the package folder into its payload; the payload ends with the folder's JSON
# index stored byte-reversed (see `coreml_mil.unflatten_directory`), so its last bytes are these.
_FLAT_END = b'{"nodes"'[::-1]


class CoreMLSession(Session):
    kind = "Core ML"
    _tmp: tempfile.TemporaryDirectory | None = None
    _evaluator: Any = None
    _model: Any = None

    def _load(self, path: str, method: str) -> None:
        self.backend = backend_name()
        if self.backend == "mil":
            self.timing_refusal = ("Core ML latency can only be measured on macOS (this machine runs the MIL reference "
                                   "evaluator, whose speed says nothing about the device)")
        tile = _method_tile(method)
        if self.backend == "mil":
            from ..coreml_mil import MilEvaluator, coreml_payloads, load_artifact

            self.package = load_artifact(self.path)  # a folder, its zip or a .pte (MilError, a UserError, otherwise)
            function = None
            if method in self.package.functions:  # ExecuTorch multi-method payload: one function per method
                function, tile = method, None
            elif tile is not None and self.path.suffix == ".pte":  # one payload per method: pick it by shape
                for candidate in coreml_payloads(self.path.read_bytes()):
                    if tuple(candidate.inputs[0].shape[-2:]) == (tile, tile):
                        self.package, tile = candidate, None
            self._evaluator = MilEvaluator(self.package, function)
            self._function = self._evaluator.function.name
            feature = self.package.inputs_of(self._function)[0]
        else:
            self._open_coreml()
            feature = self._feature
        self.input_name = feature.name if hasattr(feature, "name") else "input"
        shape = tuple(int(s) for s in feature.shape)
        if tile is not None:
            allowed = feature.enumerated_shapes or (shape,)
            match = [s for s in allowed if s[-1] == tile and s[-2] == tile]
            if not match:
                raise UserError(f"{path}: no input shape for tile {tile}")
            shape = tuple(match[0])
        self.input_shape = shape
        self.output_name = self._output_name()
        # Enumerated shapes leave the declared output dims open: one run on zeros gives the method's output shape.
        self.output_shape = tuple(self._execute(np.zeros(shape, dtype=np.float32)).shape)

    # -- macOS: real Core ML
    def _open_coreml(self) -> None:
        import coremltools as ct

        from ..coreml_mil import load_artifact

        units = os.environ.get("NSR_EDGE_COREML_COMPUTE_UNITS", "ALL").upper()
        if units not in COMPUTE_UNITS:
            raise UserError(f"NSR_EDGE_COREML_COMPUTE_UNITS must be one of {', '.join(COMPUTE_UNITS)}")
        package_dir = self._package_dir()
        self.compute_units = units
        self._model = ct.models.MLModel(str(package_dir), compute_units=getattr(ct.ComputeUnit, units))
        self._feature = load_artifact(package_dir).inputs[0]  # shapes from the package description

    def _package_dir(self) -> Path:
        if self.path.is_dir():
            return self.path
        if zipfile.is_zipfile(self.path):
            self._tmp = tempfile.TemporaryDirectory(prefix="nsr-edge-coreml-")
            with zipfile.ZipFile(self.path) as zf:
                zf.extractall(self._tmp.name)
            found = sorted(Path(self._tmp.name).glob("*.mlpackage"))
            if found:
                return found[0]
        from ..coreml_mil import unflatten_directory

        data = self.path.read_bytes()
        hit = data.find(_FLAT_END)
        if hit >= 0:  # an ExecuTorch .pte: run its (first) Core ML payload directly with Core ML
            files = unflatten_directory(data, hit + len(_FLAT_END))
            self._tmp = tempfile.TemporaryDirectory(prefix="nsr-edge-coreml-")
            for name, blob in files.items():
                target = Path(self._tmp.name) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(blob)
            found = sorted(Path(self._tmp.name).glob("*.mlpackage"))
            if found:
                return found[0]
        raise UserError(f"{self.path}: no Core ML package inside (a .mlpackage, its zip, or a Core ML .pte)")

    def _output_name(self) -> str:
        if self.backend == "mil":
            return self.package.outputs_of(self._function)[0].name
        return self._model.get_spec().description.output[0].name

    def _execute(self, x: np.ndarray) -> np.ndarray:
        if self.backend == "mil":
            return self._evaluator.run({self.input_name: x})[self.output_name]
        return np.asarray(self._model.predict({self.input_name: x})[self.output_name], dtype=np.float32)

    def _release(self) -> None:
        self._evaluator = None
        self._model = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


open_session = CoreMLSession
