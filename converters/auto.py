"""`--strategy auto`: convert with every lowering strategy, measure each artifact, keep the fastest that is accurate.

By measurement, not by rule: each candidate (every strategy of the target, plus hard routing on a related target
such as ExecuTorch host dispatch, `RELATED_TARGETS`) is converted (same recipe, tile), profiled on this machine
(1 thread, median of a few warm runs) and, fastest first, validated against the FP32 PyTorch model on a check set
until one stays within the tolerance (Y-PSNR drop). A candidate that fails to convert, aborts the runtime or fails
validation is skipped with its one-line reason; only when no candidate is left does the command fail. The card
records every candidate's numbers under ``auto``.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from nsr_edge.errors import UserError

from nsr_edge.runtime.card import ModelCard

from .base import atomic_output_dir, check_output_dir
from .pipeline import ConvertOptions, convert


def convert_auto(options: ConvertOptions, out: str, force: bool, max_drop_db: float = 0.05,
                 dataset: str | None = None, runs: int = 10) -> tuple[Path, ModelCard]:
    from nsr_edge.reference import reference_fn
    from nsr_edge.runtime.card import load_card, read_card_json, write_card
    from nsr_edge.runtime.evaluation import task_images
    from nsr_edge.runtime.profile import profile_artifact
    from nsr_edge.runtime.validate import validate_artifact

    from .base import get_target

    check_output_dir(out, force)
    get_target(options.target)  # an unknown or missing target is the user's one-line error, not a failed candidate
    work = Path(tempfile.mkdtemp(prefix="nsr-edge-auto-"))
    try:
        candidates: list[dict[str, Any]] = []
        for target, strategy in candidate_list(options.target):
            name = strategy if target == options.target else f"{strategy}@{target}"
            folder = work / name.replace("@", "_")
            row: dict[str, Any] = {"name": name, "strategy": strategy, "target": target, "folder": folder}
            candidates.append(row)
            print(f"strategy auto: converting with {name}", file=sys.stderr)
            try:
                _, card = convert(dataclasses.replace(options, strategy=strategy, target=target), str(folder))
            except Exception as e:  # noqa: BLE001 - a candidate that cannot be built is skipped, with its reason
                row["status"] = f"failed to convert: {_one_line(e)}"
                continue
            try:
                row.update(profile_artifact(str(folder), card, threads=1, runs=runs, warmup=2))
                row["status"] = "measured"
            except Exception as e:  # noqa: BLE001 - e.g. a runtime abort (RunnerCrash) on an INT8 portable kernel
                row["status"] = f"failed to run: {_one_line(e)}"
        measured = sorted((c for c in candidates if c["status"] == "measured"), key=lambda c: c["median_ms"])
        if not measured:
            raise UserError("strategy auto: no strategy produced a runnable artifact: "
                            + "; ".join(f"{c['name']}: {c['status']}" for c in candidates))
        chosen = None
        card0 = load_card(measured[0]["folder"])
        label, inputs = task_images(card0.task, dataset, None, options.data_dir)
        reference = reference_fn(card0, options.model)
        for c in measured:
            folder = c["folder"]
            card = load_card(folder)
            try:
                rep = validate_artifact(str(folder), card, {label: inputs}, lambda: reference, allow_small=True,
                                        progress=options.progress)[label]
            except Exception as e:  # noqa: BLE001 - a crash while validating rejects the candidate, not the command
                c["status"] = f"failed validation: {_one_line(e)}"
                continue
            c["drop_db"] = rep["summary"]["drop_db"]
            c["psnr_y"] = rep["summary"]["psnr_y"]
            if c["drop_db"] <= max_drop_db:
                c["status"] = "chosen"
                chosen = c
                break
            c["status"] = f"rejected: drop {c['drop_db']:.3f} dB > {max_drop_db} dB"
        if chosen is None:
            raise UserError(f"strategy auto: no strategy within {max_drop_db} dB on {label}: "
                            + "; ".join(f"{c['name']}: {c['status']}" for c in candidates))
        src = chosen["folder"]
        card = read_card_json(src)
        keep = ("strategy", "target", "status", "median_ms", "p90_ms", "drop_db", "psnr_y")
        card["auto"] = {"max_drop_db": max_drop_db, "dataset": label, "threads": 1, "runs": runs,
                        "candidates": [{k: c[k] for k in keep if k in c} for c in candidates]}
        with atomic_output_dir(out, force) as tmp:
            for f in src.iterdir():
                if f.is_dir():  # a directory artifact (Core ML .mlpackage)
                    shutil.copytree(f, tmp / f.name)
                elif f.name != "model.json":
                    shutil.copy2(f, tmp / f.name)
            write_card(tmp, card)
        return Path(out), load_card(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


RELATED_TARGETS: dict[str, tuple[str, ...]] = {"executorch": ("executorch-dispatch",)}
"""Targets whose artifacts run on the same runtime and compete in ``--strategy auto`` for the requested target:
hard routing on ExecuTorch is also lowered as host dispatch over static bank programs (issue 6)."""


def candidate_list(target: str) -> list[tuple[str, str]]:
    """(target, strategy) pairs ``--strategy auto`` converts and measures: every strategy the target lowers, plus
    the strategies of its related targets that are installed."""
    from .base import STRATEGIES, TARGET_MODULES, get_target

    out = []
    for name in (target, *RELATED_TARGETS.get(target, ())):
        if name != target:
            if name not in TARGET_MODULES:
                continue
            try:
                get_target(name)
            except UserError:
                continue
        allowed = get_target(name).capabilities.strategies  # refused strategies are never candidates
        out += [(name, s) for s in STRATEGIES if s in allowed]
    return out


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]
