"""The model card: the JSON file next to every artifact that says everything about it (design.md, "Artifacts").

Converters write it, and the runtime, the validate/profile commands and the demo apps read it; nothing about I/O is
guessed. Schema (version 1), the keys every reader may rely on:

    {
      "schema": "nsr-edge-model-card", "version": 1, "created": ISO-8601 UTC,
      "model": {"id", "arch", "task": TaskSpec dict, "scale", "channels", "config": ModelConfig dict, "params",
                "source": {"kind": "zoo"|"checkpoint", "ref", "sha256"}, "provenance"},
      "target": "executorch", "runner": "executorch",
      "artifact": {"file": "model.pte", "sha256", "bytes"},
      "strategy": "output-mix" | "kernel-mix" | "hard",
      "recipe": Recipe dict (name, weights, activations, method, per_channel, fp32_parts, ...),
      "quantization": null | {"calibration": {...}, "qat": {...}},
      "tile": TileSpec dict (tile, pad, stride, edge_strips, edge_weight, pad_mode, whole_below),
      "io": {"inputs": [{"name", "layout": "NCHW", "dtype", "range": [lo, hi], "shape"}], "outputs": [...]},
      "methods": [{"name", "input_shape", "output_shape"}],   # the first is "forward" at the card's tile
      "delegation": {"backend", "methods": {name: {"delegated_ops", "total_ops", "partitions", "fully_delegated",
                     "fallbacks": [{"op", "count", "reason"}]}}, "notes"},
      "tools": {"nsr_edge", "python", "torch", "executorch", "torchao", "numpy", ...},
      "validation": null | {...},  "profile": null | {...}        # filled by `validate/profile --record`
    }

numpy-free and torch-free: this module runs on a device.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import UserError
from .files import atomic_write_json, file_sha256

CARD_FILE = "model.json"
SCHEMA = "nsr-edge-model-card"
VERSION = 1
REQUIRED = ("model", "target", "runner", "artifact", "strategy", "recipe", "tile", "io", "methods")


class CardError(UserError):
    """A missing, unreadable or inconsistent model card, or an artifact that does not match its card."""


def load_card(artifact_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``DIR/model.json`` (schema, version, required keys); one-line `CardError` otherwise."""
    folder = Path(artifact_dir)
    if not folder.is_dir():
        raise CardError(f"{folder}: no such artifact folder")
    path = folder / CARD_FILE
    if not path.is_file():
        raise CardError(f"{folder}: no {CARD_FILE} model card (was it written by `nsr-edge convert`?)")
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CardError(f"{path}: not a readable JSON model card ({e})") from None
    if not isinstance(card, dict) or card.get("schema") != SCHEMA:
        raise CardError(f"{path}: not an nsr-edge model card (schema {card.get('schema') if isinstance(card, dict) else None!r})")
    if card.get("version") != VERSION:
        raise CardError(f"{path}: model card version {card.get('version')} is not supported (expected {VERSION})")
    missing = [k for k in REQUIRED if k not in card]
    if missing:
        raise CardError(f"{path}: model card lacks {', '.join(missing)}")
    return card


def artifact_path(artifact_dir: str | os.PathLike, card: dict[str, Any], verify: bool = True) -> Path:
    """The artifact file the card describes; with ``verify`` its size and SHA-256 must match the card."""
    art = card["artifact"]
    path = Path(artifact_dir) / art["file"]
    if Path(art["file"]).name != art["file"]:
        raise CardError(f"model card names an artifact outside its folder: {art['file']!r}")
    if not path.is_file():
        raise CardError(f"{path}: the artifact named by the model card is missing")
    if verify:
        size = path.stat().st_size
        if size != art.get("bytes") or file_sha256(path) != art.get("sha256"):
            raise CardError(f"{path} does not match its model card (size/SHA-256 differ): it was replaced or "
                            "corrupted after conversion; convert again")
    return path


def update_card(artifact_dir: str | os.PathLike, key: str, value: Any) -> None:
    """Store a result (``validation``, ``profile``) in the card, atomically (temp file + rename)."""
    folder = Path(artifact_dir)
    card = load_card(folder)
    card[key] = value
    atomic_write_json(folder / CARD_FILE, card)


def tile_spec(card: dict[str, Any]):
    """The card's tiling contract as a `tiling.TileSpec`."""
    from .tiling import TileSpec

    try:
        return TileSpec.from_dict(card["tile"])
    except (TypeError, ValueError) as e:
        raise CardError(f"model card tile contract is invalid: {e}") from None


def method_for_tile(card: dict[str, Any], tile: int | None = None) -> dict[str, Any]:
    """The method entry whose input tile is ``tile`` (default: the card's tile, i.e. ``forward``)."""
    methods = card["methods"]
    if tile is None:
        return methods[0]
    for m in methods:
        if m["input_shape"][-1] == tile and m["input_shape"][-2] == tile:
            return m
    have = ", ".join(f"{m['input_shape'][-2]}x{m['input_shape'][-1]}" for m in methods)
    raise CardError(f"the artifact has no method for tile {tile} (it has {have})")


__all__ = ["CARD_FILE", "SCHEMA", "VERSION", "CardError", "file_sha256", "load_card", "artifact_path", "update_card",
           "tile_spec", "method_for_tile"]
