"""bench/front_zoo.py: the zoo-budget front's rows come from bench/dispatch.py's results and the zoo cards; the
equal-budget control takes the equal-MACs program's latency (same graph) and its own accuracy."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import front_zoo  # noqa: E402


def _dispatch_results(folder: Path) -> Path:
    folder.mkdir()
    lat = {"dense eqP INT8": 5.0, "dense eqM INT8": 1.8, "NSR hard in-program/block INT8": 2.0,
           "NSR hard dispatch/block INT8": 2.5, "dense eqM FP32 ORT": 3.9}
    psnr = {n: {"set5": {"psnr_y": 37.0 + i / 10}, "set14": {"psnr_y": 32.5}} for i, n in enumerate(lat)}
    sources = {n: _zoo_card(front_zoo.ARTIFACTS[n][0])["sha256"] for n in lat if n in front_zoo.ARTIFACTS}
    (folder / "results.json").write_text(json.dumps(
        {"latency": {n: {"min_ms": v, "median_ms": v * 1.2} for n, v in lat.items()}, "psnr": psnr,
         "load": [[1.0], [1.2]], "sources": sources}))
    return folder


def _zoo_card(zoo_id: str) -> dict:
    return json.loads((BENCH.parent / "zoo" / zoo_id / "card.json").read_text())


def test_rows_take_latency_from_dispatch_and_fp32_from_the_cards(tmp_path, monkeypatch):
    monkeypatch.setattr(front_zoo, "WORK", tmp_path / "work")
    rs, _ = front_zoo.rows(_dispatch_results(tmp_path / "dispatch"))
    by = {r["artifact"]: r for r in rs}
    assert set(by) == {"dense eqP INT8", "dense eqM INT8", "NSR hard in-program/block INT8",
                       "NSR hard dispatch/block INT8"}  # ExecuTorch INT8 only: no ORT row, no control yet
    hard = by["NSR hard in-program/block INT8"]
    card = _zoo_card("nsr_sr_x2_hard")
    assert hard["fp32"] == {r["dataset"]: r["psnr_y"] for r in card["results"]}
    assert hard["lat"]["min_ms"] == 2.0 and hard["int8"] == {"set5": 37.2, "set14": 32.5}


def test_control_shares_the_equal_macs_program_latency(tmp_path, monkeypatch):
    monkeypatch.setattr(front_zoo, "WORK", tmp_path / "work")
    (tmp_path / "work").mkdir()
    for run_id in (front_zoo.CONTROL, "dense_sr_x2_eqmacs_plus10k_kd"):  # the control and the run it continues
        (tmp_path / "work" / f"{run_id}.json").write_text(json.dumps(
            {"fp32": {"set5": 37.1, "set14": 32.8, "bsd100": 31.7}, "int8": {"set5": 37.05, "set14": 32.75},
             "cpu_seconds": 1800.0, "steps": 10000}))
    rs, _ = front_zoo.rows(_dispatch_results(tmp_path / "dispatch"))
    control = next(r for r in rs if r["model"] == front_zoo.CONTROL)
    assert control["lat"]["min_ms"] == 1.8 and "same graph" in control["lat_note"]
    eqm, teacher = _zoo_card("dense_sr_x2_eqmacs"), _zoo_card("dense_sr_x2_eqparams")
    assert float(control["budget"].lstrip("<=")) == pytest.approx(
        sum(st.get("cpu_seconds") or st["train_seconds"] for card in (eqm, teacher) for st in card["training_stages"])
        / 3600 + 0.5 + 0.5, abs=0.006)
    front_zoo.mark_fronts(rs)
    # the control is as fast as eqM and more accurate (FP32 mean 33.87 vs the card's), so eqM is off that front
    assert control["front_mean_fp32"] and not next(r for r in rs if r["artifact"] == "dense eqM INT8")["front_mean_fp32"]


def test_results_of_an_earlier_zoo_model_are_refused(tmp_path, monkeypatch):
    """A zoo row takes FP32 from the card and INT8 from the dispatch run: both must be of one checkpoint."""
    monkeypatch.setattr(front_zoo, "WORK", tmp_path / "work")
    folder = _dispatch_results(tmp_path / "dispatch")
    res = json.loads((folder / "results.json").read_text())
    res["sources"]["NSR hard in-program/block INT8"] = "0" * 64  # converted from a since-republished nsr_sr_x2_hard
    (folder / "results.json").write_text(json.dumps(res))
    with pytest.raises(SystemExit, match="not converted from the zoo's nsr_sr_x2_hard"):
        front_zoo.rows(folder)


def test_no_bench_run_is_a_run_the_zoo_publishes():
    """The zoo's hard model (the distilled run continued from the equal-params teacher) appears once, as a zoo row; its
    control is the distilled dense control continued alike, and the earlier stages of both are bench rows."""
    from train_zoo_long import DISTILLED_FINAL_JOBS, copied_job, published_run

    published = {published_run(zoo_id) for zoo_id, *_ in front_zoo.ARTIFACTS.values()}
    assert not published & set(front_zoo.BENCH_RUNS)
    hard, control = DISTILLED_FINAL_JOBS[published_run("nsr_sr_x2_hard")], DISTILLED_FINAL_JOBS[front_zoo.CONTROL]
    assert copied_job(hard.continued) == "nsr_sr_x2_hard"
    assert copied_job(control.continued) == "dense_sr_x2_eqmacs_plus10k"
    assert hard[1:] == control[1:]  # same teacher, steps and lr
    assert {hard.continued, control.continued} <= set(front_zoo.BENCH_RUNS)


def test_a_later_stage_counts_every_stage_before_it_and_its_own_teacher(tmp_path, monkeypatch):
    """The control continues a bench run (whose CPU seconds count, so it must be scored) and adds its own teacher's
    budget (the dense equal-params model, as the zoo's hard cards do); the earlier hard run starts from the soft zoo
    model, its teacher."""
    monkeypatch.setattr(front_zoo, "WORK", tmp_path)
    for run_id, cpu_s in (("dense_sr_x2_eqmacs_plus10k_kd", 3600.0), ("dense_sr_x2_eqmacs_plus10k_kd_eqp5k", 1800.0),
                          ("nsr_sr_x2_hard_kd", 720.0)):
        (tmp_path / f"{run_id}.json").write_text(json.dumps({"cpu_seconds": cpu_s}))

    def hours(zoo_id: str) -> float:
        return float(front_zoo.budget_hours(_zoo_card(zoo_id)).lstrip("<="))

    teacher = hours("dense_sr_x2_eqparams")
    assert front_zoo.bench_run_hours("dense_sr_x2_eqmacs_plus10k_kd_eqp5k") == pytest.approx(
        hours("dense_sr_x2_eqmacs") + 1.0 + 0.5 + teacher)
    assert front_zoo.bench_run_hours("nsr_sr_x2_hard_kd") == pytest.approx(hours("nsr_sr_x2") + 0.2)  # no own teacher
    (tmp_path / "dense_sr_x2_eqmacs_plus10k_kd_eqp5k_seed1.json").write_text(json.dumps({"cpu_seconds": 1800.0}))
    assert front_zoo.bench_run_hours("dense_sr_x2_eqmacs_plus10k_kd_eqp5k_seed1") == pytest.approx(
        front_zoo.bench_run_hours("dense_sr_x2_eqmacs_plus10k_kd_eqp5k"))  # a seed repeat: the same stages
    (tmp_path / "dense_sr_x2_eqmacs_plus10k_kd.json").unlink()
    with pytest.raises(SystemExit, match="dense_sr_x2_eqmacs_plus10k_kd: not scored"):
        front_zoo.bench_run_hours("dense_sr_x2_eqmacs_plus10k_kd_eqp5k")
