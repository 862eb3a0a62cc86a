"""``--device local``: this machine. `nsr-edge validate|profile` without ``--remote-python`` keep their in-process
path (PyTorch reference, data sets); with ``--remote-python`` (e.g. the torch-free device venv) the run goes
through the shared device path (`base.run_on_device`) with that interpreter, exactly as on a remote device."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .base import (
    REMOTE_DIR_PREFIX,
    DeviceError,
    DeviceOptions,
    Transport,
    probe_script,
    read_probe,
)


class HostFiles:
    """fetch/remove for transports whose "device" folders are folders of this machine (local, arm-emu)."""

    def fetch(self, remote_path: str, local: Path) -> None:
        try:
            shutil.copyfile(remote_path, local)
        except OSError as e:
            raise DeviceError(f"on {self.describe()}: cannot copy {remote_path} to {local}: {e.strerror}") from None

    def remove(self, remote_dir: str) -> None:
        d = Path(remote_dir)
        if not d.name.startswith(REMOTE_DIR_PREFIX):
            raise DeviceError(f"refusing to remove {remote_dir!r}: not a folder nsr-edge made")
        shutil.rmtree(d, ignore_errors=True)
        if d.exists():
            raise DeviceError(f"{remote_dir} could not be removed")


class LocalTransport(HostFiles, Transport):
    kind = "local"

    def __init__(self, options: DeviceOptions) -> None:
        self.name = "local"
        self.python = options.remote_python or sys.executable
        self.tmp_root = options.remote_tmp

    @classmethod
    def from_spec(cls, arg: str | None, options: DeviceOptions) -> "LocalTransport":
        if arg:
            raise DeviceError(f"--device local takes no argument, got 'local:{arg}'")
        return cls(options)

    @property
    def uses_toolkit(self) -> bool:
        """True when validate/profile should run as without --device (no other interpreter asked for)."""
        return self.python == sys.executable

    def describe(self) -> str:
        return "this machine" + ("" if self.uses_toolkit else f" ({self.python})")

    def python_argv(self) -> list[str]:
        return [self.python]

    def check(self, runner: str | None = None) -> None:
        try:
            proc = subprocess.run(self.python_argv() + ["-c", probe_script(runner)], capture_output=True, text=True,
                                  timeout=60)
        except FileNotFoundError:
            raise DeviceError(f"{self.describe()}: no Python at {self.python!r} (--remote-python)") from None
        except PermissionError:
            raise DeviceError(f"{self.describe()}: {self.python!r} is not executable (--remote-python)") from None
        read_probe(self, proc, runner)

    def make_temp_dir(self) -> str:
        return tempfile.mkdtemp(prefix=REMOTE_DIR_PREFIX, dir=self.tmp_root)

    def push(self, local: Path, remote_dir: str) -> None:
        dest = Path(remote_dir) / local.name
        if local.is_dir():
            shutil.copytree(local, dest)
        else:
            shutil.copyfile(local, dest)

    def run(self, argv: list[str], timeout: float, env: dict[str, str],
            pid_file: str | None = None) -> subprocess.CompletedProcess:
        return run_host_process(self, argv, {**os.environ, **env}, timeout, pid_file)



def run_host_process(transport: Transport, argv: list[str], env: dict[str, str], timeout: float,
                     pid_file: str | None = None, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run a device command as a process of this machine (local, arm-emu): output captured, its pid in ``pid_file``
    while it runs (for the shared clean-up), killed and reaped on a timeout or an interrupt."""
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd) as proc:
        if pid_file:
            Path(pid_file).write_text(f"{proc.pid}\n")
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise DeviceError(f"on {transport.describe()}: the run did not finish within {timeout:g} s") from None
        except BaseException:
            proc.kill()
            proc.communicate()
            raise
        finally:
            if pid_file:  # reaped: the pid may be anyone's from now on
                Path(pid_file).unlink(missing_ok=True)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


__all__ = ["LocalTransport", "HostFiles", "run_host_process"]
