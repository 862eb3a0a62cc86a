"""Checkpoints: our own format, and import of the reference code's (github ychfan/pt_ir) checkpoints.

Our format is a plain dict saved with ``torch.save``: it holds only tensors, numbers, strings, lists and dicts, so it
loads with ``weights_only=True`` (no pickled code is ever executed):

    {"format": "nsr-edge-checkpoint", "version": 1, "config": ModelConfig.to_dict(),
     "state_dict": {...}, "provenance": {...}, "training": {...} (optional: optimizer, step, ...)}
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UserError
from .runtime.files import atomic_write_bytes, file_sha256
from .layers import RoutingConfig
from .models import ModelConfig, build_model

FORMAT = "nsr-edge-checkpoint"
VERSION = 1


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the model it claims to be."""


@dataclass
class Checkpoint:
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    provenance: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] | None = None

    def build(self) -> nn.Module:
        model = build_model(self.config)
        check_state_dict(model, self.state_dict)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "config": self.config.to_dict(),
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in self.state_dict.items()},
            "provenance": self.provenance,
        }
        if self.training is not None:
            out["training"] = self.training
        return out


def safe_torch_load(path: str | os.PathLike) -> Any:
    """``torch.load`` restricted to plain data, with every failure turned into a one-line `CheckpointError`."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file")
    if p.is_dir():
        raise CheckpointError(f"{p}: is a directory, expected a checkpoint file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: empty file")
    _check_zip_container(p)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message: its weights_only boilerplate (advice to load with weights_only=False: never here), then
        # the reason; keep the reason only.
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith(
            ("Weights only load failed", "Check the documentation", "Please file an issue", "You can use"))]
        reason = lines[0] if lines else type(e).__name__
        if "GLOBAL" not in reason and "Unsupported" not in reason:
            raise CheckpointError(f"{p}: not a readable PyTorch checkpoint (corrupt or truncated?): {reason[:200]}") \
                from None
        raise CheckpointError(
            f"{p}: refused: it holds objects other than plain tensors and containers (not loaded, nothing executed): "
            f"{reason[:200]}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, AttributeError,
            TypeError, IndexError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{p}: not a readable PyTorch checkpoint (corrupt or truncated?): {first[:200]}") from None


MAX_CHECKPOINT_MEMBERS = 100_000


def _check_zip_container(p: Path) -> None:
    """A checkpoint is a zip (torch.save's format) of STORED members: refuse, before torch reads it, one whose
    members would expand to more than twice the file (a zip bomb: torch never compresses) or that has absurdly
    many of them. Legacy (non-zip) checkpoints pass through to torch's own checks."""
    from .runtime.files import check_zip_members

    if not zipfile.is_zipfile(p):
        with open(p, "rb") as f:
            if f.read(4) == b"PK\x03\x04":  # a zip whose central directory is gone: cut short
                raise CheckpointError(f"{p}: not a readable PyTorch checkpoint: its zip container is truncated or "
                                      "corrupt (no central directory)")
        return
    size = p.stat().st_size
    try:
        with zipfile.ZipFile(p) as zf:
            check_zip_members(zf, str(p), MAX_CHECKPOINT_MEMBERS, 2 * size + (1 << 20), CheckpointError,
                              "torch stores checkpoint members uncompressed: not a checkpoint")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{p}: not a readable PyTorch checkpoint (corrupt zip container: {e})") from None


def check_state_dict(model: nn.Module, state: dict[str, Any]) -> None:
    """Every key present, none extra, every shape equal, every value finite; else one precise error."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"unexpected {len(extra)} keys (e.g. {', '.join(extra[:3])})")
        raise CheckpointError("state dict does not match the model config: " + "; ".join(parts))
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"state dict entry {k} is a {type(v).__name__}, not a tensor")
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"shape mismatch for {k}: checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)}")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"state dict entry {k} holds NaN or Inf values")


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike, force: bool = False) -> Path:
    """Write atomically (temp file + rename); refuse to replace an existing file unless ``force``."""
    p = Path(path)
    if p.exists() and not force:
        raise UserError(f"{p} exists; pass --force to overwrite")
    p.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(ckpt.to_dict(), buf)
    atomic_write_bytes(p, buf.getvalue())
    return p


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load our own checkpoint format (use `import_reference_checkpoint` for the reference code's)."""
    raw = safe_torch_load(path)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        hint = ""
        if isinstance(raw, dict) and ("model_state_dict" in raw or any(str(k).startswith("body.") for k in raw)):
            hint = " It looks like a reference-code checkpoint: run `nsr-edge import-checkpoint` first."
        raise CheckpointError(f"{path}: not an nsr-edge checkpoint.{hint}")
    if raw.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {raw.get('version')} is not supported (expected {VERSION})")
    try:
        config = ModelConfig.from_dict(raw["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid model config: {e}") from None
    state = raw.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: no state_dict")
    ckpt = Checkpoint(config, state, raw.get("provenance") or {}, raw.get("training"))
    try:
        check_state_dict(build_model(config), state)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return ckpt


# ------------------------------------------------------------------------------------------------ reference import

_BLOCK_KEY = re.compile(r"^body\.(\d+)\.body\.0\.weight_v$")


def _reference_state_dict(raw: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        raise CheckpointError(f"{path}: already an nsr-edge checkpoint; use it as it is (--model {path})")
    if isinstance(raw, dict) and "model_state_dict" in raw:
        raw = raw["model_state_dict"]
    if not isinstance(raw, dict) or not raw or not all(isinstance(k, str) for k in raw):
        raise CheckpointError(f"{path}: no model state dict found (expected {{'model_state_dict': ...}})")
    state = {k.removeprefix("module."): v for k, v in raw.items()}  # DataParallel / DDP prefixes
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: the state dict holds non-tensor entries")
    if "body.0.weight_v" not in state:
        raise CheckpointError(f"{path}: not a WDSR/NSR checkpoint (no body.0.weight_v; keys start with "
                              f"{', '.join(list(state)[:3])})")
    return state


def infer_reference_config(state: dict[str, torch.Tensor]) -> ModelConfig:
    """Recover the architecture from key names and tensor shapes (see the layout notes in layers.py)."""
    try:
        width, channels = state["body.0.weight_v"].shape[:2]
        block_ids = sorted(int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k)))
        if not block_ids or block_ids != list(range(1, len(block_ids) + 1)):
            raise CheckpointError(f"residual blocks are not numbered 1..N (found {block_ids[:5]}...)")
        blocks = len(block_ids)
        tail_rows = state[f"body.{blocks + 1}.weight_v"].shape[0]
        scale = round((tail_rows / channels) ** 0.5)
        if scale * scale * channels != tail_rows:
            raise CheckpointError(f"tail conv has {tail_rows} outputs, not channels * scale^2")
        second = state["body.1.body.2.weight_v"]
        inner = second.shape[1]
        sparse = "body.1.body.0.mlp.0.weight" in state
        if not sparse:
            return ModelConfig("wdsr", scale, channels, blocks, width, inner / width, 1, 1)
        banks = second.shape[0] // width
        mlp = state["body.1.body.0.mlp.0.weight"]
        cardinality = mlp.shape[0] // banks
        pool_grid = round((mlp.shape[1] / width) ** 0.5)
        shared = "body.1.body.2.mlp.0.weight" not in state
        learnable_t = "body.1.body.0.log_temperature" in state
        routing = RoutingConfig(pool_grid=pool_grid, shared=shared, learnable_temperature=learnable_t)
        return ModelConfig("wdsr_nsr", scale, channels, blocks, width, inner / width, banks, cardinality, routing)
    except KeyError as e:
        raise CheckpointError(f"cannot infer the architecture: key {e} is missing") from None
    except ZeroDivisionError:
        raise CheckpointError("cannot infer the architecture: degenerate tensor shapes") from None


def import_reference_checkpoint(
    path: str | os.PathLike, config: ModelConfig | None = None
) -> Checkpoint:
    """Read a pt_ir checkpoint (``{'model_state_dict', 'optimizer_state_dict', 'epoch', ...}``, CUDA tensors mapped
    to CPU), infer the config unless given, check every key and shape, and return it in our format."""
    raw = safe_torch_load(path)
    state = _reference_state_dict(raw, path)
    cfg = config or infer_reference_config(state)
    try:
        model = build_model(cfg)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    check_state_dict(model, state)
    provenance = {
        "source": "github.com/ychfan/pt_ir checkpoint",
        "source_file": Path(path).name,
        "source_sha256": file_sha256(path),
        "epoch": int(raw["epoch"]) if isinstance(raw, dict) and isinstance(raw.get("epoch"), int) else None,
        "config_inferred": config is None,
    }
    return Checkpoint(cfg, {k: v.float().contiguous() for k, v in state.items()}, provenance)
