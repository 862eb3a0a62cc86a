"""One place that turns what a user typed (zoo id, preset, architecture name, checkpoint path) into a model.

Nothing is downloaded: zoo models are committed under ``zoo/<id>/`` (checkpoint + card), presets and architectures
are configs without trained weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint import Checkpoint, load_checkpoint
from .errors import UserError
from .models import ARCHITECTURES, PRESETS, ModelConfig, build_model
from .runtime.tasks import TaskSpec

ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"


@dataclass
class ResolvedModel:
    id: str
    config: ModelConfig
    checkpoint: Checkpoint | None  # None: an untrained config (preset or bare architecture)
    card: dict[str, Any] | None = None  # zoo card, when it is a zoo model

    @property
    def trained(self) -> bool:
        return self.checkpoint is not None

    def build(self) -> nn.Module:
        return self.checkpoint.build() if self.checkpoint else build_model(self.config).eval()


def zoo_ids() -> list[str]:
    if not ZOO_DIR.is_dir():
        return []
    return sorted(p.name for p in ZOO_DIR.iterdir() if (p / "model.pt").is_file() and (p / "card.json").is_file())


def zoo_card(model_id: str) -> dict[str, Any]:
    return json.loads((ZOO_DIR / model_id / "card.json").read_text())


def zoo_checkpoint(model_id: str) -> Path:
    """Where a zoo model's checkpoint lives (whether or not it is there)."""
    return ZOO_DIR / model_id / "model.pt"


def resolve(name: str, overrides: dict[str, Any] | None = None, require_trained: bool = False) -> ResolvedModel:
    """Zoo id, then checkpoint path, then preset, then architecture name (with config overrides)."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if name in zoo_ids():
        ckpt = load_checkpoint(zoo_checkpoint(name))
        _refuse_overrides(name, overrides)
        return ResolvedModel(name, ckpt.config, ckpt, zoo_card(name))
    path = Path(name)
    if path.suffix in (".pt", ".pth", ".ckpt") or path.is_file():
        ckpt = load_checkpoint(path)
        _refuse_overrides(name, overrides)
        return ResolvedModel(path.stem, ckpt.config, ckpt)
    if require_trained:
        raise UserError(
            f"{name!r} is not a trained model: give a zoo id ({', '.join(zoo_ids()) or 'none yet'}) "
            "or an nsr-edge checkpoint file"
        )
    if name in PRESETS:
        base = PRESETS[name]
    elif name in ARCHITECTURES:
        base = ModelConfig(arch=name)
    else:
        known = sorted(set(zoo_ids()) | set(PRESETS) | set(ARCHITECTURES))
        raise UserError(f"unknown model {name!r}; known: {', '.join(known)} (or a checkpoint path)")
    try:
        config = base.with_(**overrides)
    except (TypeError, ValueError) as e:
        raise UserError(f"invalid model options: {e}") from None
    return ResolvedModel(name, config, None)


def checkpoint_path(name: str) -> Path:
    """The checkpoint file behind a zoo id or a path."""
    if name in zoo_ids():
        return zoo_checkpoint(name)
    path = Path(name)
    if not path.is_file():
        raise UserError(f"{name}: neither a zoo id nor a checkpoint file")
    return path


def task_of(resolved: ResolvedModel, guess: bool = False) -> TaskSpec | None:
    """The task a trained model was trained for: its checkpoint's provenance, else its zoo card's; with ``guess``,
    else the config's default (SR at its scale; sigma-25 denoising for a scale-1 model)."""
    task = resolved.checkpoint.provenance.get("task") if resolved.checkpoint else None
    if task is None and resolved.card and isinstance(resolved.card.get("task"), dict):
        task = resolved.card["task"]
    if task:
        return TaskSpec.from_dict(task)
    if not guess:
        return None
    cfg = resolved.config
    return TaskSpec("sr" if cfg.scale > 1 else "denoise", scale=cfg.scale, noise=25.0 if cfg.scale == 1 else 0,
                    channels=cfg.channels)


def _refuse_overrides(name: str, overrides: dict[str, Any]) -> None:
    if overrides:
        raise UserError(f"{name} is a trained model; architecture options ({', '.join(overrides)}) cannot change it")
