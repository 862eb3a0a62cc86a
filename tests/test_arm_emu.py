"""``--device arm-emu``: INT8 artifacts on the real ARM kernels of their runtimes under qemu-user (issue 13 items 4,
5, 7), and the root filesystem's half-built detection.

The root filesystem is built when absent (``python -m nsr_edge.devices.arm_rootfs``: ~1.5 min, network once) and
reused when present. Without qemu-user or debootstrap these tests skip, unless ``NSR_EDGE_REQUIRE_ARM_EMU=1`` (the
Makefile's test target sets it), where they fail instead. The artifact: ``nsr_sr_x2`` INT8 ONNX Runtime at a 24 px
tile, converted here (or the device fixtures' ``ort-int8`` when ``NSR_EDGE_DEVICE_FIXTURES`` points at them).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from nsr_edge.devices import arm_rootfs
from nsr_edge.devices.base import DeviceError, DeviceOptions
from nsr_edge.errors import UserError

TOOLS = ("qemu-aarch64", "debootstrap", "dpkg-deb", "gcc")
MISSING = [t for t in TOOLS if shutil.which(t) is None]
REQUIRED = os.environ.get("NSR_EDGE_REQUIRE_ARM_EMU") == "1"


def _need_emulator() -> None:
    if MISSING:
        msg = f"ARM emulation needs {', '.join(MISSING)} (apt-get install qemu-user debootstrap gcc)"
        if REQUIRED:
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def rootfs() -> Path:
    _need_emulator()
    if not arm_rootfs.status()[0]:
        try:
            arm_rootfs.build(log=lambda m: print(m, flush=True))
        except UserError as e:
            if REQUIRED:
                pytest.fail(f"building the ARM root filesystem: {e}")
            pytest.skip(f"cannot build the ARM root filesystem here: {e}")
    return arm_rootfs.ensure_ready()


@pytest.fixture(scope="module")
def ort_int8(tmp_path_factory) -> Path:
    fixtures = os.environ.get("NSR_EDGE_DEVICE_FIXTURES")
    if fixtures and (Path(fixtures) / "ort-int8" / "model.json").is_file():
        src = Path(fixtures) / "ort-int8"
    else:
        from nsr_edge.converters.pipeline import ConvertOptions, convert

        src = tmp_path_factory.mktemp("arm") / "ort-int8"
        convert(ConvertOptions("nsr_sr_x2", "onnxruntime", "int8-ptq", tile=24, calibration_tiles=8,
                               progress=False), str(src))
    dest = tmp_path_factory.mktemp("arm-art") / "ort-int8"
    shutil.copytree(src, dest)  # the card gets records: never write into shared fixtures
    return dest


def test_int8_numerics_on_arm_kernels(rootfs, ort_int8):
    """ORT INT8 on cortex-a53 (NEON, no dot product): runs, matches the FP32 reference as on x86, and its difference
    to the x86 output is measured, not assumed (docs/arm.md explains it per kernel)."""
    from nsr_edge.devices.arm_emu import format_arm_validation, validate_on_arm

    r = validate_on_arm(ort_int8, "cortex-a53", timeout=900)
    print(format_arm_validation(r))
    assert r["device"]["arch"] == "aarch64" and r["device"]["emulated"] is True
    assert r["device"]["cpu_model"] == "Cortex-A53"
    assert "asimddp" not in r["device"]["isa_features"]
    assert r["stored"]["summary"]["finite"]
    a = r["arm"]
    assert a["arm_vs_fp32"]["y_psnr"] > 40  # INT8 vs FP32, as on x86
    # As close to FP32 as the host. Which int8 kernels ONNX Runtime runs on x86 depends on the CPU: on an AMD EPYC
    # VM the host reached 58.25 dB where ARM reached 59.07 (Intel VMs: within 0.5 dB); above 50 dB both are within a
    # fraction of an 8-bit step (RMS) from FP32, so the spread only matters below that.
    arm_db, host_db = a["arm_vs_fp32"]["y_psnr"], a["host_vs_fp32"]["y_psnr"]
    assert min(arm_db, host_db) > 50 or abs(arm_db - host_db) < 0.5
    assert a["arm_vs_host"]["bit_exact"] or a["arm_vs_host"]["max_abs"] < 4 / 255  # at most a few output LSBs


def test_instruction_counts_dot_product_and_repeatable(rootfs, ort_int8):
    """cortex-a76 runs SDOT/UDOT kernels (counted), cortex-a72 none; a second run repeats the count (to 0.5% here:
    ONNX Runtime at a 24 px tile)."""
    from nsr_edge.runtime.card import load_card

    from nsr_edge.devices.arm_emu import count_instructions, format_instruction_count

    a76 = count_instructions(ort_int8, "cortex-a76", record=True, timeout=900)
    print(format_instruction_count(a76))
    ic = a76["instruction_count"]
    assert ic["classes"]["dot"] > 0 and ic["classes"]["sve"] == 0
    assert ic["per_tile"] == sum(ic["classes"].values()) or abs(ic["per_tile"] - sum(ic["classes"].values())) < 10
    again = count_instructions(ort_int8, "cortex-a76", timeout=900)["instruction_count"]
    # ONNX Runtime at this tiny tile: measured 0.003-0.12% between runs (its helper thread's lock and allocator
    # timing reaches the counted thread; 0.116% once in CI under load); LiteRT at 64 px repeats exactly (docs/arm.md).
    # 0.5% still separates a76 from a72 (tens of percent) and catches a count that is not per tile.
    assert abs(again["per_tile"] - ic["per_tile"]) / ic["per_tile"] < 5e-3
    a72 = count_instructions(ort_int8, "cortex-a72", timeout=900)["instruction_count"]
    assert a72["classes"]["dot"] == 0 and a72["per_tile"] > ic["per_tile"]
    card = load_card(ort_int8)
    (rec,) = [r for r in card.instruction_counts if r.cpu == "cortex-a76"]
    assert rec.per_tile == ic["per_tile"] and rec.device is not None and rec.device.emulated


def test_half_built_rootfs_is_refused_and_rebuilt(tmp_path, monkeypatch):
    """A root filesystem without its completion stamp (an interrupted set-up) is never used: one line, and the next
    set-up removes it (here only the detection and the refusal: no network)."""
    monkeypatch.setenv("NSR_EDGE_CACHE", str(tmp_path))
    root = arm_rootfs.rootfs_dir()
    (root / "usr/bin").mkdir(parents=True)
    (root / arm_rootfs.PYTHON).write_bytes(b"")
    ok, why = arm_rootfs.status()
    assert not ok and "half built" in why
    with pytest.raises(UserError, match="half built.*python -m nsr_edge.devices.arm_rootfs"):
        arm_rootfs.ensure_ready()
    (root / arm_rootfs.STAMP).write_text(json.dumps({"hash": "something else"}))
    ok, why = arm_rootfs.status()
    assert not ok and "another recipe" in why
    from nsr_edge.devices import parse_device

    if shutil.which("qemu-aarch64"):
        t = parse_device("arm-emu:cortex-a53")
        with pytest.raises(DeviceError, match="another recipe"):
            t.check("onnxruntime")


def test_device_spec():
    from nsr_edge.devices import parse_device

    with pytest.raises(DeviceError, match="unknown emulated CPU 'cortex-x9'.*cortex-a53"):
        parse_device("arm-emu:cortex-x9", DeviceOptions())
    assert parse_device("arm-emu").name == "arm-emu:cortex-a76"
    assert parse_device("arm-emu:neoverse-n1").kind == "arm-emu"


def test_cpuinfo_text():
    """The fake cpuinfo names the core as the kernel prints it (device_info reads it back)."""
    text = arm_rootfs.cpuinfo_text("cortex-a76", ["fp", "asimd", "asimddp"], 2)
    assert text.count("processor\t:") == 2 and "CPU part\t: 0xd0b" in text and "asimddp" in text
    from nsr_edge.runtime.device_info import parse_cpuinfo

    model, feats = parse_cpuinfo(text, "aarch64")
    assert model == "Cortex-A76" and "asimddp" in feats


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_plugin_classifies_a64_encodings(tmp_path):
    """The plugin's classifier (compiled from the same source, in a small harness) on hand-assembled A64 words."""
    from nsr_edge.devices.arm_rootfs import PLUGIN_SOURCE

    words = {  # encoding: class (0 total, 1 scalar, 2 simd, 3 dot, 4 i8mm, 5 sve)
        0x4E829420: 3,  # sdot v0.4s, v1.16b, v2.16b
        0x6E829420: 3,  # udot v0.4s, v1.16b, v2.16b
        0x4F82E020: 3,  # sdot v0.4s, v1.16b, v2.4b[0]
        0x4E82A420: 4,  # smmla v0.4s, v1.16b, v2.16b
        0x6E82A420: 4,  # ummla
        0x4E82AC20: 4,  # usmmla
        0x4E829C20: 4,  # usdot v0.4s, v1.16b, v2.16b
        0x4E22CC20: 2,  # fmla v0.4s, v1.4s, v2.4s
        0x3DC00020: 2,  # ldr q0, [x1]
        0x8B020020: 1,  # add x0, x1, x2
        0xF9400020: 1,  # ldr x0, [x1]
        0x2598E3E0: 5,  # ptrue p0.s
        0xA400A000: 5,  # ld1b {z0.b}, p0/z, [x0]
    }
    harness = tmp_path / "h.c"
    harness.write_text(f'#define NSR_EDGE_CLASSIFY_ONLY\n#include "{PLUGIN_SOURCE}"\nint main(void) {{\n' + "".join(
        f'    printf("%d\\n", classify(0x{w:08x}u));\n' for w in words) + "    return 0;\n}\n")
    exe = tmp_path / "h"
    import subprocess

    subprocess.run(["gcc", "-O1", "-o", str(exe), str(harness)], check=True)
    got = [int(x) for x in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()]
    assert got == list(words.values())
