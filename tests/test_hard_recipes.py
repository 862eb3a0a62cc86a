"""bench/hard_recipes.py: the recipes' `nsr-edge train` command lines, the CPU-budget split between phases, resuming,
and one tiny real two-phase run (soft, then a distilled straight-through fine-tune from it)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))  # hard_recipes imports front from bench/
_spec = importlib.util.spec_from_file_location("hard_recipes", BENCH / "hard_recipes.py")
hr = importlib.util.module_from_spec(_spec)
sys.modules["hard_recipes"] = hr  # dataclasses look their module up while the file runs
_spec.loader.exec_module(hr)


def _opt(cmd: list[str], flag: str) -> str:
    """The value of the LAST occurrence of ``flag`` (argparse keeps the last)."""
    idx = [i for i, c in enumerate(cmd) if c == flag]
    assert idx, f"{flag} missing from {cmd}"
    return cmd[idx[-1] + 1]


def _cmd(name: str, phase: str, runs: Path) -> list[str]:
    r = hr.recipe(name)
    ph = r.phase(phase)
    return hr.train_cmd(r, ph, 123, hr.phase_dir(r, ph, runs), runs)


def test_every_phase_runs_the_train_cli_single_threaded_with_the_same_data_and_seed(tmp_path) -> None:
    for r in hr.RECIPES:
        for ph in r.phases:
            cmd = hr.train_cmd(r, ph, 123, hr.phase_dir(r, ph, tmp_path), tmp_path)
            assert cmd[1:4] == ["-m", "nsr_edge.cli", "train"]
            assert (_opt(cmd, "--threads"), _opt(cmd, "--seed"), _opt(cmd, "--steps")) == ("1", "0", "123")
            assert (_opt(cmd, "--batch-size"), _opt(cmd, "--patch-size")) == ("16", "32")
            assert _opt(cmd, "--out") == str(tmp_path / r.name / ph.name)


def test_the_architecture_is_the_fronts_nsr_k4_and_dense_c16(tmp_path) -> None:
    dense = _cmd("dense_c16", "dense", tmp_path)
    assert (_opt(dense, "--model"), _opt(dense, "--channels"), _opt(dense, "--blocks")) == ("wdsr", "16", "6")
    for name, phase in [("a_soft_then_st", "soft"), ("b_st_lb_from_start", "st"), ("c_anneal_then_st", "anneal"),
                        ("d_distill", "soft")]:
        cmd = _cmd(name, phase, tmp_path)
        assert (_opt(cmd, "--model"), _opt(cmd, "--channels"), _opt(cmd, "--groups"), _opt(cmd, "--cardinality"),
                _opt(cmd, "--blocks"), _opt(cmd, "--width-multiplier")) == ("wdsr_nsr", "16", "4", "1", "6", "2.0")


def test_recipe_options(tmp_path) -> None:
    b = _cmd("b_st_lb_from_start", "st", tmp_path)  # hard from step 0: no --init-from, ST + shared + load balance
    assert "--init-from" not in b and "--shared-routing" in b
    assert _opt(b, "--routing") == "straight_through" and _opt(b, "--sparsity") == '{"load_balance": 0.01}'

    anneal = _cmd("c_anneal_then_st", "anneal", tmp_path)
    assert "--routing" not in anneal and "--normalize-logits" in anneal and "--shared-routing" in anneal
    assert _opt(anneal, "--sparsity") == '{"temperature": [1, 0.05, 1.0]}'
    c_st = _cmd("c_anneal_then_st", "st", tmp_path)
    assert _opt(c_st, "--init-from") == str(tmp_path / "c_anneal_then_st" / "anneal" / "model.pt")
    assert _opt(c_st, "--routing") == "straight_through" and "--normalize-logits" in c_st

    a_st = _cmd("a_soft_then_st", "st", tmp_path)
    assert _opt(a_st, "--init-from") == str(tmp_path / "a_soft_then_st" / "soft" / "model.pt")
    assert "--distill-from" not in a_st and "--model" not in a_st  # --init-from carries the architecture

    d = _cmd("d_distill", "st_kd", tmp_path)
    teacher = str(tmp_path / "d_distill" / "soft" / "model.pt")
    assert _opt(d, "--init-from") == teacher and _opt(d, "--distill-from") == teacher
    assert float(_opt(d, "--distill-weight")) == 1.0 and _opt(d, "--routing") == "straight_through"


def test_every_recipe_is_a_whole_budget(tmp_path) -> None:
    for r in hr.RECIPES:
        shares = [ph.share for ph in r.phases]
        assert shares[-1] is None  # the last phase takes what is left
        assert all(0 < s < 1 for s in shares[:-1]) and sum(shares[:-1]) < 1
        assert r.phases[-1].hard != r.dense  # every NSR recipe ends hard


def test_the_last_phase_gets_what_the_earlier_ones_left(tmp_path, monkeypatch) -> None:
    r = hr.recipe("a_soft_then_st")
    spent = {str(hr.phase_dir(r, r.phase("soft"), tmp_path) / "model.pt"): 350.0}
    monkeypatch.setattr(hr.front, "_provenance", lambda p: {"train_cpu_seconds": spent[str(p)]})
    assert hr.steps_for(r, r.phase("soft"), 0.2, tmp_path, budget=480.0) == int(480 * 2 / 3 / 0.2)
    assert hr.steps_for(r, r.phase("st"), 0.2, tmp_path, budget=480.0) == int((480 - 350) / 0.2)


def test_steps_are_planned_once_and_kept_for_a_resume(tmp_path, monkeypatch) -> None:
    r = hr.recipe("dense_c16")
    ph = r.phases[0]
    calls = []

    def probe(cmd, out):
        calls.append(_opt(cmd, "--steps"))
        return 0.1 if len(calls) == 1 else 0.5

    monkeypatch.setattr(hr.front, "cpu_s_per_step", probe)
    assert hr.planned_steps(r, ph, tmp_path, budget=60.0, calib_steps=7) == 600
    assert hr.planned_steps(r, ph, tmp_path, budget=60.0, calib_steps=7) == 600  # from plan.json, no second probe
    assert calls == ["7"]
    out = hr.phase_dir(r, ph, tmp_path)
    assert hr.resume_flag(out) == []
    out.mkdir(parents=True)
    assert hr.resume_flag(out) == ["--resume"]


def test_tiny_two_phase_run_soft_then_distilled_straight_through(tmp_path) -> None:
    """Real `nsr-edge train` runs (a 1-block, 4-channel model on T91, tiny steps): the plan, the CPU seconds in the
    checkpoints, the ST phase starting from the soft one with shared routing and the soft model as its teacher."""
    from nsr_edge.checkpoint import load_checkpoint

    tiny = ("--task", "sr", "--scale", "2", "--blocks", "1", "--width-multiplier", "1", "--model", "wdsr_nsr",
            "--channels", "4", "--groups", "2", "--cardinality", "1", "--dataset", "t91")
    small = ("--batch-size", "2", "--patch-size", "16")
    r = hr.Recipe("tiny", "test", (hr.Phase("soft", (*tiny, *small), share=0.5),
                                   hr.Phase("st_kd", (*hr.front.ST_OPTIONS, "--distill-weight", "1.0", *small),
                                            init_from="soft", distill_from="soft", hard=True)))
    hr.train_recipe(r, tmp_path, budget=0.05, calib_steps=3)
    plan = hr.front._json(tmp_path / "plan.json")
    assert set(plan) == {"tiny/soft", "tiny/st_kd"} and all(e["steps"] == 50 for e in plan.values())
    soft = load_checkpoint(tmp_path / "tiny" / "soft" / "model.pt")
    st = load_checkpoint(tmp_path / "tiny" / "st_kd" / "model.pt")
    assert soft.provenance["steps"] == plan["tiny/soft"]["steps"]
    assert st.provenance["steps"] == plan["tiny/st_kd"]["steps"]
    assert st.provenance["distill_from"] == str(tmp_path / "tiny" / "soft" / "model.pt")
    assert st.config.routing.kind == "straight_through" and st.config.routing.shared
    assert not soft.config.routing.shared
    assert st.provenance["train_cpu_seconds"] > 0
    assert hr.done(r, tmp_path)
    hr.train_recipe(r, tmp_path, budget=0.05, calib_steps=3)  # a rerun of a finished recipe trains nothing
    assert load_checkpoint(tmp_path / "tiny" / "st_kd" / "model.pt").provenance == st.provenance


def test_calls_and_tiles_per_image_of_the_finer_grid() -> None:
    """(e)'s counts: the dispatch plan of a shared-routing model calls the stem and one program per block (tail fused),
    and 32 px deploy tiles (stride 16) cut a 48 px image into 3 x 3 tiles where 64 px tiles need one."""
    from nsr_edge.deploy import to_deploy
    from nsr_edge.layers import RoutingConfig
    from nsr_edge.models import ModelConfig, build_model

    cfg = ModelConfig(arch="wdsr_nsr", scale=2, blocks=3, width=4, width_multiplier=1.0, banks=2, cardinality=1,
                      channels=3, routing=RoutingConfig(kind="straight_through", shared=True))
    assert hr.calls_per_tile(to_deploy(build_model(cfg), "hard")) == 1 + 3
    assert hr.tiles_per_image([(48, 48)], 64) == 1
    assert hr.tiles_per_image([(48, 48)], 32) == 9
    assert hr.tiles_per_image([(48, 48), (48, 96)], 32) == (9 + 3 * 6) / 2
