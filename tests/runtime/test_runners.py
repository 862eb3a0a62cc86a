"""The shared runner session (`runners.session.Session`) and the Core ML runner's artifact forms, numpy only."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from nsr_edge.runtime.errors import UserError
from nsr_edge.runtime.runners import coreml_runner
from nsr_edge.runtime.runners.child import RunnerProcess
from nsr_edge.runtime.runners.session import Session

# the hand-written ML program of the MIL evaluator's tests (pytest's importlib mode does not put tests/ on sys.path)
_spec = importlib.util.spec_from_file_location("_mil_tests", Path(__file__).with_name("test_mil_evaluator.py"))
_mil_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mil_tests)
_reference, _write_package = _mil_tests._reference, _mil_tests._write_package


class Doubler(Session):
    """A runtime whose method takes a fixed batch of 2 tiles and doubles them; it counts its calls."""

    kind = "test"

    def _load(self, path: str, method: str) -> None:
        if method == "broken":
            self.opened = True
            raise UserError("cannot load")
        self.input_shape, self.output_shape = (2, 1, 4, 4), (2, 1, 4, 4)
        self.calls, self.released = [], 0

    def _execute(self, x):
        assert x.shape == self.input_shape
        self.calls.append(x.copy())
        return x * 2

    def _release(self) -> None:
        self.released = getattr(self, "released", 0) + 1


def test_session_batches_pads_times_and_closes():
    tiles = np.random.default_rng(0).random((5, 1, 4, 4), dtype=np.float32)
    with Doubler("x") as s:
        np.testing.assert_array_equal(s.run(tiles), tiles * 2)
        assert len(s.calls) == 3 and np.array_equal(s.calls[-1][1], tiles[4])  # last batch padded with its last tile
        with pytest.raises(UserError, match=r"do not match the test artifact's \(1, 4, 4\)"):
            s.run(np.zeros((2, 1, 5, 5), np.float32))
        assert s.time_once(tiles[:2]) >= 0 and len(s.calls) == 4
        assert s.planned_memory_bytes() is None
        with pytest.raises(UserError, match="not available"):
            s.write_etdump()
    s.close()
    assert s.released == 1  # close is idempotent
    with pytest.raises(UserError, match="per-op tracing .* not available for test artifacts"):
        Doubler("x", etdump="trace.etdp")
    with pytest.raises(UserError, match="cannot load"):
        Doubler("x", "broken")


def test_failed_load_releases_what_it_opened(monkeypatch):
    released = []
    monkeypatch.setattr(Doubler, "_release", lambda self: released.append(self.opened))
    with pytest.raises(UserError):
        Doubler("x", "broken")
    assert released == [True]


@pytest.fixture
def mlpackage(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 2, 3, 3)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    folder = _write_package(tmp_path / "model.mlpackage", w, b)
    zipped = shutil.make_archive(str(tmp_path / "model.mlpackage"), "zip", tmp_path, "model.mlpackage")
    return folder, zipped, w, b


def test_coreml_runner_reads_a_package_folder_and_its_zip(mlpackage, monkeypatch):
    folder, zipped, w, b = mlpackage
    monkeypatch.setenv("NSR_EDGE_COREML_BACKEND", "mil")
    x = np.random.default_rng(1).random((3, 2, 5, 5), dtype=np.float32)
    want = np.concatenate([_reference(t[None], w, b) for t in x])
    for artifact in (folder, zipped):
        with coreml_runner.open_session(str(artifact)) as s:
            assert s.input_shape == (1, 2, 5, 5) and s.output_shape == (1, 1, 10, 10)
            assert np.abs(s.run(x) - want).max() < 1e-2
            with pytest.raises(UserError, match="only be measured on macOS"):
                s.time_once(x[:1])
    with RunnerProcess("coreml", str(folder)) as proc:  # as validate runs it: in a child process
        assert np.abs(proc.run(x) - want).max() < 1e-2


def test_machine_names_the_processor_from_cpuinfo():
    """Latency figures differ several-fold between CPUs of one architecture: a measurement's machine names the CPU
    model (platform.processor() is empty on Linux)."""
    import platform
    from pathlib import Path

    from nsr_edge.runtime.profile import cpu_model, machine

    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.is_file() else []
    if names and platform.machine() == "x86_64":  # ARM: core names from the part numbers instead
        assert cpu_model() == " ".join(names[0].split())
    assert cpu_model() and f"({cpu_model()})" in machine()
