"""File helpers every writer shares: content hashes and atomic writes (temp file in the same folder + rename), so
a crash never leaves a half-written checkpoint, card or image behind. numpy-free, torch-free."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest_digest(entries: list[tuple[str, str, int]]) -> dict[str, Any]:
    """A directory's digest: SHA-256 of its ``sha256sum``-style manifest (``<hex>  <relative/posix/path>\n`` per file,
    sorted by path), so it is the same on every machine and easy to recompute in an app (Swift, Kotlin)."""
    entries = sorted(entries)
    manifest = "".join(f"{sha}  {rel}\n" for rel, sha, _ in entries).encode()
    return {"sha256": hashlib.sha256(manifest).hexdigest(), "bytes": sum(size for _, _, size in entries),
            "files": len(entries)}


def artifact_digest(files: dict[str, bytes], root: str) -> dict[str, Any]:
    """``{"sha256", "bytes"}`` of an artifact held in memory as ``{path: bytes}``: the file ``root`` itself, or (a
    directory artifact) every file under ``root/`` digested as `path_digest` digests it on disk (+ ``files``)."""
    if list(files) == [root]:
        return {"sha256": hashlib.sha256(files[root]).hexdigest(), "bytes": len(files[root])}
    prefix = root + "/"
    return _manifest_digest([(n[len(prefix):], hashlib.sha256(d).hexdigest(), len(d))
                             for n, d in files.items() if n.startswith(prefix)])


def path_digest(path: str | os.PathLike) -> dict[str, Any]:
    """`artifact_digest` of a file or a directory on disk (symbolic links are refused: an artifact is plain files)."""
    path = Path(path)
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link")
    if path.is_file():
        return {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    entries = []
    for f in path.rglob("*"):
        if f.is_symlink():
            raise ValueError(f"{f} is a symbolic link")
        if f.is_file():
            entries.append((f.relative_to(path).as_posix(), file_sha256(f), f.stat().st_size))
    return _manifest_digest(entries)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())
