"""The aarch64 root filesystem that ``--device arm-emu[:CPU]`` runs in: built once, cached, never used half built.

    python -m nsr_edge.devices.arm_rootfs [--force] [--status] [--json]     (idempotent; network needed once)

What it builds, under ``$NSR_EDGE_CACHE/arm64-rootfs`` (default ``~/.cache/nsr-edge/arm64-rootfs``), in about a
minute and ~0.5 GB (docs/arm.md has the measured numbers):

1. Debian bookworm arm64, ``debootstrap --foreign --variant=minbase --include=python3``: only the download and
   unpack stage; the emulated second stage (minutes under qemu) is skipped: every downloaded ``.deb`` is unpacked with
   ``dpkg-deb -x`` on the host (no maintainer script is needed to run ``python3.11``). Absolute symlinks are made
   relative (qemu's ``-L`` prefix would send them to the host's files); ``/proc``, ``/sys``, ``/dev`` and ``/tmp``
   are removed, so that the guest sees the host's (qemu-user redirects only paths that exist under the prefix).
2. The runtimes as aarch64 wheels, installed by the host's pip (``--platform ..._aarch64 --only-binary=:all:``) into
   ``/opt/nsr-edge/site``: numpy, onnxruntime, ai-edge-litert and Pillow at the versions of the toolkit's own
   environment (so host and ARM outputs come from the same runtime version). Nothing is downloaded at run time.
   (ExecuTorch is not included: see `main`.)
3. A smoke run: the guest Python imports numpy and each runtime under ``-cpu cortex-a53``; the versions it reports
   go into the stamp.

The instruction-count plugin (``qemu_plugin/insn_count.c``, a host library that qemu loads) is compiled with the
system ``gcc`` at set-up too, but apart: into ``$NSR_EDGE_CACHE/qemu-plugin/insn_count-<sha12 of the source>.so``
(`plugin_path`, rebuilt whenever the source changes, without touching the root filesystem).

The build happens in a sibling folder (``arm64-rootfs.partial-PID``) that is renamed into place only after the
completion stamp (``.nsr-edge-rootfs.json``: the content hash of everything that went in, versions, build seconds and
size) is written last. A folder without a stamp, or whose stamp's hash differs from this recipe's, is not ready:
`status` says why, the transport refuses it in one line, and the next set-up removes it and builds again.

Host tools: ``debootstrap``, ``dpkg-deb``, ``qemu-aarch64`` (Debian's dynamic ``qemu-user``, which loads TCG
plugins), ``gcc``; run as root (debootstrap). Debian: ``apt-get install qemu-user debootstrap gcc``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import UserError

SUITE = "bookworm"
MIRROR = os.environ.get("NSR_EDGE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEBS = ("python3",)
# The toolkit environment's versions (pyproject / field notes): the host and the ARM side run the same runtime.
WHEELS = ("numpy==2.3.5", "onnxruntime==1.32.0", "ai-edge-litert==2.3.0", "pillow==13.0.0")
EXECUTORCH_WHEELS = ("torch==2.13.0", "executorch==1.5.1")
PLATFORMS = ("manylinux_2_36_aarch64", "manylinux_2_35_aarch64", "manylinux_2_34_aarch64", "manylinux_2_31_aarch64",
             "manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64",
             "linux_aarch64")
PYTHON = "usr/bin/python3.11"
SITE = "opt/nsr-edge/site"  # guest path /opt/nsr-edge/site
PLUGIN_SOURCE = Path(__file__).with_name("qemu_plugin") / "insn_count.c"
STAMP = ".nsr-edge-rootfs.json"
RECIPE_VERSION = 1  # bump when the build steps change
REMOVED = ("proc", "sys", "dev", "tmp")


def cache_root() -> Path:
    return Path(os.environ.get("NSR_EDGE_CACHE") or Path.home() / ".cache" / "nsr-edge")


def rootfs_dir() -> Path:
    return cache_root() / "arm64-rootfs"


def recipe(with_executorch: bool = False) -> dict[str, Any]:
    """Everything that goes into the root filesystem; its hash is the stamp's."""
    return {"recipe": RECIPE_VERSION, "suite": SUITE, "arch": "arm64", "variant": "minbase", "debs": list(DEBS),
            "wheels": list(WHEELS) + (list(EXECUTORCH_WHEELS) if with_executorch else []),
            "platforms": list(PLATFORMS), "python": "3.11"}


def recipe_hash(r: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest()


def read_stamp(root: Path | None = None) -> dict[str, Any] | None:
    try:
        return json.loads(((root or rootfs_dir()) / STAMP).read_text())
    except (OSError, ValueError):
        return None


def status(root: Path | None = None, with_executorch: bool | None = None) -> tuple[bool, str]:
    """(ready, why not / what it is). Ready: the stamp exists, its hash is this recipe's (with or without
    ExecuTorch; ``with_executorch=None`` accepts either) and the files the runs need are there."""
    root = root or rootfs_dir()
    if not root.is_dir():
        return False, f"no ARM root filesystem at {root}"
    stamp = read_stamp(root)
    if stamp is None:
        return False, f"{root} is half built (no completion stamp): an interrupted set-up"
    wanted = [with_executorch] if with_executorch is not None else [False, True]
    hashes = [recipe_hash(recipe(w)) for w in wanted]
    if stamp.get("hash") not in hashes:
        return False, (f"{root} was built by another recipe (stamp hash {str(stamp.get('hash'))[:12]}, this "
                       f"recipe's {hashes[0][:12]})")
    for rel in (PYTHON, SITE):
        if not (root / rel).exists():
            return False, f"{root} lacks {rel} (damaged after set-up)"
    return True, f"{root} ({stamp.get('bytes', 0) / 1e6:.0f} MB, built in {stamp.get('seconds', 0):.0f} s)"


def ensure_ready(with_executorch: bool | None = None) -> Path:
    """The ready root filesystem, or one `UserError` line saying how to build it."""
    ok, why = status(with_executorch=with_executorch)
    if not ok:
        flag = " --with-executorch" if with_executorch else ""
        raise UserError(f"{why}; build it with: python -m nsr_edge.devices.arm_rootfs{flag} "
                        "(needs qemu-user, debootstrap, gcc and network once)")
    return rootfs_dir()


# ------------------------------------------------------------------------------------- emulated CPUs and their views

# qemu -cpu name -> (MIDR implementer, variant, part, revision) as the real core reports it (qemu's own values).
CPUS: dict[str, tuple[int, int, int, int]] = {
    "cortex-a53": (0x41, 0x0, 0xD03, 0x4),
    "cortex-a72": (0x41, 0x0, 0xD08, 0x3),
    "cortex-a76": (0x41, 0x4, 0xD0B, 0x1),
    "neoverse-n1": (0x41, 0x4, 0xD0C, 0x1),
    "max": (0x00, 0x0, 0x051, 0x0),  # qemu's own "max" (implementer 0, part 'Q'): every feature qemu has
}
# Linux arm64 HWCAP / HWCAP2 bit names (arch/arm64/include/uapi/asm/hwcap.h), as /proc/cpuinfo prints them.
HWCAP = ["fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp", "asimdhp", "cpuid", "asimdrdm", "jscvt", "fcma", "lrcpc", "dcpop", "sha3", "sm3", "sm4", "asimddp", "sha512", "sve", "asimdfhm", "dit", "uscat", "ilrcpc", "flagm", "ssbs", "sb", "paca", "pacg"]
HWCAP2 = ["dcpodp", "sve2", "sveaes", "svepmull", "svebitperm", "svesha3", "svesm4", "flagm2", "frint", "svei8mm", "svef32mm", "svef64mm", "svebf16", "i8mm", "bf16", "dgh", "rng", "bti", "mte", "ecv", "afp", "rpres", "mte3", "sme", "sme_i16i64", "sme_f64f64", "sme_i8i32", "sme_f16f32", "sme_b16f32", "sme_f32f32", "sme_fa64", "wfxt", "ebf16", "sve_ebf16", "cssc", "rprfm", "sve2p1"]
AUXV = ("import struct\n"
        "v = dict(struct.iter_unpack('<QQ', open('/proc/self/auxv', 'rb').read()))\n"
        "print(v.get(16, 0), v.get(26, 0))\n")


def check_cpu(cpu: str) -> str:
    if cpu not in CPUS:
        raise UserError(f"unknown emulated CPU {cpu!r}; use one of {', '.join(CPUS)}")
    return cpu


def hwcaps(root: Path, cpu: str) -> list[str]:
    """The ISA features qemu gives the guest on ``-cpu cpu`` (its AT_HWCAP/AT_HWCAP2, read in the guest), so the
    fake /proc/cpuinfo never claims what the emulated core lacks (a claimed dot product on cortex-a72: SIGILL)."""
    argv = ["qemu-aarch64", "-cpu", cpu, "-L", str(root), str(root / PYTHON), "-S", "-c", AUXV]
    proc = _run(argv, f"reading the HWCAPs of -cpu {cpu}", env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                timeout=300)
    h1, h2 = (int(x) for x in proc.stdout.split()[-2:])
    return ([n for i, n in enumerate(HWCAP) if h1 >> i & 1] + [n for i, n in enumerate(HWCAP2) if h2 >> i & 1])


def cpuinfo_text(cpu: str, features: list[str], cores: int) -> str:
    impl, variant, part, rev = CPUS[cpu]
    one = (f"BogoMIPS\t: 50.00\nFeatures\t: {' '.join(features)}\nCPU implementer\t: 0x{impl:02x}\n"
           f"CPU architecture: 8\nCPU variant\t: 0x{variant:x}\nCPU part\t: 0x{part:03x}\nCPU revision\t: {rev}\n")
    return "".join(f"processor\t: {i}\n{one}\n" for i in range(max(1, cores)))


def make_view(root: Path, cpu: str, dest: Path, features: list[str] | None = None) -> Path:
    """``dest``: the prefix qemu's ``-L`` gets for ``-cpu cpu``: a relative symlink to each top-level entry of
    ``root`` plus its own ``proc/cpuinfo`` (an ARM one matching the emulated core; one per host core, as the host's
    /sys, which the guest sees, counts them). One root filesystem serves every CPU, concurrently."""
    check_cpu(cpu)
    features = features if features is not None else hwcaps(root, cpu)
    dest.mkdir(parents=True, exist_ok=True)
    for entry in sorted(root.iterdir()):
        if entry.name in REMOVED or entry.name.startswith("."):
            continue
        link = dest / entry.name
        target = os.path.relpath(entry, dest)
        if not (link.is_symlink() and os.readlink(link) == target):
            if link.is_symlink() or link.is_file():
                link.unlink()
            link.symlink_to(target)
    (dest / "proc").mkdir(exist_ok=True)
    text = cpuinfo_text(cpu, features, os.cpu_count() or 1)
    cpuinfo = dest / "proc" / "cpuinfo"
    if not cpuinfo.is_file() or cpuinfo.read_text() != text:
        tmp = cpuinfo.with_name(f".cpuinfo.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, cpuinfo)
    return dest


def views_dir() -> Path:
    return cache_root() / "arm64-views"


def view(cpu: str) -> Path:
    """The ``-L`` prefix for ``cpu`` over the ready root filesystem (made on first use; its features are cached in
    the view)."""
    root = ensure_ready()
    dest = views_dir() / check_cpu(cpu)
    feats_file = dest / ".features.json"
    stamp_hash = (read_stamp(root) or {}).get("hash")
    features = None
    try:
        cached = json.loads(feats_file.read_text())
        if cached.get("hash") == stamp_hash:
            features = cached["features"]
    except (OSError, ValueError, KeyError):
        pass
    if features is None:
        features = hwcaps(root, cpu)
        dest.mkdir(parents=True, exist_ok=True)
        feats_file.write_text(json.dumps({"hash": stamp_hash, "features": features}))
    return make_view(root, cpu, dest, features)


def plugin_path() -> Path:
    """The compiled instruction-count plugin for the current source (compiled on first use: ``gcc``)."""
    data = PLUGIN_SOURCE.read_bytes()
    out = cache_root() / "qemu-plugin" / f"insn_count-{hashlib.sha256(data).hexdigest()[:12]}.so"
    if not out.is_file():
        if shutil.which("gcc") is None:
            raise UserError("instruction counting compiles a qemu plugin with gcc: apt-get install gcc")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}")
        _run(["gcc", "-O2", "-Wall", "-shared", "-fPIC", "-fvisibility=hidden", "-o", str(tmp), str(PLUGIN_SOURCE)],
             "gcc (the qemu instruction-count plugin)")
        os.replace(tmp, out)
    return out


def has_module(root: Path, module: str) -> bool:
    site = root / SITE
    return (site / module).is_dir() or (site / f"{module}.py").is_file()


# --------------------------------------------------------------------------------------------------------- build


def _need_tools() -> None:
    missing = [t for t in ("debootstrap", "dpkg-deb", "qemu-aarch64", "gcc") if shutil.which(t) is None]
    if missing:
        raise UserError(f"building the ARM root filesystem needs {', '.join(missing)}: "
                        "apt-get install qemu-user debootstrap gcc")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        raise UserError("building the ARM root filesystem needs root (debootstrap)")


def _run(argv: list[str], what: str, **kw: Any) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)
    if proc.returncode != 0:
        tail = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip() and "is ignored" not in ln]
        raise UserError(f"{what} failed (exit {proc.returncode}): {(tail or ['no output'])[-1][:300]}")
    return proc


def _relative_symlinks(root: Path) -> int:
    """Absolute symlinks inside ``root`` made relative to ``root`` (qemu's -L would resolve them on the host)."""
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                target = os.readlink(p)
                if target.startswith("/"):
                    p.unlink()
                    p.symlink_to(os.path.relpath(root / target.lstrip("/"), p.parent))
                    n += 1
    return n


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            p = Path(dirpath) / f
            if not p.is_symlink():
                total += p.stat().st_size
    return total


SMOKE = ("import json, sys, importlib\n"
         "v = {'python': sys.version.split()[0]}\n"
         "for m in sys.argv[1:]:\n"
         "    v[m] = getattr(importlib.import_module(m), '__version__', 'ok')\n"
         "print(json.dumps(v))\n")


def smoke(root: Path, modules: list[str], cpu: str = "cortex-a53") -> dict[str, str]:
    """Import ``modules`` in the guest Python (``-cpu cpu``, through a view with its ARM cpuinfo: an x86 one
    crashes onnxruntime); their versions, or one line."""
    prefix = make_view(root, cpu, root.parent / f".{root.name}.smoke-view-{os.getpid()}")
    try:
        argv = ["qemu-aarch64", "-cpu", cpu, "-L", str(prefix), str(root / PYTHON), "-c", SMOKE, *modules]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": f"/{SITE}", "PYTHONDONTWRITEBYTECODE": "1"}
        proc = _run(argv, "the guest Python smoke test", env=env, timeout=600)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


def build(with_executorch: bool = False, force: bool = False, log=print) -> dict[str, Any]:
    """Build the root filesystem unless a ready one with this recipe is there; returns its stamp. One set-up at a
    time (a lock file beside it): a second one waits, then finds the first one's result ready."""
    import fcntl

    rootfs_dir().parent.mkdir(parents=True, exist_ok=True)
    with open(rootfs_dir().parent / f".{rootfs_dir().name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(with_executorch, force, log)


def _build_locked(with_executorch: bool, force: bool, log) -> dict[str, Any]:
    root = rootfs_dir()
    r = recipe(with_executorch)
    h = recipe_hash(r)
    stamp = read_stamp(root)
    if not force and stamp and stamp.get("hash") == h and status(root, with_executorch)[0]:
        log(f"ARM root filesystem ready: {status(root)[1]}")
        log(f"instruction-count plugin: {plugin_path()}")
        return stamp
    _need_tools()
    root.parent.mkdir(parents=True, exist_ok=True)
    for old in root.parent.glob(f"{root.name}.partial-*"):  # left by an interrupted set-up
        shutil.rmtree(old, ignore_errors=True)
    work = root.parent / f"{root.name}.partial-{os.getpid()}"
    t0 = time.time()
    try:
        log(f"debootstrap (first stage) {SUITE} arm64 into {work} ...")
        _run(["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase", f"--include={','.join(DEBS)}",
              SUITE, str(work), MIRROR], "debootstrap")
        archives = work / "var/cache/apt/archives"
        debs = sorted(archives.glob("*.deb"))
        log(f"unpacking {len(debs)} packages on the host (dpkg-deb -x) ...")
        for deb in debs:
            _run(["dpkg-deb", "-x", str(deb), str(work)], f"dpkg-deb -x {deb.name}")
        shutil.rmtree(archives, ignore_errors=True)
        shutil.rmtree(work / "debootstrap", ignore_errors=True)
        for name in REMOVED:
            p = work / name
            if p.is_symlink() or p.is_file():
                p.unlink()
            elif p.exists():
                shutil.rmtree(p)
        _relative_symlinks(work)
        if not (work / PYTHON).is_file():
            raise UserError(f"debootstrap gave no {PYTHON}")
        log(f"aarch64 wheels into /{SITE}: {', '.join(r['wheels'])} ...")
        pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-warn-conflicts",
               "--target", str(work / SITE), "--python-version", "3.11", "--implementation", "cp",
               "--only-binary=:all:"]
        for plat in PLATFORMS:
            pip += ["--platform", plat]
        _run(pip + r["wheels"], "pip install (aarch64 wheels)", timeout=3600)
        modules = ["numpy", "onnxruntime", "ai_edge_litert"] + (["executorch", "torch"] if with_executorch else [])
        log("smoke test in the guest (cortex-a53) ...")
        versions = smoke(work, modules)
        stamp = {"hash": h, "recipe": r, "versions": versions, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                    time.gmtime()),
                 "seconds": round(time.time() - t0, 1), "bytes": _tree_bytes(work),
                 "qemu": _run(["qemu-aarch64", "--version"], "qemu-aarch64 --version").stdout.splitlines()[0]}
        tmp = work / f"{STAMP}.tmp"
        tmp.write_text(json.dumps(stamp, indent=2) + "\n")
        os.replace(tmp, work / STAMP)  # the completion stamp, last
        if root.exists() or root.is_symlink():
            shutil.rmtree(root)
        os.replace(work, root)
        shutil.rmtree(views_dir(), ignore_errors=True)  # views of an older root filesystem
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log(f"ARM root filesystem ready: {status(root)[1]}")
    log(f"instruction-count plugin: {plugin_path()}")
    return stamp


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nsr_edge.devices.arm_rootfs", description=__doc__.split("\n\n")[0])
    # No --with-executorch: ExecuTorch's pybindings link libtorch, and PyPI's aarch64 torch 2.13.0 depends on CUDA
    # wheels (nvidia-nccl-cu13, ...) with no build for this platform, while the CPU wheels' index
    # (download.pytorch.org) is not reachable here; `build(with_executorch=True)` is kept for a machine where it is.
    p.add_argument("--force", action="store_true", help="rebuild even if a ready one is there")
    p.add_argument("--status", action="store_true", help="only say whether it is ready")
    p.add_argument("--json", action="store_true", help="print the stamp as JSON")
    args = p.parse_args(argv)
    try:
        if args.status:
            ok, why = status()
            print(("ready: " if ok else "not ready: ") + why)
            return 0 if ok else 1
        stamp = build(False, args.force, log=(lambda *a: None) if args.json else
                      (lambda m: print(m, flush=True)))
    except UserError as e:
        print(f"nsr-edge: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(stamp, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
