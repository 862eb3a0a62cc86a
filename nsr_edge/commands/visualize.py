"""`nsr-edge visualize-routing`: which kernel bank each tile uses, per layer (cf. the paper's Fig. 6)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from ._common import tile_spec


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("visualize-routing", help="plot per-tile bank selection of every routed layer")
    p.add_argument("image")
    p.add_argument("--model", required=True, help="zoo id or checkpoint of an NSR model")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--tile", type=int, default=48, help="tile side (default 48, the reference)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_visualize)


def cmd_visualize(args: argparse.Namespace) -> int:
    from .. import hub
    from ..runtime import images
    from ..visualize import render, routing_maps

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UserError("--out must be a .png file")
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; pass --force to overwrite")
    resolved = hub.resolve(args.model, require_trained=True)
    try:
        img = images.load_image(args.image)
    except images.ImageError as e:
        raise UserError(str(e)) from None
    data = img.data
    if resolved.config.channels == 3 and data.shape[0] == 1:
        data = data.repeat(3, axis=0)
    elif resolved.config.channels == 1 and data.shape[0] == 3:
        data = data.mean(0, keepdims=True)
    spec = tile_spec(args.tile)
    maps = routing_maps(resolved.build(), data, spec)
    render(data, maps, spec, out, f"{resolved.id}: top routing bank per {args.tile}px tile")
    print(f"wrote {out} ({len(maps.layers)} routed layers, {maps.top_bank.shape[1]} tiles)")
    return 0
