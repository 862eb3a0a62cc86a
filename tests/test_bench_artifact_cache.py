"""bench/artifact_cache.py: a bench reuses a cached artifact only while the zoo model it came from is unchanged."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.artifact_cache import is_current  # noqa: E402
from nsr_edge.hub import zoo_checkpoint  # noqa: E402
from nsr_edge.runtime.files import file_sha256  # noqa: E402


def _folder(tmp_path: Path, source: dict | None) -> Path:
    folder = tmp_path / "art"
    folder.mkdir(parents=True)
    if source is not None:
        (folder / "model.json").write_text(json.dumps({"model": {"id": "x", "source": source}}))
    return folder


def test_zoo_artifact_is_reused_only_while_its_weights_are_the_zoo_s(tmp_path: Path) -> None:
    sha = file_sha256(zoo_checkpoint("nsr_sr_x2"))
    assert is_current(_folder(tmp_path / "a", {"kind": "zoo", "ref": "nsr_sr_x2", "sha256": sha}))
    # converted from the weights before a republication
    assert not is_current(_folder(tmp_path / "b", {"kind": "zoo", "ref": "nsr_sr_x2", "sha256": "0" * 64}))
    # a zoo model that is gone, an unfinished conversion (no card)
    assert not is_current(_folder(tmp_path / "c", {"kind": "zoo", "ref": "no_such_model", "sha256": sha}))
    assert not is_current(_folder(tmp_path / "d", None))


def test_user_checkpoint_artifact_is_reused(tmp_path: Path) -> None:
    assert is_current(_folder(tmp_path, {"kind": "checkpoint", "ref": "mine.pt", "sha256": "0" * 64}))
