"""Whether a bench's cached artifact folder may be reused: it must be complete (its card written) and, for a zoo
model, converted from the zoo checkpoint as it is now. Zoo models get republished (a longer training run replaces
model.pt); a bench that reused an artifact converted from the older weights would time and score the old model
under the new one's name."""

from __future__ import annotations

import json
from pathlib import Path


def is_current(folder: Path) -> bool:
    """True for a finished artifact whose source is still what it was converted from (checkpoint files the user
    named are not tracked: only zoo sources, whose file changes in place)."""
    card_file = folder / "model.json"
    if not card_file.is_file():
        return False
    from nsr_edge.hub import zoo_checkpoint
    from nsr_edge.runtime.files import file_sha256

    source = (json.loads(card_file.read_text()).get("model") or {}).get("source") or {}
    if source.get("kind") != "zoo":
        return True
    ckpt = zoo_checkpoint(source.get("ref", ""))
    return ckpt.is_file() and file_sha256(ckpt) == source.get("sha256")
