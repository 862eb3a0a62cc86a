"""``--device adb[:SERIAL]``: an Android device over adb (``adb -s SERIAL push / shell / pull``), temporary folder
under ``/data/local/tmp``. Two ways to run there:

- our Python runner, with a Python the adb shell user can execute (``--remote-python``; Termux's lives in its app's
  private folder, which the shell user cannot enter on a stock phone: there, run Termux's sshd and use
  ``--device ssh:USER@PHONE:8022`` instead);
- a runtime's native benchmark binary (``--runner PATH``: ExecuTorch ``executor_runner``, LiteRT
  ``benchmark_model``, built for the phone's ABI), profile only (`native`).

Not yet run against a phone: no device or emulator was reachable where this was written. The command lines are
unit-tested, and the push / run / fetch / clean-up logic is the same `base.run_on_device` that the ssh tests
exercise for real. ``adb shell`` returns the remote exit code since Android 7 (shell protocol v2), which this relies on.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

from .base import (
    COPY_TIMEOUT_S,
    REMOTE_DIR_PREFIX,
    DeviceError,
    DeviceOptions,
    Transport,
    last_line,
    probe_script,
    read_probe,
    remove_command,
    shell_command,
)

DEFAULT_TMP = "/data/local/tmp"
_SERIAL = re.compile(r"^[A-Za-z0-9._:\-\[\]]+$")
# adb's own failures (the device went away, is offline, unauthorised or not there)
_ADB_ERRORS = (
    (re.compile(r"no devices/emulators found|device '.*' not found|device not found"), "no such device connected"),
    (re.compile(r"unauthorized"), "the device has not authorised this computer (accept the USB debugging prompt)"),
    (re.compile(r"device offline|device still connecting"), "the device is offline"),
    (re.compile(r"more than one device"), "more than one device is connected: name one with adb:SERIAL"),
    (re.compile(r"closed|protocol fault|connection reset|Broken pipe", re.I), "the connection to the device dropped"),
)


class AdbTransport(Transport):
    kind = "adb"

    def __init__(self, serial: str | None, options: DeviceOptions) -> None:
        self.serial = serial
        self.python = options.remote_python
        self.tmp_root = options.remote_tmp or DEFAULT_TMP
        self.name = f"adb:{serial}" if serial else "adb"

    @classmethod
    def from_spec(cls, arg: str | None, options: DeviceOptions) -> "AdbTransport":
        if arg is not None and not _SERIAL.match(arg):
            raise DeviceError(f"--device adb:{arg}: not a device serial (see `adb devices`; e.g. adb:emulator-5554, "
                              "adb:192.168.1.30:5555)")
        return cls(arg, options)

    # -- command builders (unit-tested: tests/test_devices_adb.py)
    def adb(self, *args: str) -> list[str]:
        return ["adb"] + (["-s", self.serial] if self.serial else []) + list(args)

    def shell(self, command: str) -> list[str]:
        """``adb shell`` with one command line (adb passes it to the device's sh as one string)."""
        return self.adb("shell", command)

    def describe(self) -> str:
        return f"Android device {self.serial or '(the only one connected)'} (adb)"

    def python_argv(self) -> list[str]:
        if not self.python:
            raise DeviceError(f"{self.describe()}: --remote-python is needed for the Python runner (Android has no "
                              "Python; or time a native benchmark binary with --runner)")
        return shlex.split(self.python)

    # -- running
    def _adb(self, argv: list[str], timeout: float, text: bool = True) -> subprocess.CompletedProcess:
        if shutil.which("adb") is None:
            raise DeviceError("adb is not installed here: apt-get install adb (Debian) or the Android platform-tools")
        try:
            return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=text, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.describe()}: no answer within {timeout:g} s") from None

    def _fail(self, proc: subprocess.CompletedProcess, doing: str) -> DeviceError:
        err = proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else (proc.stderr or "")
        out = proc.stdout.decode(errors="replace") if isinstance(proc.stdout, bytes) else (proc.stdout or "")
        for pattern, what in _ADB_ERRORS:
            if pattern.search(err) or pattern.search(out[-300:]):
                return DeviceError(f"{self.describe()}: {what} (while {doing})")
        return DeviceError(f"{self.describe()}: {doing} failed: {last_line(err) or last_line(out) or proc.returncode}")

    def _state(self) -> None:
        proc = self._adb(self.adb("get-state"), 30)
        if proc.returncode != 0 or proc.stdout.strip() != "device":
            raise self._fail(proc, "connecting")

    def check(self, runner: str | None = None) -> None:
        self._state()
        proc = self._adb(self.shell(shlex.join(self.python_argv() + ["-c", probe_script(runner)])), 90)
        read_probe(self, proc, runner)

    def check_shell(self) -> None:
        self._state()

    def make_temp_dir(self) -> str:
        proc = self._adb(self.shell(f"mktemp -d {shlex.quote(self.tmp_root)}/{REMOTE_DIR_PREFIX}XXXXXX"), 60)
        path = proc.stdout.strip()
        if proc.returncode != 0 or not path.startswith("/"):
            raise self._fail(proc, f"making a temporary folder in {self.tmp_root}")
        return path

    def push(self, local: Path, remote_dir: str) -> None:
        # adb push of a folder into an existing folder creates remote_dir/<name>, as cp -r does
        proc = self._adb(self.adb("push", str(local), f"{remote_dir}/"), COPY_TIMEOUT_S)
        if proc.returncode != 0:
            raise self._fail(proc, f"pushing {local.name}")

    def run(self, argv: list[str], timeout: float, env: dict[str, str],
            pid_file: str | None = None) -> subprocess.CompletedProcess:
        proc = self._adb(self.shell(shell_command(argv, env, pid_file=pid_file)), timeout)
        if proc.returncode != 0 and any(p.search(proc.stderr or "") for p, _ in _ADB_ERRORS):
            raise self._fail(proc, "running")
        return proc

    def fetch(self, remote_path: str, local: Path) -> None:
        proc = self._adb(self.adb("pull", remote_path, str(local)), COPY_TIMEOUT_S)
        if proc.returncode != 0:
            raise self._fail(proc, f"pulling {remote_path}")

    def remove(self, remote_dir: str) -> None:
        proc = self._adb(self.shell(remove_command(remote_dir)), 60)
        if proc.returncode != 0:
            raise self._fail(proc, f"removing {remote_dir}")


__all__ = ["AdbTransport", "DEFAULT_TMP"]
