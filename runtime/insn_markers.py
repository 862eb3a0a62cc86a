"""Marker calls around a region whose guest instructions an emulator counts (``arm-emu`` instruction counting).

`region(label)` issues ``lseek(-1, MAGIC | op, label)`` before and after its body: a system call that fails at once
with EBADF on any Linux (no file, no side effect), which the nsr-edge qemu plugin
(``nsr_edge/devices/qemu_plugin/insn_count.c``) sees as "open region" / "close region" and answers with one log line
of instruction counts per region. Outside the emulator the calls cost a microsecond and count nothing.
Torch-free, standard library only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

MAGIC = 0x4E5352450000  # "NSRE" << 16; keep in sync with insn_count.c (MARKER_MAGIC)
OP_START, OP_STOP = 1, 2


def _mark(op: int, label: int) -> None:
    try:
        os.lseek(-1, MAGIC | op, int(label) & 0x7FFFFFFF)
    except OSError:
        pass  # EBADF, by design


def start(label: int = 0) -> None:
    _mark(OP_START, label)


def stop(label: int = 0) -> None:
    _mark(OP_STOP, label)


@contextmanager
def region(label: int = 0) -> Iterator[None]:
    """Count the body as one region tagged ``label`` (a small non-negative int)."""
    start(label)
    try:
        yield
    finally:
        stop(label)


__all__ = ["MAGIC", "region", "start", "stop"]
