"""`nsr-edge` command line. Each sub-command is a small function; heavy libraries are imported inside it so that
`nsr-edge --help` stays fast. A `UserError` becomes one line on stderr and exit code 2; nothing else is caught."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import UserError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str) -> Callable:
    def wrap(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = fn
        return fn

    return wrap


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


def add_architecture_options(p: argparse.ArgumentParser) -> None:
    """Config overrides for a preset or architecture. Names follow the reference code's flags."""
    g = p.add_argument_group("architecture options (presets and architecture names only)")
    g.add_argument("--scale", type=int, help="upscaling factor (1 for denoising / deblocking)")
    g.add_argument("--blocks", type=int, help="number of residual blocks")
    g.add_argument("--channels", type=int, dest="width", help="residual units C (the reference's num_residual_units)")
    g.add_argument("--width-multiplier", type=float, help="block expansion C -> C*wm -> C")
    g.add_argument("--groups", type=int, dest="banks", help="kernel banks k (the reference's num_sparsity_groups)")
    g.add_argument("--cardinality", type=int, help="cardinal groups d (the reference's num_sparsity_cardinals)")
    g.add_argument("--image-channels", type=int, dest="channels", choices=(1, 3), help="1 gray, 3 RGB")


def architecture_overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("scale", "blocks", "width", "width_multiplier", "banks", "cardinality", "channels")
    return {k: getattr(args, k, None) for k in keys}


# ----------------------------------------------------------------------------------------------------- commands


@command("models")
def cmd_models(args: argparse.Namespace) -> int:
    from . import hub
    from .models import ARCHITECTURES, PRESETS

    zoo = [{"id": i, **{k: hub.zoo_card(i).get(k) for k in ("task", "scale", "arch")}} for i in hub.zoo_ids()]
    data = {
        "architectures": [{"name": a.name, "sparse": a.sparse, "description": a.description}
                          for a in ARCHITECTURES.values()],
        "presets": [{"id": k, **v.to_dict()} for k, v in PRESETS.items()],
        "zoo": zoo,
    }
    if args.json:
        print_json(data)
        return 0
    print("Architectures:")
    for a in data["architectures"]:
        print(f"  {a['name']:<12} {'sparse' if a['sparse'] else 'dense ':<7} {a['description']}")
    print("Presets (untrained configs):")
    for k, v in PRESETS.items():
        print(f"  {k:<16} {v.arch:<9} x{v.scale} ch={v.channels} blocks={v.blocks} C={v.width} "
              f"wm={v.width_multiplier:g} k={v.banks} d={v.cardinality}")
    print("Zoo (trained, see `nsr-edge zoo`):")
    for z in zoo:
        print(f"  {z['id']:<28} {z['task']} x{z['scale']} {z['arch']}")
    if not zoo:
        print("  (none)")
    return 0


@command("info")
def cmd_info(args: argparse.Namespace) -> int:
    from . import hub
    from .costs import cost_summary

    resolved = hub.resolve(args.model, architecture_overrides(args))
    model = resolved.build()
    summary = cost_summary(model, resolved.config.scale, tile=args.tile)
    data = {"id": resolved.id, "trained": resolved.trained, "config": resolved.config.to_dict(), **summary}
    if args.json:
        print_json(data)
        return 0
    c = resolved.config
    print(f"{resolved.id}: {c.arch} x{c.scale}, {c.channels} image channel(s), {c.blocks} blocks, C={c.width}, "
          f"wm={c.width_multiplier:g}, k={c.banks}, d={c.cardinality}, routing={c.routing.kind}"
          f"{' (shared per block)' if c.routing.shared else ''}; {'trained' if resolved.trained else 'untrained'}")
    print(f"parameters: {summary['params']:,}")
    print(f"MACs per pixel at {args.tile}x{args.tile} tiles:   per input px   per output px")
    for form, m in summary["macs_per_pixel"].items():
        print(f"  {form:<12} {m['per_input_pixel']:>14,.0f} {m['per_output_pixel']:>15,.0f}")
    return 0


@command("import-checkpoint")
def cmd_import_checkpoint(args: argparse.Namespace) -> int:
    from .checkpoint import import_reference_checkpoint, save_checkpoint
    from .models import ModelConfig

    config = None
    if args.config:
        try:
            config = ModelConfig.from_dict(json.loads(Path(args.config).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise UserError(f"--config {args.config}: {e}") from None
    ckpt = import_reference_checkpoint(args.path, config)
    out = save_checkpoint(ckpt, args.out, force=args.force)
    c = ckpt.config
    print(f"imported {args.path} -> {out}: {c.arch} x{c.scale}, {c.blocks} blocks, C={c.width}, "
          f"wm={c.width_multiplier:g}, k={c.banks}, d={c.cardinality}"
          f" ({'inferred' if config is None else 'given'} config)")
    return 0


# ----------------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nsr-edge",
        description="Neural Sparse Representation restoration models: train, convert, quantize, validate, profile.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list architectures, presets and zoo models")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("info", help="parameters and MACs per pixel of a model in every form")
    p.add_argument("model", help="zoo id, preset, architecture name or checkpoint path")
    p.add_argument("--tile", type=int, default=48, help="tile side used to amortise per-tile costs (default 48)")
    p.add_argument("--json", action="store_true")
    add_architecture_options(p)

    p = sub.add_parser("import-checkpoint", help="convert a reference-code (pt_ir) checkpoint to ours")
    p.add_argument("path", help="reference checkpoint (.pth)")
    p.add_argument("--out", required=True, help="output nsr-edge checkpoint (.pt)")
    p.add_argument("--config", help="JSON model config, when it should not be inferred from the weights")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"nsr-edge {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nsr-edge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
