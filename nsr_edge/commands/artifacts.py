"""`nsr-edge convert`, `nsr-edge validate`, `nsr-edge profile`: commands on artifacts, the same for every target."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..devices.commands import (add_device_arguments, local_device, on_device, profile_on_device,
                                validate_on_device, with_device)
from ..errors import UserError
from ..reference import reference_fn
from ..runtime.files import check_writable
from ._common import (NON_NEGATIVE, NON_NEGATIVE_FLOAT, POSITIVE, THREADS, TILE, check_dataset, finite_float,
                      print_json)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from ..converters.base import RECIPES, target_names

    p = sub.add_parser("convert", help="lower a trained model to an edge artifact + model card",
                       description="Deploy form -> quantize (recipe) -> lower (target) -> DIR/<artifact> + DIR/model.json")
    p.add_argument("--model", required=True, help="zoo id or nsr-edge checkpoint (.pt)")
    p.add_argument("--target", default="executorch", help=f"one of {', '.join(target_names())} (default executorch)")
    p.add_argument("--quant", default="fp32", help=f"recipe: {', '.join(RECIPES)} (default fp32)")
    p.add_argument("--tile", type=TILE, default=64, help="tile side in input pixels, context margins included "
                   "(24..4096, default 64)")
    p.add_argument("--extra-tiles", type=TILE, nargs="*", default=[], help="more tile sides, one method each")
    p.add_argument("--strategy", default="output-mix", help="output-mix | kernel-mix | hard | auto (default output-mix)")
    p.add_argument("--out", required=True, help="artifact folder (must be new or empty unless --force)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    g = p.add_argument_group("quantization (int8 recipes)")
    g.add_argument("--calibration-tiles", type=POSITIVE, help="tiles of the training set to calibrate on (recipe default 64)")
    g.add_argument("--calibration-dataset", help="calibration images (default: the task's training set)")
    g.add_argument("--data-dir", help="root of the data sets (default $NSR_EDGE_DATA or ../shared/data)")
    g.add_argument("--qat-steps", type=NON_NEGATIVE, help="int8-qat fine-tuning steps (recipe default 500)")
    g.add_argument("--qat-dir", help="where int8-qat keeps its resumable state (default .nsr-edge-qat/)")
    g.add_argument("--fp32-parts", help="comma list of parts kept in float: routing, heads, first, last, skip, "
                   "output, residual ('' for none; default: the recipe's, see docs/deploy.md)")
    g = p.add_argument_group("--strategy auto")
    g.add_argument("--auto-max-drop-db", type=NON_NEGATIVE_FLOAT, default=0.05,
                   help="accuracy tolerance: Y-PSNR drop vs the FP32 model on the check set (default 0.05)")
    g.add_argument("--auto-dataset", default=None, help="check set (default: the task's first evaluation set)")
    p.add_argument("--json", action="store_true", help="print the model card")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("validate", help="run an artifact on real images and compare it with FP32 and ground truth")
    p.add_argument("artifact", help="artifact folder written by `nsr-edge convert`")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", help="evaluation set by name (default: the task's first, e.g. set5)")
    src.add_argument("--dataset-dir", help="a folder of ground-truth images (inputs are degraded from them)")
    p.add_argument("--data-dir", help="root of the data sets")
    p.add_argument("--limit", type=POSITIVE, help="first N images only")
    p.add_argument("--threads", type=THREADS, default=1)
    p.add_argument("--reference", help="the FP32 checkpoint the artifact was converted from (default: the zoo model, "
                   "or the card's checkpoint file name in the current folder); its SHA-256 must match the card")
    p.add_argument("--no-reference", action="store_true", help="skip the FP32 PyTorch reference (task metrics only)")
    p.add_argument("--stored-reference", action="store_true", help="compare with the FP32 outputs convert stored "
                   "beside the artifact (reference.npz) instead of running PyTorch; the default where PyTorch is not "
                   "installed")
    p.add_argument("--allow-small", action="store_true", help="pad images smaller than the tile instead of refusing")
    p.add_argument("--max-drop-db", type=finite_float, help="fail if FP32 Y-PSNR minus the artifact's exceeds this")
    p.add_argument("--min-psnr-vs-reference", type=finite_float, help="fail if PSNR vs the FP32 output is below this (dB)")
    p.add_argument("--max-abs", type=NON_NEGATIVE_FLOAT, help="fail if max |artifact - FP32| exceeds this ([0,1] units)")
    p.add_argument("--per-layer", action="store_true", help="per-op numeric gap (ETDump + ETRecord + Inspector)")
    p.add_argument("--record", action="store_true", help="store the summary in the model card")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    add_device_arguments(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("profile", help="latency (median/p90 per tile and per megapixel), per-op times, peak memory")
    p.add_argument("artifact", help="artifact folder written by `nsr-edge convert`")
    p.add_argument("--threads", type=THREADS, default=1)
    p.add_argument("--runs", type=POSITIVE, default=50)
    p.add_argument("--warmup", type=NON_NEGATIVE, default=5)
    p.add_argument("--per-op", action="store_true", help="per-op breakdown from an ETDump (ExecuTorch)")
    p.add_argument("--record", action="store_true", help="store the result in the model card")
    p.add_argument("--json", action="store_true")
    add_device_arguments(p, runner=True)
    p.set_defaults(func=cmd_profile)


# ------------------------------------------------------------------------------------------------------------ convert


def _preflight_convert(args: argparse.Namespace, calibrates: bool) -> None:
    """Seconds, not minutes: the model, free space for the artifact and the data sets the conversion will read."""
    from .. import hub
    from ..hub import task_of

    resolved = hub.resolve(args.model, require_trained=True)
    task = task_of(resolved, guess=True)
    need = 4 * resolved.config.param_estimate() * (1 + len(args.extra_tiles)) + (1 << 20)
    check_writable(args.out, "--out", need_bytes=need)
    if task is not None and calibrates:
        check_dataset(args.calibration_dataset or task.train_set, "calibration data (--calibration-dataset)", args.data_dir)
    if task is not None and args.strategy == "auto":
        check_dataset(args.auto_dataset or task.eval_sets[0], "check set of --strategy auto (--auto-dataset)", args.data_dir, task.scale)


def cmd_convert(args: argparse.Namespace) -> int:
    from ..converters.base import check_output_dir
    from ..converters.pipeline import ConvertOptions, check_request, convert

    overrides: dict[str, Any] = {}
    if args.fp32_parts is not None:
        overrides["fp32_parts"] = tuple(p for p in args.fp32_parts.split(",") if p)
    options = ConvertOptions(
        model=args.model, target=args.target, recipe=args.quant, tile=args.tile, extra_tiles=tuple(args.extra_tiles),
        strategy=args.strategy, calibration_tiles=args.calibration_tiles,
        calibration_dataset=args.calibration_dataset, data_dir=args.data_dir, qat_steps=args.qat_steps,
        qat_dir=args.qat_dir, recipe_overrides=overrides, progress=not args.quiet,
    )
    check_output_dir(args.out, args.force)  # paths first: no heavy import has happened yet (well under a second)
    check_writable(args.out, "--out")
    target, recipe = check_request(options)  # what the target cannot do is refused before the model loads
    _preflight_convert(args, target.capabilities.needs_calibration(recipe.name))
    if args.strategy == "auto":
        from ..converters.auto import convert_auto

        path, card = convert_auto(options, args.out, args.force, args.auto_max_drop_db, args.auto_dataset)
    else:
        path, card = convert(options, args.out, args.force)
    if args.json:
        print_json(card.to_dict())
        return 0
    d = card.delegation
    fwd = d.methods["forward"]
    print(f"{path}/{card.artifact.file}: {card.model.id} -> {card.target} {card.recipe['name']}, "
          f"strategy {card.strategy}, tile {card.tile['tile']}, {card.artifact.bytes / 1e6:.2f} MB")
    print(f"  {d.backend}: {fwd.delegated_ops}/{fwd.total_ops} ops delegated in {fwd.partitions} "
          f"partition(s)" + ("" if fwd.fully_delegated else "; outside: " + ", ".join(
              f"{f.op} x{f.count} ({f.reason})" for f in fwd.fallbacks)))
    for m in card.methods:
        print(f"  method {m.name}: {m.input_shape} -> {m.output_shape}")
    if card.tensor_errors is not None:
        from ..runtime.validate import tensor_errors_line

        print("  " + tensor_errors_line(card.tensor_errors))
    if card.auto:
        print("  strategy auto: " + "; ".join(f"{c['strategy']} {c.get('median_ms', '-')} ms, drop "
                                               f"{c.get('drop_db', '-')} dB ({c['status']})" for c in card.auto["candidates"]))
    return 0


# ----------------------------------------------------------------------------------------------------------- validate


def cmd_validate(args: argparse.Namespace) -> int:
    if on_device(args):  # --device other than plain local: nsr_edge/devices/commands.py
        return validate_on_device(args)
    import importlib.util

    from ..runtime import validate as V
    from ..runtime.card import load_card, record_validation, tile_spec
    from ..runtime.evaluation import task_images

    if args.reference and args.no_reference:
        raise UserError("--reference and --no-reference contradict each other: pass one")
    if args.stored_reference and (args.reference or args.no_reference):
        raise UserError(f"--stored-reference and {'--reference' if args.reference else '--no-reference'} "
                        "contradict each other: pass one")
    if args.max_drop_db is not None and args.no_reference:
        raise UserError("--max-drop-db compares with the FP32 model: it cannot be used with --no-reference")
    no_torch = importlib.util.find_spec("torch") is None
    stored = args.stored_reference or (no_torch and not args.no_reference)
    if stored and args.reference:  # no PyTorch to run it with
        raise UserError("--reference runs the FP32 checkpoint in PyTorch, which is not installed here: drop it to "
                        "compare with the stored reference outputs (reference.npz)")
    if stored and args.max_drop_db is not None:
        raise UserError("--max-drop-db needs the FP32 PyTorch model's PSNR on the data set" + (
            ", and PyTorch is not installed here" if no_torch else "") + ": check the stored reference with --max-abs "
            "or --min-psnr-vs-reference instead")
    if args.per_layer and (stored or no_torch):
        raise UserError("--per-layer needs the toolkit's PyTorch stack (ETRecord/Inspector), which is not used here")
    card = load_card(args.artifact)
    spec = tile_spec(card)
    tol = V.Tolerances(args.max_drop_db, args.min_psnr_vs_reference, args.max_abs)
    report: dict[str, Any] = {}
    fails: list[str] = []
    if stored:
        if no_torch and not args.stored_reference and not args.quiet and not args.json:
            print("PyTorch is not installed: comparing with the stored FP32 reference outputs (reference.npz)")
        report["stored"] = V.validate_stored(args.artifact, card, args.threads)
        if not report["stored"]["finite"]:
            fails.append(f"the artifact's output holds {report['stored']['summary']['non_finite']} non-finite values "
                         "on the stored reference tiles")
    label = f"{card.reference_outputs.dataset} (stored reference tiles)" if stored else None
    if not stored or args.dataset or args.dataset_dir:  # ground truth: the data set named, or the task's first
        label, inputs = task_images(card.task, args.dataset, args.dataset_dir, args.data_dir, args.limit)
        make_reference = None if (args.no_reference or stored) else (lambda: reference_fn(card, args.reference))
        report.update(V.validate_artifact(args.artifact, card, {label: inputs}, make_reference, args.threads,
                                          args.allow_small, not args.quiet)[label])
        if args.per_layer:
            from ..etdevtools import per_layer_gap

            report["per_layer"] = per_layer_gap(args.artifact, card, inputs[0][1], spec)
    if stored:  # the reference comparisons come from the stored tiles
        ss = report["stored"]["summary"]
        summary = report.setdefault("summary", {"images": 0})
        for key in ("psnr_vs_reference", "max_abs_vs_reference", "psnr_vs_reference_identical_images"):
            if key in ss:
                summary[key] = ss[key]
        summary["reference_tiles"] = ss["tiles"]
        report.setdefault("images", [])
    report["dataset"] = label
    report["reference"] = ("stored" if stored else "none" if args.no_reference else "pytorch")
    report["artifact"] = {"target": card.target, "recipe": card.recipe["name"], "strategy": card.strategy,
                          "tile": spec.tile}
    fails += V.check(report["summary"], tol)
    report["passed"] = not fails
    device = local_device(card, args.threads)  # where it ran: this machine
    report["device"] = vars(device)
    if card.tensor_errors is not None:  # INT8 LiteRT: from the card, written by convert (no runtime needed)
        report["tensor_errors"] = card.to_dict()["tensor_errors"]
    if args.record:
        record_validation(args.artifact, with_device(V.validation_record(label, report["summary"], tol, not fails,
                                                                     card.runner), device))
    if args.json:
        print_json(report)
    else:
        if report["images"]:
            print(V.format_report(report, f"{card.title} on {label}"))
        if stored:
            print(V.format_stored(report["stored"], "" if report["images"] else card.title))
        if report.get("per_layer"):
            from ..etdevtools import format_per_layer

            print(format_per_layer(report["per_layer"]))
        if card.tensor_errors is not None:
            print(V.format_tensor_errors(card.tensor_errors))
    for f in fails:
        print(f"nsr-edge validate: FAILED: {f}", file=sys.stderr)
    return 1 if fails else 0


# ------------------------------------------------------------------------------------------------------------ profile


def cmd_profile(args: argparse.Namespace) -> int:
    if on_device(args):  # --device other than plain local: nsr_edge/devices/commands.py
        return profile_on_device(args)
    from ..runtime.card import load_card, record_profile
    from ..runtime.profile import profile_artifact, profile_record
    from ..runtime.validate import require_runtime

    card = load_card(args.artifact)
    require_runtime(card.runner)
    if args.per_op and card.runner != "executorch":
        raise UserError(f"--per-op is available for ExecuTorch artifacts (this one is {card.runner})")
    with tempfile.TemporaryDirectory() as tmp:
        etdump = str(Path(tmp) / "profile.etdp") if args.per_op else None
        result = profile_artifact(args.artifact, card, args.threads, args.runs, args.warmup, etdump)
        if etdump:
            from ..etdevtools import per_op_times

            result["per_op"] = per_op_times(etdump, Path(args.artifact) / "etrecord.bin")
    result["device"] = vars(local_device(card, result["threads"]))  # where it ran: this machine
    if args.record:
        record_profile(args.artifact, with_device(profile_record(result), result["device"]))
    if args.json:
        print_json(result)
        return 0
    print(f"{card.title}, {result['threads']} thread(s), {result['runs']} runs after {result['warmup']} warm-up:")
    print(f"  median {result['median_ms']:.3f} ms  p90 {result['p90_ms']:.3f} ms per tile;  "
          f"{result['ms_per_megapixel']:.1f} ms per output megapixel;  peak RSS {result['peak_rss_mb']:.0f} MB")
    if result.get("per_op"):
        print("  per op (median ms over traced runs):")
        for r in result["per_op"]["ops"][:15]:
            print(f"    {r['ms']:>9.3f}  {100 * r['share']:5.1f}%  x{r['count']:<4} {r['name']}")
    return 0
