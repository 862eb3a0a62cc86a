"""`nsr-edge export-app-assets`: convert zoo models (or checkpoints) for the demo apps and put each artifact folder
(the artifact + its model card, nothing else) where the apps read models from, so that the apps are always built
from what `nsr-edge convert` writes.

    android_demo/app/src/main/assets/<model>_<variant>/   model.pte | model.tflite, model.json
    ios_demo/App/Resources/<model>_<variant>/             model.mlpackage/, model.json

Every conversion goes through the library (`converters.pipeline.convert`) into a scratch folder; the artifact and
card are then copied into place atomically (`converters.base.atomic_output_dir`: a temporary folder renamed into
place). A destination is replaced only with ``--force`` and only when it is an artifact folder nsr-edge wrote (its
``model.json`` is a model card), as ``convert --out`` (docs/errors.md). Every destination is checked before the
first conversion starts.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ._common import POSITIVE, TILE

ROOT = Path(__file__).resolve().parents[2]
ANDROID_DIR = ROOT / "android_demo" / "app" / "src" / "main" / "assets"
IOS_DIR = ROOT / "ios_demo" / "App" / "Resources"


@dataclass(frozen=True)
class Variant:
    name: str  # folder suffix and --variants name
    app: str  # android | ios
    target: str
    recipe: str
    strategy: str
    hard_only: bool  # only for hard-routed models (the dispatch programs)


VARIANTS = (
    Variant("executorch-fp32", "android", "executorch", "fp32", "output-mix", False),
    Variant("executorch-int8", "android", "executorch", "int8-ptq", "output-mix", False),
    Variant("litert-fp32", "android", "litert", "fp32", "output-mix", False),
    Variant("dispatch-fp32", "android", "executorch-dispatch", "fp32", "hard", True),
    Variant("dispatch-int8", "android", "executorch-dispatch", "int8-ptq", "hard", True),
    Variant("coreml-fp32", "ios", "coreml", "fp32", "output-mix", False),
)
DEFAULTS = {  # (app, hard) -> variants made without --variants
    ("android", False): ("executorch-fp32", "executorch-int8", "litert-fp32"),
    ("android", True): ("dispatch-fp32",),
    ("ios", False): ("coreml-fp32",),
    ("ios", True): ("coreml-fp32",),  # Core ML has no hard routing (static weights): the output-mix form
}
BY_NAME = {v.name: v for v in VARIANTS}
ARTIFACT_AND_CARD = "model.json"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-app-assets", help="convert models for the Android/iOS demo apps and copy artifact + "
                       "card into their assets",
                       description="Per model and variant: nsr-edge convert into a scratch folder, then copy the "
                       "artifact and model.json into <assets>/<model>_<variant>/ (atomic; replaces only folders "
                       "nsr-edge wrote, and only with --force).")
    p.add_argument("--model", action="append", required=True, help="zoo id or checkpoint (.pt); repeat for more")
    p.add_argument("--app", choices=("android", "ios", "both"), default="both", help="which app (default both)")
    p.add_argument("--variants", help="comma list instead of the defaults: " + ", ".join(BY_NAME) +
                   " (defaults: ExecuTorch FP32 + INT8 and LiteRT FP32 for Android, executorch-dispatch FP32 for "
                   "hard-routed models, Core ML FP32 for iOS)")
    p.add_argument("--tile", type=TILE, default=64, help="tile side in input pixels (24..4096, default 64)")
    p.add_argument("--calibration-tiles", type=POSITIVE, help="INT8 variants: calibration tiles (recipe default)")
    p.add_argument("--data-dir", help="root of the data sets (INT8 calibration)")
    p.add_argument("--android-dir", default=str(ANDROID_DIR), help="Android assets folder (default "
                   "android_demo/app/src/main/assets)")
    p.add_argument("--ios-dir", default=str(IOS_DIR), help="iOS resources folder (default ios_demo/App/Resources)")
    p.add_argument("--force", action="store_true", help="replace existing model folders (only ones nsr-edge wrote)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_export_app_assets)


def _is_hard(config) -> bool:
    """Hard-routed: a sparse model whose routing is argmax at inference (the ``*_hard`` zoo models)."""
    routing = getattr(config, "routing", None)
    return bool(getattr(config, "is_sparse", False) and routing is not None
                and routing.kind in ("straight_through", "gumbel"))


def folder_name(model_id: str, variant: str) -> str:
    return f"{model_id}_{variant.replace('-', '_')}"


def plan_exports(args: argparse.Namespace) -> list[tuple[str, str, Variant, Path]]:
    """(model, model id, variant, destination) for every folder to write; refuses an unknown or impossible variant."""
    from .. import hub

    apps = ("android", "ios") if args.app == "both" else (args.app,)
    wanted = None
    if args.variants is not None:
        wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in wanted if v not in BY_NAME]
        if unknown or not wanted:
            raise UserError(f"--variants: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(BY_NAME)}")
    roots = {"android": Path(args.android_dir), "ios": Path(args.ios_dir)}
    jobs = []
    for model in args.model:
        resolved = hub.resolve(model, require_trained=True)
        hard = _is_hard(resolved.config)
        model_id = resolved.id if resolved.card is not None else Path(model).stem
        for app in apps:
            names = [n for n in wanted if BY_NAME[n].app == app] if wanted is not None else list(DEFAULTS[(app, hard)])
            for name in names:
                v = BY_NAME[name]
                if v.hard_only and not hard:
                    raise UserError(f"--variants {name} is for hard-routed models (the *_hard zoo models); {model} "
                                    f"is not one (use {', '.join(DEFAULTS[(app, False)])})")
                jobs.append((model, model_id, v, roots[app] / folder_name(model_id, name)))
    if not jobs:
        raise UserError(f"nothing to export for --app {args.app} with --variants {args.variants}")
    seen = set()
    for _, _, _, dest in jobs:
        if dest in seen:
            raise UserError(f"{dest} would be written twice: pass each --model once")
        seen.add(dest)
    return jobs


def copy_artifact_folder(src: Path, dest: Path, force: bool) -> Path:
    """Copy the artifact the card in ``src`` names (and its per-tile files), and the card itself into ``dest``,
    atomically; the card's digest is checked on the copy before it is renamed into place."""
    from ..converters.base import atomic_output_dir
    from ..runtime.card import load_card
    from ..runtime.files import path_digest

    card = load_card(src)
    name = card.artifact.file
    with atomic_output_dir(dest, force) as tmp:
        if (src / name).is_dir():
            shutil.copytree(src / name, tmp / name)
        else:
            shutil.copy2(src / name, tmp / name)
        shutil.copy2(src / ARTIFACT_AND_CARD, tmp / ARTIFACT_AND_CARD)
        suffix = Path(name).suffix
        for method in card.methods[1:]:  # LiteRT / ONNX: one file per extra tile (`model_<method>.tflite`)
            extra = src / f"model_{method.name}{suffix}"
            if extra.is_file():
                shutil.copy2(extra, tmp / extra.name)
        digest = path_digest(tmp / name)
        if digest["sha256"] != card.artifact.sha256:
            raise UserError(f"{tmp / name}: the copy differs from the card's SHA-256 (disk full or a concurrent "
                            "write?); nothing was replaced")
    return dest


def cmd_export_app_assets(args: argparse.Namespace) -> int:
    from ..converters.base import check_output_dir
    from ..converters.pipeline import ConvertOptions, check_request, convert
    from ..runtime.files import check_writable

    jobs = plan_exports(args)
    for _, _, v, dest in jobs:  # every destination and request first: seconds, before any conversion
        check_output_dir(dest, args.force)
        check_writable(dest, f"{v.app} assets")
    options = {}
    for model, model_id, v, dest in jobs:
        options[dest] = ConvertOptions(model=model, target=v.target, recipe=v.recipe, tile=args.tile,
                                       strategy=v.strategy, calibration_tiles=args.calibration_tiles,
                                       data_dir=args.data_dir, progress=not args.quiet)
        check_request(options[dest])
    written = []
    with tempfile.TemporaryDirectory(prefix="nsr-edge-app-assets-") as scratch:
        for i, (model, model_id, v, dest) in enumerate(jobs):
            print(f"[{i + 1}/{len(jobs)}] {model_id}: {v.target} {v.recipe} -> {dest}", file=sys.stderr)
            src, _ = convert(options[dest], str(Path(scratch) / dest.name))
            copy_artifact_folder(Path(src), dest, args.force)
            written.append(dest)
    for dest in written:
        print(dest)
    return 0
