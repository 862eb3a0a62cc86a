"""The demo apps' test vectors (android_demo/testdata, shared with ios_demo): regenerating them gives the same vectors
(floats up to their last bits: torch computes them on whatever CPU runs the test), and every card field the apps
read (``app_fields.json``) exists in the cards ``nsr-edge convert`` writes today.

One regeneration (five tiny conversions and the ExecuTorch dispatch runtime, ~45 s) serves both tests.
"""

import hashlib
import json
import math
import re
from pathlib import Path

import pytest
from nsr_edge import app_vectors
from nsr_edge.runtime.card import load_card

TESTDATA = Path(__file__).resolve().parents[1] / "android_demo" / "testdata"
HASH = re.compile(r"[0-9a-f]{64}")


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    out = tmp_path_factory.mktemp("vectors") / "testdata"
    app_vectors.generate(out, tmp_path_factory.mktemp("work"))
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _same_json(a, b) -> bool:
    """Equal JSON trees, except that floats may differ in their last bits (rel 1e-5) and so may 64-hex-digit hashes.

    Why: FP32 values torch computes here (the reference outputs in a card, the routing logits) differ in the last bits
    between CPUs (oneDNN runs AVX-512 kernels on one machine, AVX2 on another), and so do the hashes of whatever holds
    them (a card's reference_outputs.sha256, vectors.json's file manifest). Everything else must be equal."""
    if isinstance(a, float) or isinstance(b, float):
        return all(isinstance(v, (int, float)) for v in (a, b)) and math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b))
    return a == b or all(isinstance(v, str) and HASH.fullmatch(v) for v in (a, b))


def test_regenerating_gives_the_same_vectors(regenerated):
    committed, fresh = _files(TESTDATA), _files(regenerated)
    assert sorted(committed) == sorted(fresh)
    changed = [name for name in committed if committed[name] != fresh[name]
               and not (name.endswith(".json") and _same_json(json.loads(committed[name]), json.loads(fresh[name])))]
    assert not changed, f"vectors differ from a fresh `python -m nsr_edge.app_vectors`: {changed}"
    assert sum(len(b) for b in committed.values()) < 1_000_000
    # the hashes the comparison lets differ still describe the committed files (what the apps' tests check)
    manifest = json.loads(committed["vectors.json"])["files"]
    assert manifest == {n: hashlib.sha256(committed[n]).hexdigest() for n in manifest}


def test_the_comparison_sees_a_changed_value():
    card = {"scale": 2, "reference_outputs": {"sha256": "a" * 64, "range": [0.0, 1.0]}, "method": "forward"}
    assert _same_json(card, {**card, "reference_outputs": {"sha256": "b" * 64, "range": [0.0, 1.0 + 1e-7]}})
    assert not _same_json(card, {**card, "scale": 3})
    assert not _same_json(card, {**card, "method": "forward_tile"})
    assert not _same_json(card, {**card, "reference_outputs": {"sha256": "a" * 64, "range": [0.0, 1.001]}})


def _present(data, parts, optional):
    """Whether every instance of the path ``parts`` exists; a missing optional prefix makes the rest not apply."""
    if not parts:
        return True
    head, rest = parts[0], parts[1:]
    key, kind = (head[:-2], head[-2:]) if head.endswith(("[]", "{}")) else (head, "")
    if not isinstance(data, dict) or key not in data or data[key] is None:
        return optional(key)
    value = data[key]
    if kind == "[]":
        return isinstance(value, list) and all(_present(v, rest, optional) for v in value)
    if kind == "{}":
        return isinstance(value, dict) and all(_present(v, rest, optional) for v in value.values())
    return _present(value, rest, optional)


def _somewhere(data, parts):
    """Whether at least one instance of the path ``parts`` exists."""
    if not parts:
        return True
    head = parts[0]
    key, kind = (head[:-2], head[-2:]) if head.endswith(("[]", "{}")) else (head, "")
    if not isinstance(data, dict) or data.get(key) is None:
        return False
    value = data[key]
    items = value if kind == "[]" else list(value.values()) if kind == "{}" else [value]
    return any(_somewhere(v, parts[1:]) for v in items)


def test_every_field_the_apps_read_is_in_cards_written_today(regenerated):
    fields = json.loads((regenerated / "app_fields.json").read_text())
    assert fields == app_vectors.APP_FIELDS
    cards = {}
    for folder in sorted((regenerated / "cards").iterdir()):
        load_card(folder)  # the typed contract
        cards[folder.name] = json.loads((folder / "model.json").read_text())
    assert set(cards) == set(app_vectors.CARDS)
    optional = {f[:-1] for f in fields if f.endswith("?")}
    for field in fields:
        path = field.rstrip("?")
        parts = path.split(".")
        found = 0
        for name, card in cards.items():
            # a key may be absent only where the field (or a field above it) is declared optional
            def may_miss(key, _parts=parts):
                prefix = ".".join(_parts[: next(i for i, p in enumerate(_parts) if p.rstrip("[]{}") == key) + 1])
                return any(prefix.rstrip("[]{}") == o.rstrip("[]{}") or prefix == o for o in optional)

            assert _present(card, parts, may_miss), f"{name}: card field {field} is missing"
            found += _somewhere(card, parts)
        assert found, f"no card written today has {field}: the vectors do not exercise it"
