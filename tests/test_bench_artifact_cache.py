"""bench/artifact_cache.py: a bench reuses a cached artifact only while the zoo model it came from is unchanged."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.artifact_cache import is_current  # noqa: E402
from nsr_edge.hub import zoo_checkpoint  # noqa: E402
from nsr_edge.runtime.files import file_sha256  # noqa: E402

# A card `nsr-edge convert` wrote (the apps' test vectors: no model file needed to read it).
REAL_CARD = ROOT / "android_demo" / "testdata" / "cards" / "executorch_fp32" / "model.json"


def _folder(tmp_path: Path, source: dict | None) -> Path:
    folder = tmp_path / "art"
    folder.mkdir(parents=True)
    if source is not None:
        card = json.loads(REAL_CARD.read_text())
        card["model"]["source"] = source
        (folder / "model.json").write_text(json.dumps(card))
    return folder


def test_zoo_artifact_is_reused_only_while_its_weights_are_the_zoo_s(tmp_path: Path) -> None:
    sha = file_sha256(zoo_checkpoint("nsr_sr_x2"))
    assert is_current(_folder(tmp_path / "a", {"kind": "zoo", "ref": "nsr_sr_x2", "sha256": sha}))
    # converted from the weights before a republication
    assert not is_current(_folder(tmp_path / "b", {"kind": "zoo", "ref": "nsr_sr_x2", "sha256": "0" * 64}))
    # a zoo model that is gone, an unfinished conversion (no card)
    assert not is_current(_folder(tmp_path / "c", {"kind": "zoo", "ref": "no_such_model", "sha256": sha}))
    assert not is_current(_folder(tmp_path / "d", None))


def test_broken_card_is_converted_again(tmp_path: Path) -> None:
    folder = tmp_path / "art"
    folder.mkdir()
    shutil.copy(REAL_CARD, folder / "model.json")
    assert is_current(folder)  # a user checkpoint's artifact: reused
    (folder / "model.json").write_text('{"model": ')
    assert not is_current(folder)


def test_user_checkpoint_artifact_is_reused(tmp_path: Path) -> None:
    assert is_current(_folder(tmp_path, {"kind": "checkpoint", "ref": "mine.pt", "sha256": "0" * 64}))


def test_convert_unless_current_reuses_a_current_artifact_and_replaces_a_stale_one(tmp_path: Path, capsys) -> None:
    from bench.artifact_cache import convert_unless_current
    from nsr_edge.converters.pipeline import ConvertOptions

    options = ConvertOptions(model="dense_sr_x2_eqmacs", target="onnxruntime", tile=32, progress=False)
    current = _folder(tmp_path / "a", {"kind": "checkpoint", "ref": "mine.pt", "sha256": "0" * 64})
    before = (current / "model.json").read_text()
    assert convert_unless_current(current, options, "reused") == current
    assert (current / "model.json").read_text() == before and "converting" not in capsys.readouterr().err
    stale = _folder(tmp_path / "b", {"kind": "zoo", "ref": "dense_sr_x2_eqmacs", "sha256": "0" * 64})
    assert convert_unless_current(stale, options, "stale") == stale
    assert "converting stale" in capsys.readouterr().err and is_current(stale)
    assert json.loads((stale / "model.json").read_text())["model"]["source"]["ref"] == "dense_sr_x2_eqmacs"


def test_dispatch_results_name_each_artifact_s_source(tmp_path: Path) -> None:
    """bench/dispatch.py's results.json records the checkpoint each artifact came from (front_zoo.py checks it)."""
    from bench.dispatch import artifact_sources

    sha = file_sha256(zoo_checkpoint("nsr_sr_x2"))
    folder = _folder(tmp_path, {"kind": "zoo", "ref": "nsr_sr_x2", "sha256": sha})
    assert artifact_sources({"NSR soft output-mix FP32": folder}) == {"NSR soft output-mix FP32": sha}
