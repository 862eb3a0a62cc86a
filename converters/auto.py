"""`--strategy auto`: convert with every lowering strategy, measure each artifact, keep the fastest that is accurate.

By measurement, not by rule: each candidate is converted (same target, recipe, tile), profiled on this machine
(1 thread, median of a few warm runs) and, fastest first, validated against the FP32 PyTorch model on a check set
until one stays within the tolerance (Y-PSNR drop). Candidates that fail to lower or crash the runtime are reported
with their one-line reason. The card records every candidate's numbers under ``auto``.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from nsr_edge.errors import UserError

from .base import atomic_output_dir, check_output_dir, write_json
from .pipeline import ConvertOptions, convert


def convert_auto(options: ConvertOptions, out: str, force: bool, max_drop_db: float = 0.05,
                 dataset: str | None = None, runs: int = 10) -> tuple[Path, dict[str, Any]]:
    from nsr_edge.commands.deploy import load_inputs, reference_fn
    from nsr_edge.deploy import STRATEGIES
    from nsr_edge.runtime.card import artifact_path, load_card, tile_spec
    from nsr_edge.runtime.profile import profile_artifact
    from nsr_edge.runtime.runners.child import RunnerProcess
    from nsr_edge.runtime.tasks import TaskSpec
    from nsr_edge.runtime.validate import validate_images

    check_output_dir(out, force)
    work = Path(tempfile.mkdtemp(prefix="nsr-edge-auto-"))
    try:
        candidates: list[dict[str, Any]] = []
        for strategy in STRATEGIES:
            folder = work / strategy
            row: dict[str, Any] = {"strategy": strategy}
            candidates.append(row)
            print(f"strategy auto: converting with {strategy}", file=sys.stderr)
            try:
                _, card = convert(dataclasses.replace(options, strategy=strategy), str(folder))
                row.update(profile_artifact(str(folder), card, threads=1, runs=runs, warmup=2))
                row["status"] = "measured"
            except UserError as e:
                row["status"] = f"failed: {e}"
        measured = sorted((c for c in candidates if c["status"] == "measured"), key=lambda c: c["median_ms"])
        if not measured:
            raise UserError("strategy auto: no strategy produced a runnable artifact: "
                            + "; ".join(f"{c['strategy']}: {c['status']}" for c in candidates))
        chosen = None
        card0 = load_card(work / measured[0]["strategy"])
        task = TaskSpec.from_dict(card0["model"]["task"])
        label, inputs = load_inputs(task, dataset, None, options.data_dir, None)
        reference = reference_fn(card0)
        for c in measured:
            folder = work / c["strategy"]
            card = load_card(folder)
            try:
                with RunnerProcess(card["runner"], str(artifact_path(folder, card)), "forward", 1) as proc:
                    rep = validate_images(inputs, task, tile_spec(card), proc.run, reference,
                                          allow_small=True, progress=options.progress)
            except UserError as e:
                c["status"] = f"failed validation: {e}"
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
                            + "; ".join(f"{c['strategy']}: {c['status']}" for c in candidates))
        src = work / chosen["strategy"]
        card = load_card(src)
        keep = ("strategy", "status", "median_ms", "p90_ms", "drop_db", "psnr_y")
        card["auto"] = {"max_drop_db": max_drop_db, "dataset": label, "threads": 1, "runs": runs,
                        "candidates": [{k: c[k] for k in keep if k in c} for c in candidates]}
        with atomic_output_dir(out, force) as tmp:
            for f in src.iterdir():
                if f.name != "model.json":
                    shutil.copy2(f, tmp / f.name)
            write_json(tmp / "model.json", card)
        return Path(out), load_card(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
