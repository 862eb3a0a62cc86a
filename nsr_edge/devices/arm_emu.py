"""``--device arm-emu[:CPU]``: run an artifact on the real ARM kernels of its runtime under qemu-user emulation.

CPU: ``cortex-a53``, ``cortex-a72``, ``cortex-a76`` (default), ``neoverse-n1`` or ``max`` (qemu ``-cpu``). The
"device" is this machine: ``qemu-aarch64 -cpu CPU -L VIEW ROOTFS/usr/bin/python3.11`` over the cached aarch64 root
filesystem (`arm_rootfs`: built once with ``python -m nsr_edge.devices.arm_rootfs``, refused in one line when absent
or half built). No chroot and no binfmt_misc: qemu's ``-L`` prefix redirects only the paths that exist under it, so
the guest sees the root filesystem's ``/usr``, ``/lib``, ``/etc``, ``/opt/nsr-edge/site`` (the aarch64 wheels), an
ARM ``/proc/cpuinfo`` made for the emulated core (the view), and the host's ``/tmp``, ``/sys`` and ``/proc``
otherwise. The "remote" temporary folder is a host folder under ``/tmp``; pushing and fetching are copies.

Under qemu-user without binfmt_misc no child process can be started, so the runtime runs inside ``device_cli``
(``--in-process``). ``validate`` runs as on any device (`base.run_on_device`: the stored reference tiles, FP32
comparison, ``--save-outputs``); `compare_with_host` then runs the same artifact on the same tiles on this machine
and compares the ARM outputs with the x86 ones (bit-exact, or max-abs, differing values and Y-PSNR). ``profile``
counts instructions instead of timing (emulated seconds say nothing about an ARM core): the guest runs
`nsr_edge.runtime.instruction_count` with the nsr-edge TCG plugin loaded, and the result carries an
``instruction_count`` record (`card.InstructionCountRecord`) instead of latencies.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from . import arm_rootfs
from .base import (
    REMOTE_DIR_PREFIX,
    DeviceError,
    DeviceOptions,
    DeviceRun,
    Transport,
    run_on_device,
)
from .local import HostFiles, run_host_process

DEFAULT_CPU = "cortex-a76"
INSN_LOG = "insn.log"


def no_aslr_prefix() -> list[str]:
    """``setarch ARCH -R``: qemu (and so the guest) without address randomisation, so the guest's allocations (and
    alignment-dependent code paths in memcpy and the kernels) are the same in every run: repeatable instruction
    counts. (util-linux's setarch rather than a preexec_fn: no Python runs between fork and exec.)"""
    setarch = shutil.which("setarch")
    return [setarch, platform.machine(), "-R"] if setarch else []


def qemu_version() -> str:
    try:
        out = subprocess.run(["qemu-aarch64", "--version"], capture_output=True, text=True, timeout=30,
                             check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (out.splitlines() or ["unknown"])[0].replace("qemu-aarch64 version ", "")


class ArmEmuTransport(HostFiles, Transport):
    kind = "arm-emu"
    in_process = True

    def __init__(self, cpu: str, options: DeviceOptions) -> None:
        try:
            self.cpu = arm_rootfs.check_cpu(cpu)
        except UserError as e:  # -> DeviceError, one line
            raise DeviceError(f"--device arm-emu:{cpu}: {e}") from None
        self.name = f"arm-emu:{self.cpu}"
        self.tmp_root = options.remote_tmp or "/tmp"
        self.count_instructions = False  # set by `profile` runs (run() adds the plugin)
        self._view: Path | None = None

    @classmethod
    def from_spec(cls, arg: str | None, options: DeviceOptions) -> ArmEmuTransport:
        return cls(arg or DEFAULT_CPU, options)

    def describe(self) -> str:
        return f"ARM emulation ({self.cpu}, qemu-user)"

    # -- the emulator and its root filesystem
    def _ready_view(self) -> Path:
        if self._view is None:
            if shutil.which("qemu-aarch64") is None:
                raise DeviceError(f"{self.describe()}: qemu-aarch64 is not installed (apt-get install qemu-user)")
            try:
                arm_rootfs.ensure_ready()
                self._view = arm_rootfs.view(self.cpu)
            except DeviceError:
                raise
            except (UserError, OSError) as e:  # the root filesystem or its view: one line
                raise DeviceError(f"{self.describe()}: {e}") from None
        return self._view

    def check(self, runner: str | None = None) -> None:
        self._ready_view()
        root = arm_rootfs.rootfs_dir()
        from .base import RUNTIME_MODULES

        for alts in [("numpy",)] + list(RUNTIME_MODULES.get(runner or "", ())):
            if not any(arm_rootfs.has_module(root, m) for m in alts):
                hint = (" (ExecuTorch needs aarch64 torch, which the root filesystem does not have: docs/arm.md)"
                        if runner in ("executorch", "dispatch") else "")
                raise DeviceError(f"{self.describe()}: the ARM root filesystem lacks the {runner} runtime "
                                  f"({' or '.join(alts)}){hint}")

    def python_argv(self) -> list[str]:
        view = self._ready_view()
        return ["qemu-aarch64", "-cpu", self.cpu, "-L", str(view), str(arm_rootfs.rootfs_dir() / arm_rootfs.PYTHON)]

    def make_temp_dir(self) -> str:
        """A new folder under /tmp (absent from the root filesystem, so the guest sees this host folder at the same
        path), named by the first free counter rather than at random: the guest's paths, hence its strings, string
        hashes and dict layouts, are the same in every run, and so are the instructions counted."""
        root = Path(self.tmp_root)
        for n in range(10000):
            d = root / f"{REMOTE_DIR_PREFIX}arm{n:04d}"
            try:
                d.mkdir(mode=0o700)
            except FileExistsError:
                continue
            except OSError as e:
                raise DeviceError(f"cannot make a temporary folder in {root}: {e.strerror}") from None
            return str(d)
        return tempfile.mkdtemp(prefix=REMOTE_DIR_PREFIX, dir=self.tmp_root)

    def push(self, local: Path, remote_dir: str) -> None:
        dest = Path(remote_dir) / Path(local).name
        if Path(local).is_dir():
            shutil.copytree(local, dest)
        else:
            shutil.copyfile(local, dest)

    def guest_env(self, env: dict[str, str]) -> dict[str, str]:
        """The guest's environment: a clean one (nothing of the host's Python leaks in) with the aarch64 wheels on
        PYTHONPATH after what the caller put there, and a fixed hash seed (repeatable runs)."""
        site = f"/{arm_rootfs.SITE}"
        path = env.get("PYTHONPATH")
        return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp", "PYTHONHASHSEED": "0",
                "NSR_EDGE_ARM_CPU": self.cpu, **env, "PYTHONPATH": f"{path}:{site}" if path else site}

    def run(self, argv: list[str], timeout: float, env: dict[str, str],
            pid_file: str | None = None) -> subprocess.CompletedProcess:
        argv = list(argv)
        env = dict(env)
        if "nsr_edge.runtime.device_cli" in argv and "profile" in argv:
            # Under emulation a profile counts instructions (never emulated seconds): the same argv, another module,
            # the plugin loaded, its log in the run's temporary folder.
            i = argv.index("nsr_edge.runtime.device_cli")
            argv[i] = "nsr_edge.runtime.instruction_count"
            log = str(Path(pid_file).parent / INSN_LOG) if pid_file else tempfile.mktemp(prefix="nsr-edge-insn.")
            try:
                plugin = arm_rootfs.plugin_path()
            except UserError as e:  # no gcc
                raise DeviceError(f"{self.describe()}: {e}") from None
            argv[1:1] = ["-plugin", str(plugin), "-d", "plugin", "-D", log]
            env["NSR_EDGE_INSN_LOG"] = log
        # cwd: a folder without an nsr_edge package (python -m puts the cwd first on sys.path)
        cwd = str(Path(pid_file).parent) if pid_file else self.tmp_root
        return run_host_process(self, no_aslr_prefix() + argv, self.guest_env(env), timeout, pid_file, cwd)

    # -- nsr-edge validate|profile --device arm-emu:CPU (the hooks of base.Transport)
    def validate_command(self, args: Any, card: Any) -> int:
        """The device run on the stored reference tiles (vs FP32, the tolerances as on any device) plus the ARM vs
        x86 comparison on the same tiles."""
        import dataclasses
        import sys

        from ..commands._common import print_json
        from ..runtime import validate as V
        from ..runtime.card import record_validation
        from ..runtime.reference_outputs import load_reference_outputs
        from .commands import device_line, stored_summary

        load_reference_outputs(args.artifact, card)  # refused before the emulator starts
        tol = V.Tolerances(None, args.min_psnr_vs_reference, args.max_abs)
        result = validate_on_arm(args.artifact, self.cpu, args.threads, transport=self, max_abs=args.max_abs,
                                 min_psnr_vs_reference=args.min_psnr_vs_reference)
        stored = result["stored"]
        summary, fails = stored_summary(stored, tol)
        label = f"{stored['reference']['dataset']} (stored reference tiles)"
        report = {"stored": stored, "summary": summary, "arm": result["arm"], "dataset": label,
                  "reference": "stored", "passed": not fails, "device": result["device"]}
        if args.record:
            from ..runtime.card import DeviceInfo

            rec = V.validation_record(label, summary, tol, not fails, card.runner)
            record_validation(args.artifact, dataclasses.replace(rec, device=DeviceInfo(**result["device"])))
        if args.json:
            print_json(report)
        else:
            print(V.format_stored(stored, f"{card.title} on {result['device']['name']}"))
            print(format_arm_validation(result))
            print(device_line(result["device"]))
        for f in fails:
            print(f"nsr-edge validate: FAILED: {f}", file=sys.stderr)
        return 1 if fails else 0

    def profile_command(self, args: Any, card: Any) -> int:
        """Instructions per tile (and per output megapixel, by class) on the emulated core; never seconds."""
        from ..commands._common import print_json
        from .commands import device_line

        if getattr(args, "runner", None):
            raise UserError("--runner runs a native binary on a real device; under arm-emu the Python runner counts "
                            "instructions")
        if getattr(args, "per_op", False):
            raise UserError("--per-op is not available with --device arm-emu (instruction counts are per inference "
                            "call)")
        if args.threads != 1:
            raise UserError("--device arm-emu counts instructions with --threads 1 (the counters are shared by all "
                            "threads)")
        result = count_instructions(args.artifact, self.cpu, runs=min(args.runs, 5), warmup=min(args.warmup, 2),
                                    record=bool(args.record), transport=self)
        if args.json:
            print_json(result)
            return 0
        print(format_instruction_count(result, card.title))
        print(device_line(result["device"]))
        return 0



# ------------------------------------------------------------------------------------- host-side helpers (toolkit)


def y_channel(x: np.ndarray) -> np.ndarray:
    """BT.601 Y (the published SR convention, 8-bit scale) of NCHW [0, 1] tiles; gray tiles as they are."""
    if x.shape[1] == 1:
        return x[:, 0] * 255.0
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    return 16.0 + 65.481 * r + 128.553 * g + 24.966 * b


def y_psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    """Y-PSNR (dB, peak 255) of two output batches after 8-bit rounding; None when identical."""
    ya = y_channel(np.clip(np.round(np.clip(a, 0, 1) * 255) / 255, 0, 1).astype(np.float64))
    yb = y_channel(np.clip(np.round(np.clip(b, 0, 1) * 255) / 255, 0, 1).astype(np.float64))
    mse = float(np.mean((ya - yb) ** 2))
    return None if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def diff_stats(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return {"bit_exact": bool(np.array_equal(a, b)), "max_abs": float(d.max()) if d.size else 0.0,
            "differing": int(np.count_nonzero(a != b)), "values": int(a.size),
            "differing_8bit": int(np.count_nonzero(np.round(np.clip(a, 0, 1) * 255) != np.round(np.clip(b, 0, 1) * 255))),
            "y_psnr": y_psnr(a, b)}


def host_outputs(artifact_dir: str | os.PathLike, threads: int = 1) -> np.ndarray:
    """This machine's outputs of the artifact on its stored reference tiles (its runner in a child process)."""
    from ..runtime.card import artifact_path, load_card
    from ..runtime.reference_outputs import load_reference_outputs
    from ..runtime.runners.child import RunnerProcess

    card = load_card(artifact_dir)
    inputs, _ = load_reference_outputs(artifact_dir, card)
    with RunnerProcess(card.runner, str(artifact_path(artifact_dir, card)), "forward", threads) as proc:
        return proc.run(inputs)


def compare_with_host(artifact_dir: str | os.PathLike, arm_outputs: np.ndarray,
                      host: np.ndarray | None = None) -> dict[str, Any]:
    """ARM outputs vs this machine's and vs the stored FP32 PyTorch outputs, on the same stored tiles."""
    from ..runtime.card import load_card
    from ..runtime.reference_outputs import load_reference_outputs

    card = load_card(artifact_dir)
    _, ref = load_reference_outputs(artifact_dir, card)
    host = host_outputs(artifact_dir) if host is None else host
    return {"arm_vs_host": diff_stats(arm_outputs, host), "arm_vs_fp32": diff_stats(arm_outputs, ref),
            "host_vs_fp32": diff_stats(host, ref), "tiles": len(ref)}


def validate_on_arm(artifact_dir: str | os.PathLike, cpu: str = DEFAULT_CPU, threads: int = 1,
                    timeout: float = 3600.0, transport: ArmEmuTransport | None = None, max_abs: float | None = None,
                    min_psnr_vs_reference: float | None = None) -> dict[str, Any]:
    """``validate --device arm-emu:CPU``: the device run (stored tiles vs FP32) plus the ARM-vs-host comparison
    (``arm`` key: `compare_with_host`)."""
    transport = transport or ArmEmuTransport(cpu, DeviceOptions())
    with tempfile.TemporaryDirectory(prefix="nsr-edge-arm-") as tmp:
        saved = Path(tmp) / "outputs.npz"
        result = run_on_device(transport, artifact_dir, "validate",
                               DeviceRun("validate", threads=threads, save_outputs=saved, in_process=True,
                                         timeout=timeout, max_abs=max_abs,
                                         min_psnr_vs_reference=min_psnr_vs_reference))
        with np.load(saved) as z:
            arm = z["outputs"]
    result["arm"] = compare_with_host(artifact_dir, arm)
    return result


def count_instructions(artifact_dir: str | os.PathLike, cpu: str = DEFAULT_CPU, runs: int = 5, tiles: int = 2,
                       warmup: int = 2, record: bool = False, timeout: float = 3600.0,
                       transport: ArmEmuTransport | None = None) -> dict[str, Any]:
    """``profile --device arm-emu:CPU``: guest instructions per tile (and per megapixel, by class) of the artifact's
    inference call on the emulated core; with ``record`` the card gets an `InstructionCountRecord`."""
    transport = transport or ArmEmuTransport(cpu, DeviceOptions())
    result = run_on_device(transport, artifact_dir, "profile",
                           DeviceRun("profile", threads=1, runs=runs, warmup=warmup, in_process=True,
                                     timeout=timeout, extra_env={"NSR_EDGE_INSN_TILES": str(int(tiles))}))
    if "instruction_count" not in result:
        raise DeviceError(f"on {transport.describe()}: the device run returned no instruction count")
    result["instruction_count"]["cpu"] = cpu
    if record:
        record_result(artifact_dir, result)
    return result


def instruction_record(result: dict[str, Any]) -> Any:
    """The `card.InstructionCountRecord` of a `count_instructions` result."""
    from ..runtime.card import DeviceInfo, InstructionCountRecord

    ic = dict(result["instruction_count"])
    dev = result.get("device")
    device = DeviceInfo(**dev) if isinstance(dev, dict) else None
    return InstructionCountRecord(recorded=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), device=device, **ic)


def record_result(artifact_dir: str | os.PathLike, result: dict[str, Any]) -> None:
    from ..runtime.card import record_instruction_count

    record_instruction_count(artifact_dir, instruction_record(result))


def format_instruction_count(result: dict[str, Any], title: str = "") -> str:
    ic = result["instruction_count"]
    cls = ", ".join(f"{k} {v / ic['per_tile']:.1%}" for k, v in ic["classes"].items() if v) if ic["per_tile"] else ""
    lines = [title] if title else []
    lines.append(f"{ic['cpu']} (qemu-user, emulated): {ic['per_tile'] / 1e6:.2f} M instructions per tile "
                 f"({ic['tile']} px), {ic['per_megapixel'] / 1e9:.3f} G per output megapixel; {cls}; "
                 f"{ic['runs']} counts, spread {ic['spread']:.2e}. Instructions, not time.")
    return "\n".join(lines)


def format_arm_validation(result: dict[str, Any], title: str = "") -> str:
    a = result["arm"]
    lines = [title] if title else []

    def line(name: str, s: dict[str, Any]) -> str:
        if s["bit_exact"]:
            return f"  {name}: bit-exact ({s['values']} values)"
        yp = "inf" if s["y_psnr"] is None else f"{s['y_psnr']:.2f}"
        return (f"  {name}: max |diff| {s['max_abs']:.3e}, {s['differing']}/{s['values']} values differ "
                f"({s['differing_8bit']} after 8-bit rounding), Y-PSNR {yp} dB")

    lines.append(f"{result.get('device', {}).get('name', 'arm-emu')} on {a['tiles']} stored tiles:")
    lines += [line("ARM vs x86 (this machine)", a["arm_vs_host"]), line("ARM vs FP32 PyTorch", a["arm_vs_fp32"]),
              line("x86 vs FP32 PyTorch", a["host_vs_fp32"])]
    return "\n".join(lines)


__all__ = [
    "DEFAULT_CPU",
    "ArmEmuTransport",
    "compare_with_host",
    "count_instructions",
    "format_arm_validation",
    "format_instruction_count",
    "host_outputs",
    "instruction_record",
    "record_result",
    "validate_on_arm",
]
