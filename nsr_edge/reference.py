"""The FP32 PyTorch model an artifact was converted from, found through its card's source and checked by SHA-256:
the reference that `validate`, `--strategy auto`, the demo and the benches compare an artifact with."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import UserError
from .runtime.card import ModelCard


def reference_checkpoint(card: ModelCard, checkpoint: str | os.PathLike | None = None) -> Path:
    """The checkpoint behind the card: the zoo model it names, or (a converted checkpoint, recorded by file name and
    SHA-256 only) ``checkpoint``, else a file of that name in the current folder. Its SHA-256 must match the card.
    ``checkpoint`` may be what the user converted (a path, or the zoo id itself)."""
    from . import hub
    from .runtime.files import file_sha256

    src = card.model.source
    if checkpoint is not None and not (src.kind == "zoo" and str(checkpoint) == src.ref):  # a zoo id is no path
        path = Path(checkpoint)
    elif src.kind == "zoo":
        path = hub.zoo_checkpoint(src.ref)
    else:
        path = Path(src.ref)
    if not path.is_file():
        raise UserError(f"the FP32 source model {src.ref} is not here ({path}); pass --reference PATH to the "
                        "checkpoint it was converted from, or --no-reference for task metrics only")
    if file_sha256(path) != src.sha256:
        raise UserError(f"{path} is not the FP32 model this artifact was converted from (SHA-256 differs from the "
                        "card's source); pass the right --reference or convert again")
    return path


def reference_fn(card: ModelCard, checkpoint: str | os.PathLike | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """The FP32 model (training form, eval) as a tiles -> tiles function on numpy NCHW float32 batches."""
    from . import hub
    from .evaluate import torch_tile_fn

    path = reference_checkpoint(card, checkpoint)
    return torch_tile_fn(hub.resolve(str(path), require_trained=True).build())


__all__ = ["reference_checkpoint", "reference_fn"]
