"""Finding the ML program in the files nsr-edge's Core ML targets write: an ``.mlpackage`` folder, its zip
(``model.mlpackage.zip``), or an ExecuTorch ``.pte`` whose Core ML delegate payloads are flattened package folders
(`unflatten_directory`, `coreml_payloads`). `load_artifact` takes any of the three."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from ..files import check_zip_members
from .errors import MilError
from .program import MilPackage, load_mlpackage

MAX_ZIP_MEMBERS = 10_000
MAX_ZIP_BYTES = 2 << 30
"""Limits on a Core ML package zip, checked on the zip's directory before any member is read (a zip bomb is refused
in a millisecond, not after filling memory). Raise them with $NSR_EDGE_MAX_UNZIP_MB / $NSR_EDGE_MAX_UNZIP_FILES."""


def zip_limits() -> tuple[int, int]:
    """(members, uncompressed bytes) a zip may hold: the defaults, or the environment's."""
    try:
        members = int(os.environ.get("NSR_EDGE_MAX_UNZIP_FILES", MAX_ZIP_MEMBERS))
        size = int(float(os.environ.get("NSR_EDGE_MAX_UNZIP_MB", MAX_ZIP_BYTES / 2**20)) * 2**20)
    except ValueError:
        raise MilError("$NSR_EDGE_MAX_UNZIP_FILES / $NSR_EDGE_MAX_UNZIP_MB must be numbers") from None
    return members, size


def load_artifact(path: str | os.PathLike) -> MilPackage:
    """A Core ML program from any of: an ``.mlpackage`` folder, its zip (``model.mlpackage.zip``, the coreml
    target's artifact) or an ExecuTorch ``.pte`` whose Core ML delegate payload holds the package (first payload)."""
    p = Path(path)
    if p.is_dir():
        return load_mlpackage(p)
    if not p.is_file():
        raise MilError(f"{p}: no such Core ML artifact")
    if zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as zf:
                infos = check_zip_members(zf, str(p), *zip_limits(), MilError)
                names = [i.filename for i in infos if not i.is_dir()]
                roots = sorted({n.split(".mlpackage/", 1)[0] + ".mlpackage/" for n in names if ".mlpackage/" in n})
                if not roots:
                    raise MilError(f"{p}: the zip holds no .mlpackage")
                root = roots[0]
                files = {n[len(root):]: zf.read(n) for n in names if n.startswith(root)}
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError, ValueError) as e:
            raise MilError(f"{p}: corrupt Core ML package zip ({type(e).__name__}: {e})") from None
        return MilPackage.from_files(files, str(p))
    data = p.read_bytes()
    payloads = coreml_payloads(data)
    if not payloads:
        raise MilError(f"{p}: neither a Core ML package (folder or zip) nor a .pte with a Core ML payload")
    return payloads[0]


# A flattened directory ends with its JSON index stored byte-reversed, so its last bytes are these.
_FLAT_MARK = b'{"nodes"'[::-1]


def unflatten_directory(blob: bytes, end: int | None = None) -> dict[str, bytes]:
    """Files of a directory flattened by ExecuTorch's Core ML backend (``flatten_directory_contents``): the files'
    bytes back to back, then a JSON index (``{"nodes": [{"name", "kind": 0 file / 1 folder, "children": {name:
    index}, "dataRegion": {"offset", "size"}}]}``, the last node the root) stored byte-reversed at the end.
    ``end`` is where the flattened blob ends inside ``blob`` (default: its end)."""
    end = len(blob) if end is None else end
    rev = blob[:end][::-1]
    try:
        index, consumed = json.JSONDecoder().raw_decode(rev.decode("latin-1"))
        nodes = index["nodes"]
    except (ValueError, KeyError, TypeError):
        raise MilError("not a flattened Core ML directory (no index)") from None
    data_end = end - consumed
    size = max((n["dataRegion"]["offset"] + n["dataRegion"]["size"] for n in nodes if n["kind"] == 0), default=0)
    start = data_end - size
    if start < 0:
        raise MilError("flattened Core ML directory: index points outside the data")
    files: dict[str, bytes] = {}

    def walk(i: int, prefix: str) -> None:
        node = nodes[i]
        if node["kind"] == 0:
            off, n = node["dataRegion"]["offset"], node["dataRegion"]["size"]
            files[prefix + node["name"]] = blob[start + off : start + off + n]
            return
        for name, child in sorted(node.get("children", {}).items()):
            walk(child, prefix + (node["name"] + "/" if i != len(nodes) - 1 else ""))

    walk(len(nodes) - 1, "")
    return files


def coreml_payloads(pte: bytes) -> list[MilPackage]:
    """The Core ML programs inside an ExecuTorch ``.pte``: every flattened Core ML directory found in the file (the
    delegate's processed bytes, inline or in a segment), each checked by decoding its model spec. The payload's
    folder holds ``model.mlpackage`` (and ``metadata.json``); compiled payloads (``.mlmodelc``) are refused."""
    out: list[MilPackage] = []
    pos = 0
    while True:
        hit = pte.find(_FLAT_MARK, pos)
        if hit < 0:
            break
        end = hit + len(_FLAT_MARK)
        pos = end
        try:
            files = unflatten_directory(pte, end)
        except MilError:
            continue
        pkg_files = {k.split(".mlpackage/", 1)[1]: v for k, v in files.items() if ".mlpackage/" in k}
        if not pkg_files:
            if any(".mlmodelc/" in k for k in files):
                raise MilError("the .pte holds a compiled Core ML model (.mlmodelc); lower with model_type MODEL")
            continue
        out.append(MilPackage.from_files(pkg_files, "pte payload"))
    return out
