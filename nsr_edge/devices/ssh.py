"""``--device ssh:USER@HOST[:PORT]``: a board or phone with sshd (OpenSSH client here; Termux's sshd on a phone
listens on 8022). Key authentication only (``BatchMode=yes``: never a password prompt), ``--ssh-key`` for a key
file, ``--ssh-option KEY=VALUE`` for any other ``ssh -o`` option; an unknown host key is accepted and remembered the
first time (``StrictHostKeyChecking=accept-new``), a changed one is refused. Files go as a tar stream over the same
ssh (the device needs ``tar``, ``mktemp`` and a POSIX shell: any Linux, BusyBox, Android's toybox)."""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
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

_SPEC = re.compile(r"^(?:(?P<user>[^@\s:/]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>\d+))?$")

# ssh's own failures (exit code 255), by what its last line says
_SSH_ERRORS = (
    (re.compile(r"Connection refused"), "connection refused (is sshd running there, on that port?)"),
    (re.compile(r"Connection timed out|Operation timed out|timed out during banner exchange"),
     "connection timed out (host down or port filtered?)"),
    (re.compile(r"No route to host|Network is unreachable"), "no route to the host"),
    (re.compile(r"Could not resolve hostname|Name or service not known|nodename nor servname"), "unknown host name"),
    (re.compile(r"Permission denied"), "authentication refused (key-only, no password prompt: pass the right key with "
                                       "--ssh-key, or add yours to the device's ~/.ssh/authorized_keys)"),
    (re.compile(r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED"),
     "host key verification failed (the device's host key changed: check it, then fix ~/.ssh/known_hosts)"),
    (re.compile(r"closed by remote host|Connection reset|Broken pipe|Connection closed|client_loop|"
                r"Timeout, server .* not responding|kex_exchange_identification"), "the connection dropped"),
)


class SshTransport(Transport):
    kind = "ssh"

    def __init__(self, user: str | None, host: str, port: int, options: DeviceOptions) -> None:
        self.user, self.host, self.port = user, host, port
        self.python = options.remote_python or "python3"
        self.key = options.ssh_key
        self.tmp_root = options.remote_tmp or "/tmp"
        self.connect_timeout = options.connect_timeout
        self.ssh_options = tuple(options.ssh_options)
        self._control_dir: str | None = None  # one multiplexed connection per run (ControlMaster): ~0.6 s per call saved
        self.name = f"ssh:{user + '@' if user else ''}{host}:{port}"
        if self.key and not Path(self.key).is_file():
            raise DeviceError(f"--ssh-key {self.key}: no such file")

    @classmethod
    def from_spec(cls, arg: str | None, options: DeviceOptions) -> "SshTransport":
        m = _SPEC.match(arg or "")
        if not m:
            raise DeviceError(f"--device ssh:{arg or ''}: expected ssh:USER@HOST[:PORT] (e.g. ssh:pi@192.168.1.20, "
                              "ssh:u0_a123@phone:8022)")
        port = int(m["port"] or 22)
        if not 0 < port < 65536:
            raise DeviceError(f"--device ssh:{arg}: port {port} is not in 1..65535")
        return cls(m["user"], m["host"].strip("[]"), port, options)

    # -- command builders
    def target(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}"

    def _options(self) -> list[str]:
        argv = ["-p", str(self.port), "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}",
                "-o", "StrictHostKeyChecking=accept-new", "-o", "ServerAliveInterval=5",
                "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR"]
        if self.key:
            argv += ["-i", self.key, "-o", "IdentitiesOnly=yes"]
        for opt in self.ssh_options:
            argv += ["-o", opt]
        return argv

    def _control_path(self) -> str:
        return f"{self._control_dir}/cm"

    def ssh_argv(self) -> list[str]:
        """``ssh`` with our options, through the shared connection when one is open (a plain connection when it is
        gone: ControlMaster=no falls back to connecting)."""
        mux = ["-o", f"ControlPath={self._control_path()}", "-o", "ControlMaster=no"] if self._control_dir else []
        return ["ssh"] + self._options() + mux + [self.target()]

    def connect(self) -> None:
        """Open the shared connection (a background ``ssh -M``, gone after 60 s idle or at `close`): unreachable
        hosts and refused keys fail here, in one line."""
        if self._control_dir:
            return
        # a short folder: a Unix socket path must stay under ~100 bytes, whatever $TMPDIR is
        cdir = tempfile.mkdtemp(prefix="nsr-edge-ssh.", dir="/tmp" if os.access("/tmp", os.W_OK) else None)
        argv = ["ssh"] + self._options() + ["-o", "ControlMaster=yes", "-o", f"ControlPath={cdir}/cm",
                                            "-o", "ControlPersist=60", "-N", "-f", self.target()]
        with tempfile.TemporaryFile() as err:  # a file, not a pipe: the backgrounded master keeps its stderr
            try:
                code = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                      timeout=self.connect_timeout + 30).returncode
            except FileNotFoundError:
                shutil.rmtree(cdir, ignore_errors=True)
                raise DeviceError("the OpenSSH client (ssh) is not installed here: apt-get install openssh-client") from None
            except subprocess.TimeoutExpired:
                shutil.rmtree(cdir, ignore_errors=True)
                raise DeviceError(f"{self.describe()}: no answer within {self.connect_timeout + 30} s") from None
            err.seek(0)
            text = err.read().decode(errors="replace")
        if code != 0:
            shutil.rmtree(cdir, ignore_errors=True)
            raise self._fail(subprocess.CompletedProcess(argv, code, "", text), "connect")
        self._control_dir = cdir

    def close(self) -> None:
        if self._control_dir:
            subprocess.run(["ssh"] + self._options() + ["-o", f"ControlPath={self._control_path()}", "-O", "exit",
                                                        self.target()],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
            shutil.rmtree(self._control_dir, ignore_errors=True)
            self._control_dir = None

    def remote(self, command: str) -> list[str]:
        """argv running one shell ``command`` on the device (ssh sends it as one string to the login shell)."""
        return self.ssh_argv() + ["--", command]

    def describe(self) -> str:
        return f"{self.target()} port {self.port} (ssh)"

    def python_argv(self) -> list[str]:
        return shlex.split(self.python)

    # -- running
    def _ssh(self, command: str, timeout: float, stdin: bytes | None = None,
             text: bool = True) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(self.remote(command), input=stdin if stdin is not None else None,
                                  stdin=None if stdin is not None else subprocess.DEVNULL, capture_output=True,
                                  text=text if stdin is None else False, timeout=timeout)
        except FileNotFoundError:
            raise DeviceError("the OpenSSH client (ssh) is not installed here: apt-get install openssh-client") from None
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.describe()}: no answer within {timeout:g} s") from None

    def _fail(self, proc: subprocess.CompletedProcess, doing: str) -> DeviceError:
        err = proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else proc.stderr
        tail = last_line(err)
        for pattern, what in _SSH_ERRORS:
            if pattern.search(err or ""):
                return DeviceError(f"{self.describe()}: {what}" + ("" if doing == "connect" else f" while {doing}"))
        if proc.returncode == 255 and doing != "connect":  # ssh's own failure after it had connected
            return DeviceError(f"{self.describe()}: the connection dropped while {doing}" + (f": {tail}" if tail else ""))
        return DeviceError(f"{self.describe()}: {doing} failed: {tail or f'exit code {proc.returncode}'}")

    def check(self, runner: str | None = None) -> None:
        self.connect()
        cmd = shlex.join(self.python_argv() + ["-c", probe_script(runner)])
        proc = self._ssh(cmd, timeout=self.connect_timeout + 60)
        if proc.returncode == 255:
            raise self._fail(proc, "connect")
        read_probe(self, proc, runner)

    def make_temp_dir(self) -> str:
        base = shlex.quote(self.tmp_root)
        proc = self._ssh(f"mktemp -d {base}/{REMOTE_DIR_PREFIX}XXXXXX", timeout=self.connect_timeout + 30)
        path = proc.stdout.strip()
        if proc.returncode != 0 or not path.startswith("/"):
            raise self._fail(proc, f"making a temporary folder in {self.tmp_root}")
        return path

    def push(self, local: Path, remote_dir: str) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(str(local), arcname=local.name, filter=_plain)
        proc = self._ssh(f"tar -C {shlex.quote(remote_dir)} -xf -", timeout=COPY_TIMEOUT_S, stdin=buf.getvalue())
        if proc.returncode != 0:
            raise self._fail(proc, f"copying {local.name}")

    def run(self, argv: list[str], timeout: float, env: dict[str, str],
            pid_file: str | None = None) -> subprocess.CompletedProcess:
        proc = self._ssh(shell_command(argv, env, pid_file=pid_file), timeout=timeout)
        if proc.returncode == 255:
            raise self._fail(proc, "running")
        return proc

    def fetch(self, remote_path: str, local: Path) -> None:
        proc = self._ssh(f"cat {shlex.quote(remote_path)}", timeout=COPY_TIMEOUT_S, stdin=b"")
        if proc.returncode != 0:
            raise self._fail(proc, f"fetching {remote_path}")
        Path(local).write_bytes(proc.stdout)

    def remove(self, remote_dir: str) -> None:
        proc = self._ssh(remove_command(remote_dir), timeout=self.connect_timeout + 30)
        if proc.returncode != 0:
            raise self._fail(proc, f"removing {remote_dir}")


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Files and folders only, owned by whoever unpacks them (no links, devices or our uid on the device)."""
    if not (info.isfile() or info.isdir()) or "__pycache__" in info.name.split("/"):
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


__all__ = ["SshTransport"]
