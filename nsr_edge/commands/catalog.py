"""`nsr-edge models`, `nsr-edge info` and `nsr-edge targets`: what models exist, what they cost, and what each
conversion target can do."""

from __future__ import annotations

import argparse

from ._common import TILE, add_architecture_options, architecture_overrides, print_json

def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list architectures, presets and zoo models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("info", help="parameters and MACs per pixel of a model in every form")
    p.add_argument("model", help="zoo id, preset, architecture name or checkpoint path")
    p.add_argument("--tile", type=TILE, default=48, help="tile side used to amortise per-tile costs (default 48)")
    p.add_argument("--json", action="store_true")
    add_architecture_options(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("targets", help="conversion targets and what each can do (recipes, strategies, artifact)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_targets)


def cmd_targets(args: argparse.Namespace) -> int:
    from ..converters.base import describe_targets

    targets = describe_targets()
    if args.json:
        print_json(targets)
        return 0
    for t in targets:
        caps = t.get("capabilities")
        state = "" if t["available"] else f"  [not available: {t['reason']}]"
        print(f"{t['name']}{state}")
        if caps is None:
            continue
        print(f"  artifact {caps['artifact']} ({caps['artifact_kind']}), runner {caps['runner']}")
        print(f"  recipes {', '.join(caps['recipes'])}"
              + (f" (calibrated: {', '.join(caps['calibrated_recipes'])})" if caps["calibrated_recipes"] else ""))
        print(f"  strategies {', '.join(caps['strategies'])}"
              + "".join(f"; refuses {k}: {v}" for k, v in caps["refused_strategies"].items()))
        extra = [w for w, on in (("extra tiles", caps["extra_tiles"]), ("multi-program", caps["multi_program"])) if on]
        reqs = [r["why"] for r in caps["requirements"]]
        if extra or reqs:
            print("  " + "; ".join(extra + [f"needs: {r}" for r in reqs]))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .. import hub
    from ..models import ARCHITECTURES, PRESETS

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


def cmd_info(args: argparse.Namespace) -> int:
    from .. import hub
    from ..costs import cost_summary

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
