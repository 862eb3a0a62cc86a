"""Reference outputs stored beside an artifact: a few real tiles and the FP32 PyTorch model's outputs on them.

``convert`` writes them (``reference.npz``, recorded in the card's ``reference_outputs`` with its SHA-256 and
shapes), so that a device without PyTorch (a phone, a board, the torch-free device venv) can check what its runtime
computes against the model the artifact was converted from (`validate.validate_stored`).

The file is an ``.npz`` with two float32 NCHW arrays, ``inputs`` (N, C, tile, tile) and ``outputs``
(N, C, scale*tile, scale*tile), written by `npz_bytes` byte-reproducibly (fixed member order and dates, stored, no
compression): the same conversion gives the same bytes, as the artifacts do.

numpy only: this module runs on a device.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import UserError

if TYPE_CHECKING:
    from .card import ModelCard

REFERENCE_FILE = "reference.npz"
MEMBERS = ("inputs", "outputs")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date zip can hold: no clock in the file


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` (what `np.load` reads) of ``arrays`` in the given order, byte-reproducible: `np.savez` stamps
    every member with the current time, this writes a fixed date, fixed permissions and no compression."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.create_system = 3  # unix, whatever the writing machine
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def reference_npz(inputs: np.ndarray, outputs: np.ndarray) -> bytes:
    """The bytes of ``reference.npz`` for float32 NCHW ``inputs`` and ``outputs`` (same N)."""
    inputs = np.asarray(inputs, dtype=np.float32)
    outputs = np.asarray(outputs, dtype=np.float32)
    if inputs.ndim != 4 or outputs.ndim != 4 or len(inputs) != len(outputs) or not len(inputs):
        raise ValueError(f"reference outputs need N>0 NCHW inputs and outputs, got {inputs.shape} and {outputs.shape}")
    return npz_bytes({"inputs": inputs, "outputs": outputs})


def load_reference_outputs(artifact_dir: str | os.PathLike, card: "ModelCard") -> tuple[np.ndarray, np.ndarray]:
    """(inputs, outputs) of the artifact folder's stored reference, float32 NCHW, after checking them against the
    card: the file exists, its SHA-256 is the card's, it holds exactly ``inputs`` and ``outputs`` of the recorded
    shapes, and those are the card's ``forward`` input and output tiles. Anything else is one line (`UserError`)."""
    folder = Path(artifact_dir)
    ro = card.reference_outputs
    if ro is None:
        raise UserError(f"{folder}: the model card stores no reference outputs (converted before model card 2.1?); "
                        "convert again with this nsr-edge, or validate where PyTorch is installed")
    name = ro.file
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise UserError(f"{folder}: the card's reference_outputs.file {name!r} is not a file name in the artifact folder")
    path = folder / name
    if not path.is_file():
        raise UserError(f"{path}: the reference outputs the card records are missing; copy {name} with the artifact "
                        "(it belongs to the artifact folder) or convert again")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != ro.sha256:
        raise UserError(f"{path}: SHA-256 {digest[:12]}... is not the card's reference_outputs.sha256 "
                        f"{str(ro.sha256)[:12]}...: these are not the reference outputs of this artifact; convert again")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            if sorted(npz.files) != sorted(MEMBERS):
                raise UserError(f"{path}: holds {sorted(npz.files)}, expected exactly {list(MEMBERS)}")
            x, y = npz["inputs"], npz["outputs"]
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a digest-matching file numpy cannot read: a bad writer, say so
        raise UserError(f"{path}: not a readable .npz ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})") from None
    for arr, what, want in ((x, "inputs", ro.input_shape), (y, "outputs", ro.output_shape)):
        if arr.dtype != np.float32 or arr.ndim != 4:
            raise UserError(f"{path}: {what} is {arr.dtype} {list(arr.shape)}, expected float32 NCHW")
        if list(arr.shape) != [int(s) for s in want]:
            raise UserError(f"{path}: {what} has shape {list(arr.shape)}, the card's reference_outputs says {list(want)}")
    if len(x) != len(y) or len(x) != int(ro.tiles):
        raise UserError(f"{path}: {len(x)} input and {len(y)} output tiles, the card says {ro.tiles}")
    forward = card.methods[0]
    if list(x.shape[1:]) != list(forward.input_shape[1:]) or list(y.shape[1:]) != list(forward.output_shape[1:]):
        raise UserError(f"{path}: tiles {list(x.shape[1:])} -> {list(y.shape[1:])} do not match the card's method "
                        f"{forward.name} ({list(forward.input_shape[1:])} -> {list(forward.output_shape[1:])}); "
                        "convert again")
    return x, y


__all__ = ["REFERENCE_FILE", "npz_bytes", "reference_npz", "load_reference_outputs"]
