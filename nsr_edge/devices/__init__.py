"""Devices for ``nsr-edge validate|profile --device``: how to reach a machine (`base.Transport`) and the one shared
run (`base.run_on_device`). `DEVICES` maps the ``--device`` kind to its transport class (``"module:Class"``, imported
only when used); `parse_device` turns a ``--device`` value into a transport, one line for a malformed one.

    local            this machine (the default: validate/profile as without --device)
    ssh:USER@HOST[:PORT]   a board or a phone running sshd (Termux: port 8022)
    adb[:SERIAL]     an Android device over adb (Python runner or --runner benchmark binary)
    arm-emu[:CPU]    ARM kernels under qemu-user emulation (nsr_edge/devices/arm_emu.py)
"""

from __future__ import annotations

import importlib

from .base import DeviceError, DeviceOptions, DeviceRun, Transport, run_on_device

DEVICES: dict[str, str] = {
    "local": "nsr_edge.devices.local:LocalTransport",
    "ssh": "nsr_edge.devices.ssh:SshTransport",
    "adb": "nsr_edge.devices.adb:AdbTransport",
    "arm-emu": "nsr_edge.devices.arm_emu:ArmEmuTransport",
}
FORMS = "local, ssh:USER@HOST[:PORT], adb[:SERIAL], arm-emu[:CPU]"


def split_device(spec: str) -> tuple[str, str | None]:
    """``"ssh:root@h:22"`` -> ``("ssh", "root@h:22")``; ``"adb"`` -> ``("adb", None)``. One line for a malformed
    value."""
    text = (spec or "").strip()
    kind, sep, arg = text.partition(":")
    if kind not in DEVICES:
        raise DeviceError(f"--device {spec!r}: unknown kind {kind!r}; use one of {FORMS}")
    if sep and not arg:
        raise DeviceError(f"--device {spec!r}: nothing after '{kind}:'; use one of {FORMS}")
    return kind, (arg if sep else None)


def parse_device(spec: str, options: DeviceOptions | None = None) -> Transport:
    """The transport for a ``--device`` value (its class checks the part after the kind)."""
    kind, arg = split_device(spec)
    module, _, cls = DEVICES[kind].partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        raise DeviceError(f"--device {kind} is not available in this installation ({module} is missing)") from None
    return getattr(mod, cls).from_spec(arg, options or DeviceOptions())


__all__ = ["DEVICES", "DeviceError", "DeviceOptions", "DeviceRun", "Transport", "parse_device", "run_on_device",
           "split_device"]
