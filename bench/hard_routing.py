"""Accuracy cost of hard (top-1) routing: soft NSR vs the same model made hard, vs hard-trained variants, vs the dense
models of equal MACs and equal parameters. Same evaluation as `nsr-edge eval` (reference 48 px tiling).

    .venv/bin/python bench/hard_routing.py --scale 2 --hard nsr_sr_x2_hard [...] [--soft ...] [--dense ...]

Every model is evaluated in the deploy form that would run on a device: `hard` for the routed ones (top-1 bank per
tile, static banks), the folded dense net for the baselines.
"""

from __future__ import annotations

import argparse
import platform
import shlex
from dataclasses import replace
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nsr_edge import hub  # noqa: E402
from nsr_edge.deploy import hard_routing_report, to_deploy  # noqa: E402
from nsr_edge.evaluate import EvalTarget, evaluate_sets, model_restorer  # noqa: E402
from nsr_edge.hub import task_of  # noqa: E402
from nsr_edge.runtime.tiling import REFERENCE, split  # noqa: E402


def routing_stats(model: torch.nn.Module, task) -> dict:
    """Routing statistics on real tiles (Set5's first image): mean top-1 probability, top-1/top-2 margins, and how
    unevenly the tiles spread over the banks (the busiest bank's share, over the routed layers)."""
    from nsr_edge.runtime import datasets
    from nsr_edge.runtime.evaluation import task_level

    pair = datasets.list_eval_images("set5", task.scale)[0]
    inp, _ = datasets.make_input(pair, task.name, task_level(task))
    tiles, _ = split(inp, replace(REFERENCE, whole_below=0))  # always cut into 48 px tiles
    r = hard_routing_report(model, torch.from_numpy(tiles))
    busiest = max((max(u) for u in r.bank_usage), default=1.0)
    return {"top1": r.mean_top1_probability, "margin": r.min_top1_margin, "median_margin": r.median_top1_margin,
            "busiest": busiest, "min_busiest": min((max(u) for u in r.bank_usage), default=1.0)}


def _name(path: str) -> str:
    p = Path(path)
    return p.parent.name if p.suffix == ".pt" else path


def _trained(prov: dict) -> str:
    """How a checkpoint was trained, in a few words."""
    parts = [f"{prov.get('steps')} steps of {prov.get('patch_size')} px"]
    if prov.get("init_from"):
        parts.append(f"from {Path(str(prov['init_from'])).parent.name}")
    if (prov.get("sparsity") or {}).get("load_balance"):
        parts.append(f"load balance {prov['sparsity']['load_balance']}")
    if prov.get("distill_from"):
        parts.append(f"distilled from {Path(str(prov['distill_from'])).parent.name} (w {prov.get('distill_weight')})")
    return ", ".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--hard", nargs="*", default=[], help="hard-routed checkpoints (ST fine-tunes, ...)")
    ap.add_argument("--soft", nargs="*", default=[],
                    help="more soft-routed checkpoints, evaluated as trained (e.g. the soft model fine-tuned for the "
                         "same extra steps as a hard fine-tune: the budget-matched reference)")
    ap.add_argument("--dense", nargs="*", default=[], help="more dense checkpoints (e.g. budget-matched baselines)")
    ap.add_argument("--no-made-hard", action="store_true", help="skip the post-hoc argmax row")
    ap.add_argument("--sets", nargs="*", default=["set5", "set14", "bsd100"])
    ap.add_argument("--out", help="default docs/hard_routing_x<scale>.md (docs/hard_routing.md summarises them)")
    args = ap.parse_args()
    args.out = args.out or str(ROOT / "docs" / f"hard_routing_x{args.scale}.md")
    torch.set_num_threads(1)
    s = args.scale
    soft = hub.resolve(f"nsr_sr_x{s}", require_trained=True)
    task = task_of(soft)
    rows = []

    def add(label: str, model: torch.nn.Module, note: str = "") -> None:
        results = evaluate_sets(EvalTarget(label, model_restorer(model, s)), task, args.sets, [], None)
        rows.append((label, note, [r.summary() for r in results]))
        print(label, " ".join(f"{r.dataset} {r.mean('psnr_y'):.3f}" for r in results), flush=True)

    soft_model = soft.build()
    st = routing_stats(soft_model, task)
    add(f"nsr_sr_x{s} soft routing (training form)", soft_model,
        f"mean top-1 prob {st['top1']:.2f}, min margin {st['margin']:.3f}")
    if not args.no_made_hard:
        add(f"nsr_sr_x{s} made hard after training", to_deploy(soft_model, "hard"), "argmax of the soft router")
    for path in args.soft:
        resolved = hub.resolve(path, require_trained=True)
        prov = resolved.checkpoint.provenance
        add(f"{_name(path)} (soft)", resolved.build(), _trained(prov))
    for path in args.hard:
        resolved = hub.resolve(path, require_trained=True)
        model = resolved.build()
        st = routing_stats(model, task)
        prov = resolved.checkpoint.provenance
        shared = ", shared routing" if resolved.config.routing.shared else ""
        note = (f"{resolved.config.routing.kind}{shared}, {_trained(prov)}"
                f"; median top-1 margin {st['median_margin']:.4f}; busiest bank per layer takes "
                f"{100 * st['min_busiest']:.0f}-{100 * st['busiest']:.0f}% of tiles")
        add(f"{_name(path)} (hard, deploy form)", to_deploy(model, "hard"), note)
    for path in args.dense:
        resolved = hub.resolve(path, require_trained=True)
        add(f"{_name(path)} (dense)", to_deploy(resolved.build(), "output-mix"), _trained(resolved.checkpoint.provenance))
    for kind in ("eqmacs", "eqparams"):
        zoo_id = f"dense_sr_x{s}_{kind}"
        if zoo_id in hub.zoo_ids():
            add(zoo_id, to_deploy(hub.resolve(zoo_id).build(), "output-mix"), "dense")
    lines = [f"# Hard routing, SR x{s}", "",
             f"Produced by `bench/hard_routing.py {shlex.join(sys.argv[1:])}`. Y-PSNR (dB) on the reference tiling; hard rows run",
             "the deploy form a device would run (top-1 bank per 48 px tile, static banks).", "",
             "| model | " + " | ".join(args.sets) + " | vs soft NSR | note |",
             "|---|" + "---:|" * len(args.sets) + "---|---|"]
    soft_res = rows[0][2]
    for label, note, res in rows:
        delta = " / ".join(f"{r['psnr_y'] - b['psnr_y']:+.3f}" for r, b in zip(res, soft_res))
        lines.append(f"| {label} | " + " | ".join(f"{r['psnr_y']:.3f}" for r in res) + f" | {delta} | {note} |")
    lines += ["", f"Machine: {platform.machine()}, 2 cores; torch {torch.__version__}.", ""]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
