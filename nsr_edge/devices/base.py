"""Run ``validate`` / ``profile`` on another machine: one small `Transport` interface (how to reach a device) and one
shared `run_on_device` (what to do there), so ssh, adb and ARM emulation differ only in their command builders.

`run_on_device`: make a temporary folder on the device, push a self-contained runtime bundle (`runtime_bundle`: a
zip of ``nsr_edge/__init__.py`` + ``nsr_edge/runtime/**``, importable from ``PYTHONPATH``; numpy and the artifact's
runtime are the device's own) and the artifact folder, run ``python -m nsr_edge.runtime.device_cli`` there, read
its JSON (and fetch the ``--save-outputs`` file), and always remove the temporary folder: on success, on failure, on
Ctrl-C, on SIGTERM and after a dropped connection (a new connection removes it and stops a runner still going).
Every failure is one line (`UserError`) naming the device and what is missing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError

# runner -> Python modules that provide it on the device (any one of each tuple), checked before anything is pushed.
RUNTIME_MODULES: dict[str, tuple[tuple[str, ...], ...]] = {
    "onnxruntime": (("onnxruntime",),),
    "litert": (("ai_edge_litert", "tflite_runtime"),),
    "executorch": (("executorch",), ("torch",)),
    "dispatch": (("executorch",), ("torch",)),
    "coreml": (),  # the numpy MIL evaluator off macOS
}
REMOTE_DIR_PREFIX = "nsr-edge."
RESULT_TIMEOUT_S = 3600.0  # one validate/profile on a slow board or under emulation
COPY_TIMEOUT_S = 600.0


class DeviceError(UserError):
    """A device that cannot be reached, refuses us, lacks what the run needs, or went away mid-run."""


@dataclass(frozen=True)
class DeviceOptions:
    """Options of ``--device`` (each transport reads the ones it knows)."""

    remote_python: str | None = None  # python on the device (ssh default python3; adb: one the shell user runs)
    ssh_key: str | None = None
    ssh_options: tuple[str, ...] = ()  # more ``ssh -o KEY=VALUE`` options
    remote_tmp: str | None = None  # where the temporary folder is made (ssh /tmp, adb /data/local/tmp)
    runner: str | None = None  # adb: a native benchmark binary (executor_runner, benchmark_model) instead of Python
    connect_timeout: int = 10


@dataclass(frozen=True)
class DeviceRun:
    """What `run_on_device` runs: ``command`` validate|profile and its options."""

    command: str
    threads: int = 1
    runs: int = 50
    warmup: int = 5
    max_abs: float | None = None
    min_psnr_vs_reference: float | None = None
    save_outputs: Path | None = None  # local .npz for the artifact's outputs on the stored reference tiles
    in_process: bool = False
    images: Path | None = None  # validate: a local folder with images.json (`commands.stage_images`), pushed too
    allow_small: bool = False
    timeout: float = RESULT_TIMEOUT_S
    extra_env: dict[str, str] = field(default_factory=dict)


class Transport:
    """How to reach one device. A transport implements the command builders; `run_on_device` does the rest.

    ``name``: the ``--device`` value as recorded (``ssh:root@host:2222``); ``kind``: ``local``/``ssh``/``adb``/
    ``arm-emu`` (`card.DeviceInfo.transport`). Remote paths are POSIX strings. Every method raises `DeviceError`
    (one line) when the device cannot do it.

    A transport whose commands differ (ARM emulation: instruction counts instead of latency) may define
    ``validate_command(args, card) -> int`` and/or ``profile_command(args, card) -> int``: ``nsr-edge validate|profile
    --device`` then hands the parsed arguments and the loaded card to it instead of the shared path
    (`commands.validate_on_device` / `commands.profile_on_device`).
    """

    name: str = ""
    kind: str = ""
    in_process: bool = False  # the runtime must run inside device_cli (no child processes: qemu-user)

    def describe(self) -> str:
        """The device in words, for messages (``root@127.0.0.1 port 2222 (ssh)``)."""
        raise NotImplementedError

    def check(self, runner: str | None = None) -> None:
        """Reachable, authentication works, the device's Python runs (>= 3.10) with numpy and, given the
        artifact's ``runner``, its runtime imports. One clear line otherwise."""
        raise NotImplementedError

    def check_shell(self) -> None:
        """Reachable and a shell runs there (what a native ``--runner`` needs; no Python)."""
        proc = self.run(["sh", "-c", "true"], 60, {})
        if proc.returncode != 0:
            raise DeviceError(f"{self.describe()}: a shell does not run there: {last_line(proc.stderr) or proc.returncode}")

    def python_argv(self) -> list[str]:
        """The device's Python interpreter as an argv prefix."""
        raise NotImplementedError

    def make_temp_dir(self) -> str:
        """A new empty folder on the device; its path."""
        raise NotImplementedError

    def push(self, local: Path, remote_dir: str) -> None:
        """Copy a local file or folder into ``remote_dir`` (keeping its name)."""
        raise NotImplementedError

    def run(self, argv: list[str], timeout: float, env: dict[str, str],
            pid_file: str | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` on the device with ``env`` added, in no particular folder; stdout/stderr as text. A lost
        connection or ``timeout`` raises `DeviceError`; the command's own exit code is returned. With ``pid_file``
        the remote process writes its pid there first (`remove` stops it)."""
        raise NotImplementedError

    def fetch(self, remote_path: str, local: Path) -> None:
        """Copy one file from the device to ``local``."""
        raise NotImplementedError

    def remove(self, remote_dir: str) -> None:
        """Remove a folder made by `make_temp_dir`, stopping a runner still working in it (its ``pid`` file).
        Never raises for a folder already gone."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the transport holds (connections, an emulator). Idempotent."""


# ------------------------------------------------------------------------------------------------ the runtime bundle

BUNDLE_NAME = "nsr_edge_runtime.zip"  # the bundle's file name, here and on the device


def _bundle_files() -> list[tuple[str, Path]]:
    """(name in the zip, file) for ``nsr_edge/__init__.py`` and every ``.py``/``.json`` of the installed
    ``nsr_edge.runtime`` package (wherever it is installed: an editable checkout maps it from ``runtime/``)."""
    import nsr_edge
    from nsr_edge import runtime

    files = [("nsr_edge/__init__.py", Path(nsr_edge.__file__))]
    root = Path(runtime.__file__).parent
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and path.suffix in (".py", ".json") and "__pycache__" not in rel.parts:
            files.append((f"nsr_edge/runtime/{rel.as_posix()}", path))
    return files


def bundle_bytes() -> bytes:
    """The runtime bundle's zip, byte-reproducible (sorted members, fixed dates and modes, deflated)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, path in _bundle_files():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.create_system = 3
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return buf.getvalue()


def runtime_bundle(cache_dir: Path | None = None) -> Path:
    """The runtime bundle as a file, cached by content (``~/.cache/nsr-edge/device-bundles/<sha12>/`` +
    `BUNDLE_NAME`; ``$NSR_EDGE_CACHE`` moves the cache): the same sources give the same file, pushed as is."""
    data = bundle_bytes()
    root = cache_dir or Path(os.environ.get("NSR_EDGE_CACHE") or Path.home() / ".cache" / "nsr-edge") / "device-bundles"
    path = root / hashlib.sha256(data).hexdigest()[:12] / BUNDLE_NAME
    if not path.is_file() or path.read_bytes() != data:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------- probes shared by transports


def probe_script(runner: str | None) -> str:
    """Python source the device runs to say what it has: prints one JSON line ``{"python": ..., "missing": [...]}``
    (modules are looked up, not imported: an import of torch costs seconds)."""
    needs = [("numpy",)] + list(RUNTIME_MODULES.get(runner or "", ()))
    return ("import json, sys, importlib.util as u\n"
            f"needs = {needs!r}\n"
            "missing = [' or '.join(alts) for alts in needs if not any(u.find_spec(m) for m in alts)]\n"
            "print(json.dumps({'python': '%d.%d.%d' % sys.version_info[:3], 'ok': sys.version_info >= (3, 10), "
            "'missing': missing}))\n")


def read_probe(transport: Transport, proc: subprocess.CompletedProcess, runner: str | None) -> dict[str, Any]:
    """The probe's answer, or one line saying what the device lacks."""
    python = " ".join(transport.python_argv())
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")), None)
    if proc.returncode == 127 or (line is None and "not found" in proc.stderr):
        raise DeviceError(f"{transport.describe()}: no Python at {python!r} (pass the device's interpreter with "
                          "--remote-python)")
    if line is None:
        raise DeviceError(f"{transport.describe()}: {python!r} did not run: {last_line(proc.stderr) or 'no output'}")
    info = json.loads(line)
    if not info["ok"]:
        raise DeviceError(f"{transport.describe()}: {python} is Python {info['python']}; the runtime needs 3.10 or "
                          "newer (pass another with --remote-python)")
    if info["missing"]:
        what = "numpy" if info["missing"][0] == "numpy" else f"the {runner} runtime"
        raise DeviceError(f"{transport.describe()}: {python} (Python {info['python']}) lacks {what} "
                          f"({', '.join(info['missing'])}): install it there, e.g. pip install "
                          f"{install_hint(runner if what != 'numpy' else None)}")
    return info


def install_hint(runner: str | None) -> str:
    return {"onnxruntime": "onnxruntime", "litert": "tflite-runtime (or ai-edge-litert)",
            "executorch": "executorch torch", "dispatch": "executorch torch"}.get(runner or "", "numpy")


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("[cpuinfo", "Warning: Permanently added"))]
    return (useful or lines or [""])[-1][:300]


def shell_command(argv: list[str], env: dict[str, str], cwd: str | None = None, pid_file: str | None = None) -> str:
    """A POSIX shell line running ``argv`` with ``env`` (for ssh and adb shell). With ``pid_file`` the shell writes
    its pid there first (`remove_command` stops it and the runner below it) and stays the runner's parent, so a runner
    killed by a signal is an exit code (128 + signal) rather than ssh's own 255."""
    parts = []
    if cwd:
        parts.append(f"cd {shlex.quote(cwd)} &&")
    if pid_file:
        parts.append(f"echo $$ > {shlex.quote(pid_file)} &&")
    if env:
        parts += ["env"] + [f"{k}={shlex.quote(v)}" for k, v in env.items()]
    parts += [shlex.quote(a) for a in argv]
    if pid_file:
        parts.append("; exit $?")  # not the last command: no shell execs it in place of itself
    return " ".join(parts)


def remove_command(remote_dir: str) -> str:
    """Shell line that stops the runner recorded in ``remote_dir/pid`` (and its children) and removes the folder.
    Refuses any folder whose name is not ours (never an ``rm -rf`` of something nsr-edge did not make)."""
    d = shlex.quote(remote_dir)
    if not Path(remote_dir).name.startswith(REMOTE_DIR_PREFIX):
        raise DeviceError(f"refusing to remove {remote_dir!r}: not a folder nsr-edge made")
    # only a process whose command line names this folder is ours (a pid file outlives its process); sshd and adbd
    # start the command in its own session, so its process group holds the runner and the runtime's child process
    stop = "kill -{sig} -$p 2>/dev/null || kill -{sig} $p 2>/dev/null; pkill -{sig} -P $p 2>/dev/null"
    return (f"if [ -f {d}/pid ]; then p=$(cat {d}/pid); if grep -qF {d} /proc/$p/cmdline 2>/dev/null; then "
            f"{stop.format(sig='TERM')}; sleep 1; {stop.format(sig='KILL')}; fi; fi; "
            f"rm -rf {d}")


# --------------------------------------------------------------------------------------------------- the shared run


class _SigtermAsInterrupt:
    """SIGTERM raises KeyboardInterrupt for the duration (main thread only), so `finally` clean-ups run."""

    def __enter__(self) -> "_SigtermAsInterrupt":
        self.old = None
        if threading.current_thread() is threading.main_thread():
            def handler(signum: int, frame: Any) -> None:
                raise KeyboardInterrupt

            self.old = signal.signal(signal.SIGTERM, handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)


def device_cli_argv(transport: Transport, remote_dir: str, artifact_name: str, run: DeviceRun) -> list[str]:
    argv = transport.python_argv() + ["-m", "nsr_edge.runtime.device_cli", run.command,
                                      f"{remote_dir}/{artifact_name}", "--json", "--threads", str(run.threads),
                                      "--device-name", transport.name, "--transport", transport.kind]
    if run.command == "profile":
        argv += ["--runs", str(run.runs), "--warmup", str(run.warmup)]
    else:
        if run.max_abs is not None:
            argv += ["--max-abs", repr(float(run.max_abs))]
        if run.min_psnr_vs_reference is not None:
            argv += ["--min-psnr-vs-reference", repr(float(run.min_psnr_vs_reference))]
    if run.save_outputs is not None:
        argv += ["--save-outputs", f"{remote_dir}/outputs.npz"]
    if run.images is not None:
        argv += ["--images", f"{remote_dir}/{Path(run.images).name}/images.json"]
    if run.allow_small:
        argv.append("--allow-small")
    if run.in_process or transport.in_process:
        argv.append("--in-process")
    return argv


def parse_result(transport: Transport, proc: subprocess.CompletedProcess) -> dict[str, Any]:
    """device_cli's JSON (exit 0 or 1), or one line with the device's own error (exit 2) or how it died."""
    if proc.returncode == 2:
        msg = last_line(proc.stderr).removeprefix("nsr-edge device: error: ")
        raise DeviceError(f"on {transport.describe()}: {msg}")
    if proc.returncode not in (0, 1):
        how = (f"killed by signal {signal.Signals(proc.returncode - 128).name}"
               if 128 < proc.returncode < 160 and proc.returncode - 128 in signal.valid_signals() else
               f"exit code {proc.returncode}")
        tail = last_line(proc.stderr)
        raise DeviceError(f"on {transport.describe()}: the device runner died ({how})" + (f": {tail}" if tail else ""))
    start = proc.stdout.find("{")
    try:
        return json.loads(proc.stdout[start:]) if start >= 0 else json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise DeviceError(f"on {transport.describe()}: the device runner printed no result: "
                          f"{last_line(proc.stderr) or last_line(proc.stdout) or 'no output'}") from None


def run_on_device(transport: Transport, artifact_dir: str | os.PathLike, command: str, options: DeviceRun,
                  card: Any = None) -> dict[str, Any]:
    """Run ``device_cli command`` on the artifact folder on the device; returns its JSON (``device`` included;
    ``passed`` false and ``failures`` for a validate that failed a tolerance). Every failure is one `DeviceError`
    line; the device's temporary folder is removed whatever happens."""
    from ..runtime.card import load_card

    if command != options.command:
        options = DeviceRun(**{**options.__dict__, "command": command})
    artifact_dir = Path(artifact_dir)
    card = card or load_card(artifact_dir)  # a broken card is refused here, before the device is touched
    bundle = runtime_bundle()
    remote_dir = None
    with _SigtermAsInterrupt():
        try:
            transport.check(card.runner)
            remote_dir = transport.make_temp_dir()
            transport.push(bundle, remote_dir)
            staged = artifact_dir.resolve()
            transport.push(staged, remote_dir)
            if options.images is not None:
                transport.push(Path(options.images), remote_dir)
            # the bundle first on sys.path, and not the current folder (PYTHONSAFEPATH, 3.11+): an nsr_edge folder
            # in the device user's home must not shadow it
            env = {"PYTHONPATH": f"{remote_dir}/{BUNDLE_NAME}", "PYTHONSAFEPATH": "1", "PYTHONDONTWRITEBYTECODE": "1",
                   **options.extra_env}
            argv = device_cli_argv(transport, remote_dir, staged.name, options)
            proc = transport.run(argv, options.timeout, env, pid_file=f"{remote_dir}/pid")
            result = parse_result(transport, proc)
            if options.save_outputs is not None:
                transport.fetch(f"{remote_dir}/outputs.npz", Path(options.save_outputs))
            return result
        finally:
            if remote_dir is not None:
                try:
                    transport.remove(remote_dir)
                except KeyboardInterrupt:
                    transport.remove(remote_dir)
                except DeviceError as e:
                    print(f"nsr-edge: warning: could not remove {remote_dir} on {transport.describe()}: {e}",
                          file=sys.stderr)
            transport.close()


__all__ = ["DeviceError", "DeviceOptions", "DeviceRun", "Transport", "RUNTIME_MODULES", "bundle_bytes",
           "runtime_bundle", "probe_script", "read_probe", "shell_command", "remove_command", "run_on_device",
           "parse_result", "device_cli_argv", "BUNDLE_NAME"]
