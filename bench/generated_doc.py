"""Docs that a bench writes and a person annotates: the generated part ends with a marker line (the last generated
line); everything after it is written by hand and survives the next run of the bench."""

from __future__ import annotations

from pathlib import Path


def write_keeping_hand_written(doc: Path, generated: list[str], end_marker: str) -> None:
    """Write ``generated`` (whose last line is ``end_marker``) and keep what followed the marker in ``doc``."""
    old = doc.read_text() if doc.is_file() else ""
    doc.write_text("\n".join(generated) + (old.split(end_marker, 1)[1] if end_marker in old else "\n"))
