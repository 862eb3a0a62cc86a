"""`nsr-edge demo`, the README's main job, on a tiny model (the quick lineup): report, plot, restored picture,
cards with the measurements recorded; a second run does not write over the report without --force."""

from __future__ import annotations

import json

import torch

from helpers import one_line_error, run_cli
from nsr_edge.checkpoint import Checkpoint, save_checkpoint
from nsr_edge.models import ModelConfig, build_model
from nsr_edge.runtime.card import load_card
from nsr_edge.runtime.tasks import TaskSpec

TINY = ModelConfig("wdsr_nsr", 2, 3, blocks=1, width=8, width_multiplier=2.0, banks=2, cardinality=1)


def test_demo_writes_the_report_the_picture_and_the_cards(tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(Checkpoint(TINY, build_model(TINY).state_dict(), {"task": TaskSpec("sr", scale=2).to_dict()}), ckpt)
    out = tmp_path / "demo"
    args = ("demo", "--model", ckpt, "--lineup", "executorch", "--tile", "32", "--runs", "2", "--quiet", "--out", out)
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-800:]
    results = json.loads((out / "results.json").read_text())
    assert [row["label"] for row in results["rows"]] == ["ExecuTorch FP32", "ExecuTorch INT8"]
    assert all(row["status"] == "ok" and len(row["round_medians_ms"]) == 3 for row in results["rows"])
    assert results["picture"]["psnr_y"]["bicubic"] > 20
    for name in ("report.md", "psnr_vs_latency.png", "restored.png"):
        assert (out / name).stat().st_size > 1000, name
    assert (out / "restored.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for row in results["rows"]:
        card = load_card(out / row["artifact"])
        assert card.validation[-1].dataset == "set5" and card.profile[-1].median_ms > 0
    assert results["schema"] == "nsr-edge-demo-report"  # what lets `demo --force` replace this folder, and no other
    assert "--force" in one_line_error(run_cli(*args))  # never over a report without being asked
