"""`nsr-edge import-checkpoint`: reference-code (pt_ir) checkpoints to our format."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UserError
from ..runtime.files import check_output_file


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-checkpoint", help="convert a reference-code (pt_ir) checkpoint to ours")
    p.add_argument("path", help="reference checkpoint (.pth)")
    p.add_argument("--out", required=True, help="output nsr-edge checkpoint (.pt)")
    p.add_argument("--config", help="JSON model config, when it should not be inferred from the weights")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists (never the input)")
    p.set_defaults(func=cmd_import_checkpoint)


def cmd_import_checkpoint(args: argparse.Namespace) -> int:
    from ..checkpoint import import_reference_checkpoint, save_checkpoint
    from ..models import ModelConfig

    check_output_file(args.out, args.force, inputs=(args.path, args.config), option="--out")
    config = None
    if args.config:
        try:
            config = ModelConfig.from_dict(json.loads(Path(args.config).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise UserError(f"--config {args.config}: {getattr(e, 'strerror', None) or e}") from None
    ckpt = import_reference_checkpoint(args.path, config)
    out = save_checkpoint(ckpt, args.out, force=args.force)
    c = ckpt.config
    print(f"imported {args.path} -> {out}: {c.arch} x{c.scale}, {c.blocks} blocks, C={c.width}, "
          f"wm={c.width_multiplier:g}, k={c.banks}, d={c.cardinality}"
          f" ({'inferred' if config is None else 'given'} config)")
    return 0
