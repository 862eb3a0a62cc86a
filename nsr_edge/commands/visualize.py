"""`nsr-edge visualize-routing`: which kernel bank each tile uses, per layer (cf. the paper's Fig. 6)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from ..runtime.files import check_output_file
from ._common import MAX_MEMORY_GB, TILE, tile_spec


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("visualize-routing", help="plot per-tile bank selection of every routed layer")
    p.add_argument("image")
    p.add_argument("--model", required=True, help="zoo id or checkpoint of an NSR model")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--tile", type=TILE, default=48, help="tile side (default 48, the reference)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists (never the input image)")
    p.add_argument("--max-memory-gb", type=MAX_MEMORY_GB, default=8.0,
                   help="refuse an image whose tiles (all routed at once) need more working memory (default 8 GiB)")
    p.set_defaults(func=cmd_visualize)


def cmd_visualize(args: argparse.Namespace) -> int:
    from .. import hub
    from ..restore import plan_batch
    from ..runtime import images
    from ..visualize import render, routing_maps

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UserError("--out must be a .png file")
    check_output_file(out, args.force, inputs=(args.image, args.model), option="--out")
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
    h, w = data.shape[1:]
    n_tiles = -(-h // spec.stride) * -(-w // spec.stride)  # every tile is routed in one batch
    if plan_batch(resolved.config, spec, (h, w), args.max_memory_gb, n_tiles) < n_tiles:
        raise UserError(f"{args.image}: {n_tiles} tiles of {args.tile} px routed at once need more than "
                        f"--max-memory-gb {args.max_memory_gb:g}; use a smaller image or raise --max-memory-gb")
    maps = routing_maps(resolved.build(), data, spec)
    render(data, maps, spec, out, f"{resolved.id}: top routing bank per {args.tile}px tile")
    print(f"wrote {out} ({len(maps.layers)} routed layers, {maps.top_bank.shape[1]} tiles)")
    return 0
