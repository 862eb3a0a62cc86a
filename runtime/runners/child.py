"""Run an artifact in a child process and talk to it over a pipe, so that a native crash is a one-line error.

`RunnerProcess` starts ``python -m nsr_edge.runtime.runners.child``, which opens the runner session and answers
requests (run a batch of tiles, time runs, write an ETDump, report peak memory). Messages are length-prefixed
pickles of plain data and numpy arrays, exchanged only between this parent and its own child. The child's fd 1 is
pointed at stderr (native libraries print there); the protocol uses a duplicate of the original stdout. When the
child dies (SIGABRT in a kernel, a corrupt program), the parent raises `RunnerCrash` with the signal and the last
line the runtime printed.

numpy only (no torch in the parent): this module runs on a device.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

from ..errors import UserError


class RunnerCrash(UserError):
    """The runtime process died (native abort/segfault) or could not start."""


def _send(f, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(struct.pack("<Q", len(data)))
    f.write(data)
    f.flush()


def _recv(f) -> Any:
    head = f.read(8)
    if len(head) < 8:
        raise EOFError
    (n,) = struct.unpack("<Q", head)
    data = f.read(n)
    if len(data) < n:
        raise EOFError
    return pickle.loads(data)


class RunnerProcess:
    """A runner session living in a child process. Use as a context manager."""

    def __init__(self, runner: str, artifact: str, method: str = "forward", threads: int = 1,
                 etdump: str | None = None, debug_buffer: str | None = None, debug_buffer_size: int = 0,
                 timeout: float | None = None) -> None:
        self.artifact = str(artifact)
        self._stderr = tempfile.TemporaryFile()
        env = dict(os.environ)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nsr_edge.runtime.runners.child"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env,
        )
        self.timeout = timeout
        try:
            info = self._open(runner, method, threads, etdump, debug_buffer, debug_buffer_size)
        except BaseException:
            self.close()  # a program that does not load (or aborts the child) must not leave the child behind
            raise
        self.input_shape: tuple[int, ...] = tuple(info["input_shape"])
        self.output_shape: tuple[int, ...] = tuple(info["output_shape"])
        self.threads: int = info["threads"]

    def _open(self, runner: str, method: str, threads: int, etdump: str | None, debug_buffer: str | None,
              debug_buffer_size: int) -> Any:
        return self._call({"op": "open", "runner": runner, "artifact": self.artifact, "method": method,
                           "threads": threads, "etdump": etdump, "debug_buffer": debug_buffer,
                           "debug_buffer_size": debug_buffer_size})

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        lines = [ln.strip() for ln in self._stderr.read().decode(errors="replace").splitlines() if ln.strip()]
        useful = [ln for ln in lines if not ln.startswith(("[cpuinfo", "W1", "Failed to load")) and "Warning" not in ln]
        return (useful or lines or [""])[-1][:300]

    def _call(self, msg: dict[str, Any]) -> Any:
        try:
            _send(self.proc.stdin, msg)
            reply = _recv(self.proc.stdout)
        except (EOFError, BrokenPipeError, OSError):
            code = self.proc.wait(timeout=30)
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            tail = self._stderr_tail()
            raise RunnerCrash(f"the runtime process died ({how}) while running {self.artifact}"
                              + (f": {tail}" if tail else "")) from None
        if reply.get("error"):
            raise UserError(reply["error"])
        return reply["result"]

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._call({"op": "run", "batch": np.ascontiguousarray(batch, dtype=np.float32)})

    def time(self, x: np.ndarray, runs: int, warmup: int) -> list[float]:
        return self._call({"op": "time", "x": np.ascontiguousarray(x, dtype=np.float32), "runs": runs,
                           "warmup": warmup})

    def write_etdump(self) -> None:
        self._call({"op": "etdump"})

    def peak_rss_bytes(self) -> int:
        return self._call({"op": "rss"})

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                _send(self.proc.stdin, {"op": "quit"})
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                self.proc.kill()
                self.proc.wait()
        if not self._stderr.closed:
            self._stderr.close()

    def __enter__(self) -> "RunnerProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class InProcessRunner:
    """`RunnerProcess`'s interface on a session opened in this process: where no child process can be started (a
    Python under qemu-user without binfmt_misc) and the calling process as a whole is the crash boundary (a device
    run: `device_cli --in-process`)."""

    def __init__(self, runner: str, artifact: str, method: str = "forward", threads: int = 1,
                 etdump: str | None = None, debug_buffer: str | None = None, debug_buffer_size: int = 0,
                 timeout: float | None = None) -> None:
        from . import get_runner

        self.artifact = str(artifact)
        self.session = get_runner(runner).open_session(self.artifact, method, threads, etdump=etdump,
                                                       debug_buffer=debug_buffer, debug_buffer_size=debug_buffer_size)
        self.input_shape: tuple[int, ...] = tuple(self.session.input_shape)
        self.output_shape: tuple[int, ...] = tuple(self.session.output_shape)
        self.threads: int = self.session.threads

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(np.ascontiguousarray(batch, dtype=np.float32))

    def time(self, x: np.ndarray, runs: int, warmup: int) -> list[float]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        for _ in range(warmup):
            self.session.time_once(x)
        return [self.session.time_once(x) for _ in range(runs)]

    def write_etdump(self) -> None:
        self.session.write_etdump()

    def peak_rss_bytes(self) -> int:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> "InProcessRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_runner(runner: str, artifact: str, method: str = "forward", threads: int = 1, in_process: bool = False,
                **kwargs: Any) -> "RunnerProcess | InProcessRunner":
    """A runner session in a child process (default: a native abort is one line) or, ``in_process``, in this one."""
    return (InProcessRunner if in_process else RunnerProcess)(runner, artifact, method, threads, **kwargs)


def _exit_with_parent(poll_s: float = 0.5) -> None:
    """End this process when the one that started it dies. A request can run for minutes (a long `time`), and only
    its end would show the closed pipe: a parent killed meanwhile (the OOM killer on a phone, SIGKILL, a dropped
    device connection) would leave the runtime spinning on the device's cores. A parent that dies gets this process
    reparented, so its parent pid changes (PR_SET_PDEATHSIG is not used: it follows the creating thread, not the
    process). os._exit: the main thread may be inside the runtime."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _serve() -> None:
    _exit_with_parent()
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything native code prints to stdout goes to stderr, not into the protocol
    sys.stdout = sys.stderr
    proto_in = sys.stdin.buffer
    session = None
    while True:
        try:
            msg = _recv(proto_in)
        except EOFError:
            return
        op = msg["op"]
        if op == "quit":
            return
        try:
            if op == "open":
                from . import get_runner

                runner = get_runner(msg["runner"])
                session = runner.open_session(msg["artifact"], msg["method"], msg["threads"], etdump=msg["etdump"],
                                              debug_buffer=msg["debug_buffer"],
                                              debug_buffer_size=msg["debug_buffer_size"])
                result = {"input_shape": session.input_shape, "output_shape": session.output_shape,
                          "threads": session.threads}
            elif op == "run":
                result = session.run(msg["batch"])
            elif op == "time":
                for _ in range(msg["warmup"]):
                    session.time_once(msg["x"])
                result = [session.time_once(msg["x"]) for _ in range(msg["runs"])]
            elif op == "etdump":
                session.write_etdump()
                result = None
            elif op == "rss":
                import resource

                result = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
            else:
                raise ValueError(f"unknown request {op!r}")
            _send(proto_out, {"result": result})
        except UserError as e:
            _send(proto_out, {"error": str(e)})
        except Exception as e:  # noqa: BLE001 - reported to the parent as one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            _send(proto_out, {"error": f"{type(e).__name__}: {first[:300]}"})


if __name__ == "__main__":
    _serve()
