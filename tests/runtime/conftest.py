"""Fixtures of the torch-free runtime tests (numpy + Pillow + pytest + hypothesis only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nsr_edge.runtime.datasets import DatasetError, resolve_data_dir

_MEASURED: list[str] = []  # lines for the end-of-run summary (anchor numbers, LR reproduction stats)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared benchmark data (shared/data or $NSR_EDGE_DATA); tests that need it skip, loudly, without it."""
    try:
        return resolve_data_dir()
    except DatasetError as exc:
        pytest.skip(f"benchmark data not available: {exc}")


@pytest.fixture
def report():
    """``report(line)``: a measured number shown in the summary at the end of the run, pass or fail."""
    return _MEASURED.append


def pytest_terminal_summary(terminalreporter):
    if _MEASURED:
        terminalreporter.section("runtime: measured numbers")
        for line in _MEASURED:
            terminalreporter.write_line(line)
