"""What machine a validation or profile ran on, read on that machine (``--device``): CPU model, cores, the ISA
features that select kernels, the cpufreq governor, OS, Python and the runtime that ran the artifact.

Runs on the device (numpy-free, torch-free, standard library only): `device_cli` calls `describe_device` there and
returns the `card.DeviceInfo` with its result, so a record says where its numbers come from.

ARM CPUs name themselves in ``/proc/cpuinfo`` only by implementer and part number; `ARM_PARTS` maps the known ones to
names (values from Linux ``arch/arm64/include/asm/cputype.h``). A big.LITTLE phone lists each cluster:
``"4x Cortex-A55 + 3x Cortex-A76 + 1x Cortex-X1"``.
"""

from __future__ import annotations

import os
import platform
import re
from collections import Counter
from importlib import metadata
from pathlib import Path

from .card import DeviceInfo

CPUINFO = "/proc/cpuinfo"
GOVERNOR = "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"

# (implementer, part) -> name, from Linux arch/arm64/include/asm/cputype.h (ARM_CPU_PART_*, QCOM_CPU_PART_*, ...).
ARM_PARTS: dict[tuple[int, int], str] = {
    **{(0x41, part): name for part, name in {
        0xD03: "Cortex-A53", 0xD04: "Cortex-A35", 0xD05: "Cortex-A55", 0xD07: "Cortex-A57", 0xD08: "Cortex-A72",
        0xD09: "Cortex-A73", 0xD0A: "Cortex-A75", 0xD0B: "Cortex-A76", 0xD0C: "Neoverse-N1", 0xD0D: "Cortex-A77",
        0xD0E: "Cortex-A76AE", 0xD40: "Neoverse-V1", 0xD41: "Cortex-A78", 0xD42: "Cortex-A78AE", 0xD44: "Cortex-X1",
        0xD46: "Cortex-A510", 0xD47: "Cortex-A710", 0xD48: "Cortex-X2", 0xD49: "Neoverse-N2", 0xD4B: "Cortex-A78C",
        0xD4D: "Cortex-A715", 0xD4E: "Cortex-X3", 0xD4F: "Neoverse-V2", 0xD80: "Cortex-A520", 0xD81: "Cortex-A720",
        0xD82: "Cortex-X4", 0xD84: "Neoverse-V3", 0xD85: "Cortex-X925", 0xD87: "Cortex-A725", 0xD8E: "Neoverse-N3",
    }.items()},
    (0x51, 0x800): "Kryo 2xx Gold", (0x51, 0x801): "Kryo 2xx Silver", (0x51, 0x802): "Kryo 3xx Gold",
    (0x51, 0x803): "Kryo 3xx Silver", (0x51, 0x804): "Kryo 4xx Gold", (0x51, 0x805): "Kryo 4xx Silver",
    (0x48, 0xD01): "TaiShan v110 (Kunpeng 920)",
}
ARM_IMPLEMENTERS = {0x41: "ARM", 0x42: "Broadcom", 0x43: "Cavium", 0x48: "HiSilicon", 0x4E: "NVIDIA",
                    0x51: "Qualcomm", 0x53: "Samsung", 0x61: "Apple", 0xC0: "Ampere"}

# Features that decide which kernels XNNPACK / ruy / MLAS pick (the rest of the list is noise for a latency record).
ARM_FEATURES = ("asimd", "asimdhp", "asimddp", "asimdfhm", "asimdrdm", "fphp", "i8mm", "bf16", "sve", "sve2",
                "svei8mm", "svebf16", "sme", "sme2")
X86_FEATURES = ("sse4_1", "sse4_2", "avx", "f16c", "fma", "avx2", "avx512f", "avx512bw", "avx512dq", "avx512vl",
                "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni_int8", "amx_tile", "amx_int8",
                "amx_bf16")

# runner -> the Python distributions that provide its runtime, first installed one wins.
RUNTIME_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "litert": ("ai-edge-litert", "tflite-runtime"),
    "executorch": ("executorch",),
    "dispatch": ("executorch",),
    "coreml": ("coremltools",),
}


def _blocks(text: str) -> list[dict[str, str]]:
    """``/proc/cpuinfo`` as one dict per processor block (and a trailing block of machine-wide lines on ARM)."""
    blocks, cur = [], {}
    for line in text.splitlines():
        if not line.strip():
            if cur:
                blocks.append(cur)
                cur = {}
            continue
        key, _, value = line.partition(":")
        cur[key.strip().lower()] = value.strip()
    if cur:
        blocks.append(cur)
    return blocks


def _int(text: str | None) -> int | None:
    try:
        return int(text, 0) if text else None
    except ValueError:
        return None


def arm_core_name(implementer: int | None, part: int | None) -> str:
    if (implementer, part) in ARM_PARTS:
        return ARM_PARTS[(implementer, part)]  # type: ignore[index]
    vendor = ARM_IMPLEMENTERS.get(implementer or -1, f"implementer 0x{implementer or 0:02x}")
    return f"{vendor} part 0x{part or 0:03x}"


def parse_cpuinfo(text: str, machine: str) -> tuple[str, list[str]]:
    """(CPU model, kernel-selecting ISA features) from the text of ``/proc/cpuinfo`` on an ``machine`` CPU."""
    blocks = _blocks(text)
    procs = [b for b in blocks if "processor" in b]
    if machine.lower() in ("aarch64", "arm64") or any("cpu implementer" in b for b in blocks):
        cores = [arm_core_name(_int(b.get("cpu implementer")), _int(b.get("cpu part")))
                 for b in procs if "cpu part" in b]
        counts = Counter(cores)
        model = " + ".join(f"{n}x {name}" for name, n in counts.items()) if len(counts) > 1 else (cores[0] if cores else "")
        if not model:  # no part numbers (some kernels, some emulators): the machine-wide line, if any
            model = next((b.get("hardware") or b.get("model name") for b in blocks
                          if b.get("hardware") or b.get("model name")), "") or "unknown ARM CPU"
        flags = set(next((b["features"] for b in blocks if "features" in b), "").split())
        return model, [f for f in ARM_FEATURES if f in flags]
    model = next((b["model name"] for b in procs if "model name" in b), "") or platform.processor() or machine
    flags = set(next((b["flags"] for b in procs if "flags" in b), "").split())
    return re.sub(r"\s+", " ", model), [f for f in X86_FEATURES if f in flags]


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def online_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def runtime_version(runner: str) -> str:
    """``"onnxruntime 1.32.0"``: the installed distribution behind ``runner`` ('' when none is installed)."""
    for dist in RUNTIME_DISTRIBUTIONS.get(runner, (runner,)):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return ""


def describe_from(name: str, transport: str, machine: str, system: str, cpuinfo: str, governor: str | None,
                  runtime: str, threads: int | None, python: str = "", cores: int | None = None,
                  emulated: bool = False) -> DeviceInfo:
    """A `DeviceInfo` from what a machine says about itself (``uname -m``, ``uname -sr``, ``/proc/cpuinfo``, the
    governor): for a device read from outside (a native ``--runner`` on a phone without Python)."""
    model, features = parse_cpuinfo(cpuinfo, machine)
    if cores is None:
        cores = sum(1 for b in _blocks(cpuinfo) if "processor" in b) or 1
    return DeviceInfo(name=name, transport=transport, arch=machine, cpu_model=model, cores=cores,
                      isa_features=features, governor=governor, os=system, python=python, runtime=runtime,
                      threads=threads, emulated=emulated)


def describe_device(name: str, transport: str, runtime: str, threads: int | None,
                    emulated: bool = False) -> DeviceInfo:
    """This machine as a `DeviceInfo` (``name``: the ``--device`` value; ``runtime``: e.g. `runtime_version`)."""
    return describe_from(name, transport, platform.machine(), f"{platform.system()} {platform.release()}",
                         _read(CPUINFO) or "", (_read(GOVERNOR) or "").strip() or None, runtime, threads,
                         python=platform.python_version(), cores=online_cores(), emulated=emulated)


__all__ = ["ARM_PARTS", "RUNTIME_DISTRIBUTIONS", "arm_core_name", "parse_cpuinfo", "online_cores", "runtime_version",
           "describe_from", "describe_device"]
