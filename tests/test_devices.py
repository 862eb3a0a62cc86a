"""`--device` without a remote machine: the registry and its one-line refusals, the runtime bundle (deterministic,
importable from a zip by the torch-free device venv), the device description from real ``/proc/cpuinfo`` texts, and
the shared device path (`run_on_device`) run for real through `LocalTransport` with the device venv's Python.
The same path over a real sshd: tests/test_devices_ssh.py; adb command lines and native tool parsers:
tests/test_devices_adb.py."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import one_line_error, run_cli
from nsr_edge.runtime.device_info import arm_core_name, parse_cpuinfo

from nsr_edge.devices import (
    DeviceError,
    DeviceOptions,
    DeviceRun,
    parse_device,
    run_on_device,
    split_device,
)
from nsr_edge.devices.base import BUNDLE_NAME, bundle_bytes, runtime_bundle

ROOT = Path(__file__).resolve().parents[1]
DEVICE_PYTHON = ROOT / ".venv-runtime" / "bin" / "python"  # the torch-free device environment (make setup-runtime)

# Raspberry Pi 4 Model B Rev 1.5 on a 64-bit kernel: `cat /proc/cpuinfo` as captured in a public script's log
# (four identical processor blocks, trailing Hardware/Revision/Serial/Model lines), serial number shortened.
PI4_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

processor\t: 1
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

processor\t: 2
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

processor\t: 3
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

Hardware\t: BCM2835
Revision\t: d03115
Serial\t\t: 10000000f090b702
Model\t\t: Raspberry Pi 4 Model B Rev 1.5
"""

# A HiSilicon Kunpeng 920 server's first processor block, as quoted in a Linux kernel mailing-list thread.
KUNPENG_CPUINFO = """processor       : 0
BogoMIPS        : 200.00
Features        : fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma dcpop asimddp asimdfhm
CPU implementer : 0x48
CPU architecture: 8
CPU variant     : 0x1
CPU part        : 0xd01
CPU revision    : 0
"""


# ------------------------------------------------------------------------------------------------- --device values


@pytest.mark.parametrize("spec, kind, arg", [("local", "local", None), ("ssh:pi@10.0.0.2", "ssh", "pi@10.0.0.2"),
                                             ("ssh:root@127.0.0.1:2222", "ssh", "root@127.0.0.1:2222"),
                                             ("adb", "adb", None), ("adb:emulator-5554", "adb", "emulator-5554"),
                                             ("arm-emu:cortex-a76", "arm-emu", "cortex-a76")])
def test_device_values_split(spec, kind, arg):
    assert split_device(spec) == (kind, arg)


def test_ssh_and_adb_specs_parse():
    t = parse_device("ssh:root@127.0.0.1:2222")
    assert (t.user, t.host, t.port, t.name, t.kind) == ("root", "127.0.0.1", 2222, "ssh:root@127.0.0.1:2222", "ssh")
    assert parse_device("ssh:board").port == 22
    assert parse_device("ssh:u@[::1]:8022").host == "::1"
    a = parse_device("adb:192.168.1.30:5555")
    assert (a.serial, a.name, a.kind) == ("192.168.1.30:5555", "adb:192.168.1.30:5555", "adb")
    assert parse_device("adb").serial is None


@pytest.mark.parametrize("spec, says", [
    ("phone", "unknown kind 'phone'"), ("ssh:", "nothing after 'ssh:'"), ("ssh", "expected ssh:USER@HOST[:PORT]"),
    ("ssh:root@", "expected ssh:USER@HOST[:PORT]"), ("ssh:root@host:99999", "port 99999"),
    ("ssh:root@host:port", "expected ssh:USER@HOST[:PORT]"), ("adb:bad serial!", "not a device serial"),
    ("local:x", "takes no argument"),
])
def test_malformed_device_is_one_line(spec, says):
    with pytest.raises(DeviceError, match=None) as e:
        parse_device(spec)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_malformed_device_on_the_command_line(tmp_path):
    line = one_line_error(run_cli("profile", tmp_path, "--device", "ssh:root@"))
    assert "--device ssh:root@: expected ssh:USER@HOST[:PORT]" in line


def test_data_set_options_are_refused_with_a_device(tmp_path):
    line = one_line_error(run_cli("validate", tmp_path, "--device", "ssh:root@127.0.0.1:1", "--limit", "2"))
    assert "--limit applies to --dataset/--dataset-dir" in line
    line = one_line_error(run_cli("validate", tmp_path, "--device", "ssh:root@127.0.0.1:1", "--reference", "x.pt"))
    assert "--reference runs the FP32 model in PyTorch on the host" in line
    line = one_line_error(run_cli("validate", tmp_path, "--device", "ssh:root@127.0.0.1:1", "--max-drop-db", "0.1"))
    assert "--max-drop-db" in line and "--max-abs" in line


# ------------------------------------------------------------------------------------------------ the runtime bundle


def test_bundle_is_deterministic_and_complete(tmp_path):
    a, b = bundle_bytes(), bundle_bytes()
    assert a == b
    names = zipfile.ZipFile(runtime_bundle(tmp_path)).namelist()
    assert names == sorted(names) and names[0] == "nsr_edge/__init__.py"
    for needed in ("nsr_edge/runtime/device_cli.py", "nsr_edge/runtime/device_info.py", "nsr_edge/runtime/card.py",
                   "nsr_edge/runtime/runners/onnxruntime_runner.py", "nsr_edge/runtime/model_card.schema.json"):
        assert needed in names
    assert not any("__pycache__" in n for n in names)
    path = runtime_bundle(tmp_path)
    assert path.name == BUNDLE_NAME and path == runtime_bundle(tmp_path)  # cached by content


def test_bundle_imports_from_a_zip_in_the_device_venv(tmp_path):
    assert DEVICE_PYTHON.exists(), f"{DEVICE_PYTHON} is missing: run `make setup-runtime` (the device environment)"
    bundle = runtime_bundle(tmp_path)
    code = ("import nsr_edge.runtime.device_cli as m, nsr_edge.runtime.card as c, sys; "
            "print(m.__file__); print('torch' in sys.modules)")
    r = subprocess.run([str(DEVICE_PYTHON), "-c", code], env={"PYTHONPATH": str(bundle), "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-800:]
    where, torch = r.stdout.split()
    assert where.startswith(str(bundle)) and torch == "False"


# ------------------------------------------------------------------------------------------------ device description


def test_pi4_cpuinfo():
    model, feats = parse_cpuinfo(PI4_CPUINFO, "aarch64")
    assert model == "Cortex-A72" and feats == ["asimd"]  # no dot product on the A72


def test_kunpeng_cpuinfo():
    model, feats = parse_cpuinfo(KUNPENG_CPUINFO, "aarch64")
    assert model == "TaiShan v110 (Kunpeng 920)"
    assert feats == ["asimd", "asimdhp", "asimddp", "asimdfhm", "asimdrdm", "fphp"]


def test_this_machines_cpuinfo():
    text = Path("/proc/cpuinfo").read_text()
    import platform

    model, feats = parse_cpuinfo(text, platform.machine())
    assert model and "model name" not in model
    if platform.machine() == "x86_64":
        flags = next(ln for ln in text.splitlines() if ln.startswith("flags")).split(":")[1].split()
        assert set(feats) <= set(flags) and ("avx2" in feats) == ("avx2" in flags)


def test_arm_core_names():
    assert arm_core_name(0x41, 0xD0B) == "Cortex-A76" and arm_core_name(0x41, 0xD03) == "Cortex-A53"
    assert arm_core_name(0x41, 0xD0C) == "Neoverse-N1" and arm_core_name(0x51, 0x805) == "Kryo 4xx Silver"
    assert arm_core_name(0x61, 0x022) == "Apple part 0x022"


# ---------------------------------------------------------------------- the shared path, for real, with no remote


def shared_ort_artifact(tmp_path_factory) -> Path:
    """A fresh copy of nsr_sr_x2 on ONNX Runtime FP32, 64 px tiles, with its stored reference outputs (as `convert`
    writes it); converted once per test session (tests/test_devices_ssh.py uses it too)."""
    import shutil

    from nsr_edge.converters.pipeline import ConvertOptions, convert

    base = tmp_path_factory.getbasetemp() / "devices-ort64"
    if not (base / "model.json").exists():
        convert(ConvertOptions("nsr_sr_x2", target="onnxruntime", tile=64, progress=False), str(base))
    copy = tmp_path_factory.mktemp("devices") / "ort64"
    shutil.copytree(base, copy)
    return copy


@pytest.fixture(scope="module")
def ort_artifact(tmp_path_factory):
    return shared_ort_artifact(tmp_path_factory)


def test_local_device_path_with_the_device_venv(ort_artifact, tmp_path):
    """`--device local --remote-python VENV`: the bundle, device_cli and the clean-up, with the torch-free venv."""
    assert DEVICE_PYTHON.exists(), f"{DEVICE_PYTHON} is missing: run `make setup-runtime` (the device environment)"
    remote = tmp_path / "remote"
    remote.mkdir()
    t = parse_device("local", DeviceOptions(remote_python=str(DEVICE_PYTHON), remote_tmp=str(remote)))
    out = tmp_path / "outputs.npz"
    r = run_on_device(t, ort_artifact, "validate", DeviceRun("validate", max_abs=1e-4, save_outputs=out))
    assert r["passed"] and r["runtime_source"] == "bundle"
    assert r["stored"]["summary"]["max_abs_vs_reference"] < 1e-4
    assert r["device"]["transport"] == "local" and r["device"]["runtime"].startswith("onnxruntime ")
    import numpy as np

    assert np.load(out)["outputs"].shape == (4, 3, 128, 128)
    assert list(remote.iterdir()) == []
    # the CLI: same path, same report; the card's record names the device
    r = run_cli("profile", ort_artifact, "--remote-python", DEVICE_PYTHON, "--remote-tmp", remote, "--runs", 3,
                "--warmup", 1, "--json", "--record")
    assert r.returncode == 0, r.stderr[-800:]
    prof = json.loads(r.stdout)
    assert prof["device"]["name"] == "local" and prof["runs"] == 3
    card = json.loads((ort_artifact / "model.json").read_text())
    assert card["profile"][-1]["device"]["python"] == prof["device"]["python"]
    assert list(remote.iterdir()) == []


def test_runtime_missing_on_the_device_is_one_line(ort_artifact, tmp_path):
    """A Python with numpy but no ONNX Runtime (a venv that sees only numpy): one line, nothing left behind."""
    import numpy

    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "only_numpy.pth").write_text(str(tmp_path / "numpy_only") + "\n")
    (tmp_path / "numpy_only").mkdir()
    np_dir = Path(numpy.__file__).parent
    (tmp_path / "numpy_only" / "numpy").symlink_to(np_dir)
    libs = np_dir.parent / "numpy.libs"
    if libs.exists():
        (tmp_path / "numpy_only" / "numpy.libs").symlink_to(libs)
    remote = tmp_path / "remote"
    remote.mkdir()
    line = one_line_error(run_cli("validate", ort_artifact, "--remote-python", venv / "bin" / "python",
                                  "--remote-tmp", remote))
    assert "lacks the onnxruntime runtime (onnxruntime)" in line and "pip install onnxruntime" in line
    assert list(remote.iterdir()) == []
    line = one_line_error(run_cli("validate", ort_artifact, "--remote-python", tmp_path / "nope" / "python"))
    assert "no Python at" in line


def test_plain_local_runs_name_the_device(ort_artifact):
    """`--device local` (the default) runs as before; its JSON and the card's record say where: this machine."""
    import platform

    r = run_cli("profile", ort_artifact, "--runs", 2, "--warmup", 0, "--json", "--record")
    assert r.returncode == 0, r.stderr[-800:]
    dev = json.loads(r.stdout)["device"]
    assert (dev["name"], dev["transport"], dev["arch"]) == ("local", "local", platform.machine())
    assert dev["runtime"].startswith("onnxruntime ") and "runtime_source" not in json.loads(r.stdout)
    card = json.loads((ort_artifact / "model.json").read_text())
    assert card["profile"][-1]["device"] == dev
