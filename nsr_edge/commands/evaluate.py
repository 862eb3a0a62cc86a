"""`nsr-edge eval`, `zoo`, and the end-user commands `upscale`, `denoise`, `deblock`."""

from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from ..runtime.files import check_output_file
from ._common import MAX_MEMORY_GB, NOISE, POSITIVE_FLOAT, QUALITY, SCALE, TILE, print_json, tile_spec


def _progress(enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return lambda name: (lambda items: tqdm(items, desc=name, unit="img", leave=False, file=sys.stderr))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="PSNR/SSIM on standard sets or a folder, through the deployment tiling")
    p.add_argument("--model", help="zoo id or checkpoint (omit with --method)")
    p.add_argument("--method", choices=("bicubic", "identity"),
                   help="non-learned baseline: bicubic upscaling, or the degraded input itself")
    p.add_argument("--dataset", nargs="*", default=[], help="set names (default: the task's standard sets)")
    p.add_argument("--dataset-dir", nargs="*", default=[], help="folders of HR/clean images (degraded by us)")
    p.add_argument("--data-dir", help="root of the data sets (default $NSR_EDGE_DATA or ../shared/data)")
    p.add_argument("--task", choices=("sr", "denoise", "jpeg"))
    p.add_argument("--scale", type=SCALE)
    p.add_argument("--noise", type=NOISE, help="noise sigma on the 0..255 scale")
    p.add_argument("--jpeg", type=QUALITY, dest="quality", help="JPEG quality")
    p.add_argument("--image-channels", type=int, choices=(1, 3), help="1: gray evaluation, 3: colour")
    p.add_argument("--tile", type=TILE, help="fixed tile side (default: the reference 48 px scheme)")
    p.add_argument("--max-memory-gb", type=MAX_MEMORY_GB, default=8.0,
                   help="refuse a --tile whose working memory exceeds this (default 8 GiB)")
    p.add_argument("--per-image", action="store_true", help="also list every image")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("zoo", help="the trained models we ship, with their measured numbers")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_zoo)

    for name, task, helptext in (("upscale", "sr", "super-resolve an image"),
                                 ("denoise", "denoise", "remove Gaussian noise from an image"),
                                 ("deblock", "jpeg", "remove JPEG artifacts from an image")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("input")
        p.add_argument("output", help="PNG/JPEG/BMP path (16-bit PNG in keeps 16 bit; alpha is kept)")
        p.add_argument("--model", help=f"zoo id or checkpoint (default: the zoo's {task} model)")
        p.add_argument("--tile", type=TILE, default=64, help="tile side (24..4096, default 64)")
        p.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
        p.add_argument("--max-megapixels", type=POSITIVE_FLOAT, default=100.0, help="refuse larger inputs (default 100)")
        p.add_argument("--max-memory-gb", type=MAX_MEMORY_GB, default=8.0,
                       help="refuse an image and --tile whose working memory exceeds this (default 8 GiB)")
        p.set_defaults(func=cmd_restore, task=task)


def cmd_eval(args: argparse.Namespace) -> int:
    from .. import hub
    from ..evaluate import EvalTarget, evaluate_sets, method_restorer, model_restorer, resolve_task
    from ..hub import task_of
    if bool(args.model) == bool(args.method):
        raise UserError("give exactly one of --model or --method")
    base = None
    if args.model:
        resolved = hub.resolve(args.model, require_trained=True)
        base = task_of(resolved)
    task = resolve_task(base, args.task, args.scale, args.noise, args.quality, args.image_channels)
    if args.model:
        if resolved.config.channels != task.channels or resolved.config.scale != task.scale:
            raise UserError(f"{args.model} is a {resolved.config.channels}-channel x{resolved.config.scale} model; "
                            f"it cannot run the {task.label} task")
        from ..restore import plan_batch

        spec = tile_spec(args.tile)
        batch = plan_batch(resolved.config, spec, None, args.max_memory_gb, 64) if args.tile else 64
        target = EvalTarget(resolved.id, model_restorer(resolved.build(), task.scale, spec, batch))
    else:
        target = EvalTarget(args.method, method_restorer(args.method, task))
    sets = args.dataset or ([] if args.dataset_dir else list(task.eval_sets))
    results = evaluate_sets(target, task, sets, args.dataset_dir, args.data_dir, _progress(not args.json))
    if args.json:
        out = {"model": target.label, "task": task.to_dict(), "results": [r.summary() for r in results]}
        if args.per_image:
            for row, r in zip(out["results"], results):
                row["per_image"] = [i.to_dict() for i in r.images]
        print_json(out)
        return 0
    print(f"{target.label} on {task.label}")
    print(f"{'dataset':<12} {'images':>6} {'PSNR-Y':>8} {'SSIM-Y':>8} {'PSNR-RGB':>9}")
    for r in results:
        s = r.summary()
        print(f"{s['dataset']:<12} {s['images']:>6} {s['psnr_y']:>8.3f} {s['ssim_y']:>8.4f} {s['psnr_rgb']:>9.3f}")
        if args.per_image:
            for i in r.images:
                print(f"  {i.name:<30} {i.psnr_y:>8.3f} {i.ssim_y:>8.4f} {i.psnr_rgb:>9.3f}")
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from .. import hub

    models = [hub.zoo_card(i) for i in hub.zoo_ids()]
    if args.json:
        print_json({"models": models})
        return 0
    if not models:
        print("the zoo is empty")
        return 0
    print(f"{'id':<34} {'task':<8} {'arch':<9} {'params':>8} {'MACs/px':>8}  results (PSNR-Y)")
    for m in models:
        res = ", ".join(f"{r['dataset']} {r['psnr_y']:.2f}" for r in m.get("results", []))
        print(f"{m['id']:<34} {m['task']:<8} {m['arch']:<9} {m['params']:>8,} {m['macs_per_pixel']:>8,.0f}  {res}")
    return 0


def default_zoo_model(task: str) -> str:
    from .. import hub

    preferred = {"sr": "nsr_sr_x2", "denoise": "nsr_denoise_s25_gray", "jpeg": "nsr_jpeg_q10_gray"}[task]
    if preferred in hub.zoo_ids():
        return preferred
    raise UserError(f"no default {task} model in the zoo ({preferred}); pass --model")


def cmd_restore(args: argparse.Namespace) -> int:
    """Any size, gray/RGB/RGBA (alpha kept), 8/16-bit PNG, JPEG, BMP. The model sees gray or RGB as it was trained."""
    from .. import hub
    from ..hub import task_of
    from ..restore import restore_image
    from ..runtime import images

    model = args.model or default_zoo_model(args.task)
    out = check_output_file(args.output, args.force, inputs=(args.input, model), option="OUTPUT")
    resolved = hub.resolve(model, require_trained=True)
    task = task_of(resolved)
    if task is not None and task.name != args.task:
        raise UserError(f"{resolved.id} is a {task.label} model, not for `nsr-edge {args.command}`")
    try:
        img = images.load_image(args.input, max_pixels=int(args.max_megapixels * 1e6))
    except images.ImageError as e:
        raise UserError(str(e)) from None
    if img.bit_depth == 16 and out.suffix.lower() != ".png":
        print(f"nsr-edge {args.command}: note: {args.input} is 16-bit; {out.suffix} stores 8 bits "
              "(write a .png to keep 16)", file=sys.stderr)
    result = restore_image(resolved, img.data, tile_spec(args.tile), max_gb=args.max_memory_gb)
    try:
        images.save_image(out, result, like=img, force=args.force)
    except images.ImageError as e:
        raise UserError(str(e)) from None
    print(f"{args.input} ({img.width}x{img.height} {img.mode}) -> {out} "
          f"({result.shape[2]}x{result.shape[1]}) with {resolved.id}")
    return 0
