"""File helpers every writer and reader shares: content hashes and artifact digests, atomic writes (temp file in the
same folder + rename, so a crash never leaves a half-written checkpoint, card or image behind), the output rules
every writing command follows (`check_output_file`, `check_writable`, `clean_interrupted_writes`) and the size and
count limits on archives (`check_zip_members`). numpy-free, torch-free."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterable

from .errors import UserError


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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.p{os.getpid()}-", suffix=".tmp")
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


# ---------------------------------------------------------------------------------------------------- output rules

_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?:(?:p(?P<tpid>\d+)-)?[^.]+\.tmp|old-(?P<pid>\d+))$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def clean_interrupted_writes(out: str | os.PathLike) -> list[Path]:
    """Remove what an interrupted write into ``out`` left next to it: ``.<name>.*.tmp`` files and folders
    (atomic_output_dir, runtime.files.atomic_write_bytes, runtime.images) and ``.<name>.old-<pid>`` folders of a
    replace that was killed between its two renames. Names that carry a process id (``.<name>.p<pid>-*.tmp``,
    ``.old-<pid>``) are left alone while that process runs. Says so on stderr; returns what it removed."""
    path = Path(out)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return []
    removed = []
    for entry in parent.iterdir():
        m = _TMP_NAME.match(entry.name)
        if not m or m.group("name") != path.name or entry.is_symlink():
            continue
        pid = m.group("pid") or m.group("tpid")
        if pid and _alive(int(pid)):  # a write in progress (or a replace) of a running process: not ours to touch
            continue
        try:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        except OSError as e:
            print(f"nsr-edge: warning: cannot remove {entry} left by an interrupted write: {e.strerror or e}",
                  file=sys.stderr)
            continue
        removed.append(entry)
        print(f"nsr-edge: removed {entry}, left by an interrupted write", file=sys.stderr)
    return removed


def check_writable(folder: str | os.PathLike, what: str = "output folder", need_bytes: int = 0) -> None:
    """Fail in well under a second, before any long work, if nothing can be written into ``folder`` (the nearest
    existing ancestor when it does not exist yet): read-only file system, no permission, or less than
    ``need_bytes`` free."""
    target = Path(folder).absolute()
    probe = target
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"{what} {target}: {probe} is a file, not a folder")
    try:
        fd = os.open(probe / f".nsr-edge-probe-{os.getpid()}.tmp", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        os.unlink(probe / f".nsr-edge-probe-{os.getpid()}.tmp")
    except OSError as e:
        raise UserError(f"{what} {target}: cannot write in {probe} ({e.strerror or e}); choose another place") from None
    if need_bytes:
        free = shutil.disk_usage(probe).free
        if free < need_bytes:
            raise UserError(f"{what} {target}: {free / 2**20:.0f} MiB free in {probe}, about "
                            f"{need_bytes / 2**20:.0f} MiB needed; free some space or choose another place")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output_file(out: str | os.PathLike, force: bool, inputs: Iterable[str | os.PathLike | None] = (),
                      option: str = "output") -> Path:
    """The rules for a single output file, checked before any work: it is none of the command's ``inputs`` (even
    with ``--force``), not a folder, replaced only with ``force``, and its folder is writable; temporary files of
    an interrupted write of it are removed."""
    path = Path(out)
    for src in inputs:
        if src is not None and _same_file(path, Path(src)):
            raise UserError(f"{option} {path} is also an input of this command; write the result somewhere else")
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; give a file name")
    if (path.exists() or path.is_symlink()) and not force:
        raise UserError(f"{path} exists; pass --force to overwrite")
    if not path.parent.is_dir():
        raise UserError(f"{option} {path}: folder {path.parent} does not exist")
    check_writable(path.parent)
    clean_interrupted_writes(path)
    return path


# -------------------------------------------------------------------------------------------------------- archives


def check_zip_members(zf: zipfile.ZipFile, where: str, max_members: int, max_bytes: int,
                      error: type[Exception] = UserError, why: str | None = None) -> list[zipfile.ZipInfo]:
    """The members of ``zf`` after checking their count, their declared sizes (zipfile never inflates a member
    past its declared size) and their names (no absolute paths or ``..``); one-line ``error`` otherwise, ending
    with ``why`` (default: the environment variables that raise the limits)."""
    infos = zf.infolist()
    if len(infos) > max_members:
        raise error(f"{where}: refused, the zip holds {len(infos)} members (limit {max_members}; "
                    f"{why or '$NSR_EDGE_MAX_UNZIP_FILES raises it'})")
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        raise error(f"{where}: refused, the zip's members expand to {total / 2**20:,.0f} MiB (limit "
                    f"{max_bytes / 2**20:,.0f} MiB; {why or '$NSR_EDGE_MAX_UNZIP_MB raises it'})")
    for i in infos:
        if i.filename.startswith(("/", "\\")) or ".." in i.filename.replace("\\", "/").split("/"):
            raise error(f"{where}: refused, zip member {i.filename!r} points outside the archive")
    return infos
