"""ExecuTorch devtools analysis of an artifact: per-op times from an ETDump and the per-op numeric gap of one tile
(ETDump with intermediate outputs + ETRecord, compared by the Inspector). Used by `validate --per-layer`,
`profile --per-op` and the benches; needs the executorch package (the toolkit side, not a device)."""

from __future__ import annotations

import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .runtime.card import ModelCard, artifact_path
from .runtime.runners.child import RunnerProcess
from .runtime.tiling import split


def per_layer_gap(artifact_dir: str, card: ModelCard, image, spec, top: int = 15) -> dict[str, Any]:
    """Per-op numeric gap of one tile: ETDump with intermediate outputs + ETRecord, compared by the Inspector."""
    etrecord = Path(artifact_dir) / "etrecord.bin"
    if card.target != "executorch" or not etrecord.is_file():
        raise UserError("--per-layer needs an ExecuTorch artifact with its etrecord.bin")
    tiles, _ = split(image, spec)
    with tempfile.TemporaryDirectory() as tmp:
        etdump, debug = str(Path(tmp) / "etdump.etdp"), str(Path(tmp) / "debug.bin")
        with RunnerProcess(card.runner, str(artifact_path(artifact_dir, card)), "forward", 1, etdump=etdump,
                           debug_buffer=debug, debug_buffer_size=256 << 20) as proc:
            proc.run(tiles[:1])
            proc.write_etdump()
        from executorch.devtools import Inspector

        try:
            inspector = Inspector(etdump_path=etdump, etrecord=load_etrecord(etrecord), debug_buffer_path=debug)
            df = inspector.calculate_numeric_gap("SNR")
        except Exception as e:  # noqa: BLE001 - the devtools are young; say what failed, keep the rest of the report
            return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    rows = []
    for _, r in df.iterrows():
        gap = r.get("gap")
        gap = float(np.mean(gap)) if isinstance(gap, (list, tuple)) else float(gap) if gap is not None else None
        ops = r.get("runtime_ops") or r.get("aot_ops")
        rows.append({"ops": [str(o) for o in (ops if isinstance(ops, (list, tuple)) else [ops])][:4], "snr_db": gap})
    rows.sort(key=lambda r: (r["snr_db"] is None, r["snr_db"]))
    return {"metric": "SNR dB of the artifact's intermediate outputs vs the ETRecord's float graph", "rows": rows[:top],
            "count": len(rows)}


def format_per_layer(pl: dict[str, Any]) -> str:
    if "error" in pl:
        return f"per-layer: not available ({pl['error']})"
    lines = [f"per-layer ({pl['metric']}; {len(pl['rows'])} lowest of {pl['count']}):"]
    lines += [f"  {r['snr_db']:>8.2f} dB  {', '.join(r['ops'])}" for r in pl["rows"] if r["snr_db"] is not None]
    return "\n".join(lines)


def per_op_times(etdump: str, etrecord: Path) -> dict[str, Any]:
    """Median time per event (op or delegate call) from an ETDump, via the ExecuTorch Inspector."""
    from executorch.devtools import Inspector

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inspector = Inspector(etdump_path=etdump, etrecord=load_etrecord(etrecord) if etrecord.is_file() else None)
            df = inspector.to_dataframe()
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}", "ops": []}
    kinds: dict[str, dict[str, Any]] = {}
    for _, r in df.iterrows():
        raw = r.get("raw")
        if r.get("event_block_name") != "Execute" or raw is None or not len(raw):
            continue
        kind = re.sub(r" #\d+$", "", str(r.get("event_name")))  # "Convolution (NHWC, QC8) IGEMM #3" -> its kind
        if kind in ("Method::execute", "DELEGATE_CALL"):  # containers of the ops below, not ops
            continue
        k = kinds.setdefault(kind, {"name": kind, "ms": 0.0, "count": 0})
        k["ms"] += float(np.median(raw))  # per run: the median of each instance, summed over instances
        k["count"] += 1
    rows = sorted(kinds.values(), key=lambda r: -r["ms"])
    total = sum(r["ms"] for r in rows) or 1.0
    for r in rows:
        r["ms"] = round(r["ms"], 4)
        r["share"] = round(r["ms"] / total, 4)
    return {"ops": rows, "unit": "ms per run (median per op instance, summed by kind)", "traced_total_ms": round(total, 4)}


def load_etrecord(path: Path):
    """The ETRecord of the ``forward`` method (the Inspector reads one method; multi-tile artifacts hold several)."""
    from executorch.devtools.etrecord import parse_etrecord

    et = parse_etrecord(str(path))
    for attr in ("edge_dialect_program", "exported_program"):
        value = getattr(et, attr, None)
        if isinstance(value, dict):
            setattr(et, attr, value.get("forward", next(iter(value.values()))))
    return et


__all__ = ["per_layer_gap", "format_per_layer", "per_op_times", "load_etrecord"]
