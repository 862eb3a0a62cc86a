"""The zoo's cards are what users read before they pick a model: every card matches its checkpoint, states its whole
training budget, and its dense baselines were trained the same way (issue 15: "the comparison stays fair"). One
published number is recomputed with the one evaluation path, so a card cannot drift from what `nsr-edge eval` gives.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from nsr_edge.checkpoint import load_checkpoint
from nsr_edge.evaluate import EvalTarget, evaluate_sets, model_restorer
from nsr_edge.hub import zoo_card, zoo_checkpoint, zoo_ids
from nsr_edge.runtime.files import file_sha256
from nsr_edge.runtime.tasks import TaskSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from train_zoo_long import (  # noqa: E402
    DISTILLED_FINAL_JOBS, DISTILLED_JOBS, FINAL_LR, FINAL_STEPS, FINAL_STAGE_JOBS, SEED_JOBS, command, finished_model,
    published_run)
from zoo_cards import budget_hours  # noqa: E402

ZOO = zoo_ids()
STAGE_RECIPE = ("steps", "batch_size", "patch_size")


def test_the_zoo_is_not_empty():
    assert {"nsr_sr_x2", "nsr_sr_x2_hard", "dense_sr_x2_eqmacs", "dense_sr_x2_eqparams"} <= set(ZOO)


@pytest.mark.parametrize("zoo_id", ZOO)
def test_card_matches_its_checkpoint(zoo_id):
    card = zoo_card(zoo_id)
    assert card["id"] == zoo_id
    assert file_sha256(zoo_checkpoint(zoo_id)) == card["sha256"]
    ckpt = load_checkpoint(zoo_checkpoint(zoo_id))  # weights_only load: refuses foreign objects
    assert ckpt.config.to_dict() == card["config"]
    assert sum(p.numel() for p in ckpt.build().parameters()) == card["params"]
    task = TaskSpec.from_dict(ckpt.provenance["task"])
    assert [r["dataset"] for r in card["results"]] == list(task.eval_sets)


@pytest.mark.parametrize("zoo_id", ZOO)
def test_card_states_its_whole_budget(zoo_id):
    card = zoo_card(zoo_id)
    assert budget_hours(card) != "-", "no CPU time or 1-thread wall time recorded"
    stages = card.get("training_stages")
    if not stages:
        return
    # The last stage is the checkpoint's own run; the command reproduces every stage in order.
    assert stages[-1]["steps"] == card["training"]["steps"]
    assert card["train_command"] == " && ".join(st["command"] for st in stages)
    assert all(st.get("cpu_seconds") or st.get("threads") == 1 for st in stages)
    # A model started from another zoo model (x3/x4 from the x2 body; a hard fine-tune from its soft model) carries
    # that model's stages, so its budget is the whole chain; each stage names the model whose run it was (a chain of
    # two, x2 -> x3 -> x3 hard, keeps the x2 stages' own name).
    for start_id in {st["model"] for st in stages if "model" in st and "teacher" not in st}:
        start_stages = zoo_card(start_id)["training_stages"]
        assert stages[:len(start_stages)] == [{"model": start_id, **st} for st in start_stages]
    # A distillation teacher other than the start model: all its stages, marked as the teacher's, in the budget.
    for teacher_id in {st["teacher"] for st in stages if "teacher" in st}:
        assert [st for st in stages if st.get("teacher") == teacher_id] == [
            {"teacher": teacher_id, **st} for st in zoo_card(teacher_id)["training_stages"]]


@pytest.mark.parametrize("zoo_id", [z for z in ZOO if zoo_card(z).get("baseline_kind") in ("equal-macs",
                                                                                              "equal-params")])
def test_dense_baseline_got_the_same_training_as_its_nsr_model(zoo_id):
    card = zoo_card(zoo_id)
    nsr = zoo_card(card["baseline_of"])

    def recipe(c):
        return [tuple(st.get(k) for k in STAGE_RECIPE) for st in c.get("training_stages") or [c["training"]]]

    assert recipe(card) == recipe(nsr)


def test_a_final_stage_is_given_to_a_model_and_its_dense_baselines_alike():
    """bench/train_zoo_long.py's final low-lr stages: an NSR model gets one only together with its baselines, with the
    same options (only the run and start folders differ), and the zoo publishes the final stage's run."""
    staged = set(FINAL_STAGE_JOBS.values())
    for zoo_id in staged:
        card = zoo_card(zoo_id)
        nsr_id = card["baseline_of"] or zoo_id
        family = {nsr_id} | {z for z in ZOO if zoo_card(z).get("baseline_of") == nsr_id
                             and zoo_card(z).get("baseline_kind") in ("equal-macs", "equal-params")}
        assert family <= staged, f"{zoo_id}: final stage without {sorted(family - staged)}"

    def options(job):
        cmd = command(job)
        return [a for i, a in enumerate(cmd) if i >= 3 and cmd[i - 1] not in ("--out", "--init-from")]

    assert len({tuple(options(job)) for job in FINAL_STAGE_JOBS}) == 1
    assert all(published_run(model) == job for job, model in FINAL_STAGE_JOBS.items())


def test_a_distilled_job_is_its_copy_plus_its_scales_soft_teacher():
    """A distilled job differs from the job it copies only by its run folder and the teacher, the soft NSR model of
    its scale; at x2 the hard fine-tune and its dense control get the same teacher (the dense model gets the same
    help: a fair comparison)."""
    teachers = {}
    for job, (copied, teacher) in DISTILLED_JOBS.items():
        cmd, base = command(job), command(copied)
        out = cmd.index("--out") + 1
        assert cmd[out].endswith(job) and cmd[:out] + cmd[out + 1:len(base)] == base[:out] + base[out + 1:]
        extra = cmd[len(base):]
        assert extra[0] == "--distill-from" and extra[2] == "--distill-weight" and len(extra) == 4
        assert extra[1] == finished_model(published_run(teacher)) and zoo_card(teacher)["baseline_of"] is None
        assert f"_sr_x{zoo_card(teacher)['scale']}" in job
        teachers[job] = tuple(extra)
    assert teachers["nsr_sr_x2_hard_kd"] == teachers["dense_sr_x2_eqmacs_plus10k_kd"]


def test_a_distilled_later_stage_continues_its_run_with_its_options():
    """Only the run folder, the start (the continued run's finished weights), the steps, the lr and, where the stage
    names one, the teacher differ: same routing options."""
    for job, stage in DISTILLED_FINAL_JOBS.items():
        cmd, base = command(job), command(stage.continued)
        assert len(cmd) == len(base) and cmd[cmd.index("--out") + 1].endswith(job)
        changed = {base[i - 1]: (base[i], cmd[i]) for i in range(1, len(cmd)) if cmd[i] != base[i]}
        assert {"--out", "--init-from", "--steps"} <= set(changed) <= {"--out", "--init-from", "--steps", "--lr",
                                                                       "--distill-from"}
        value = {option: cmd[cmd.index(option) + 1] for option in ("--init-from", "--steps", "--lr", "--distill-from")}
        assert value["--init-from"] == finished_model(stage.continued)
        assert (value["--steps"], value["--lr"]) == (str(stage.steps), str(stage.lr))
        assert ("--routing" in cmd) == job.startswith("nsr_")  # a hard run stays hard, a dense control dense
        assert ("--distill-from" in changed) == bool(stage.teacher)
        if stage.teacher:
            assert value["--distill-from"] == finished_model(published_run(stage.teacher))
            assert f"_sr_x{zoo_card(stage.teacher)['scale']}" in job
    assert DISTILLED_FINAL_JOBS["nsr_sr_x3_hard_kd_plus3k"][2:] == (FINAL_STEPS, FINAL_LR)
    # the x2 front's pair continues alike: same teacher, steps and lr
    hard, dense = (DISTILLED_FINAL_JOBS[f"{job}_eqp5k"]
                   for job in ("nsr_sr_x2_hard_kd", "dense_sr_x2_eqmacs_plus10k_kd"))
    assert hard[1:] == dense[1:]


def test_a_seed_job_repeats_its_job_with_only_another_seed():
    for job, (repeated, seed) in SEED_JOBS.items():
        cmd, base = command(job), command(repeated)
        out = cmd.index("--out") + 1
        assert cmd[out].endswith(job) and "--seed" not in base and cmd[len(base):] == ["--seed", str(seed)]
        assert cmd[:out] + cmd[out + 1:len(base)] == base[:out] + base[out + 1:]


def test_published_number_is_what_eval_gives():
    """Set5 of the hard model a device runs, recomputed with the reference protocol (the one evaluation path)."""
    zoo_id = "nsr_sr_x2_hard"
    card = zoo_card(zoo_id)
    ckpt = load_checkpoint(zoo_checkpoint(zoo_id))
    task = TaskSpec.from_dict(ckpt.provenance["task"])
    (result,) = evaluate_sets(EvalTarget(zoo_id, model_restorer(ckpt.build(), task.scale)), task, ["set5"], [], None)
    published = next(r for r in card["results"] if r["dataset"] == "set5")
    assert result.summary()["psnr_y"] == pytest.approx(published["psnr_y"], abs=1e-3)
    assert result.summary()["ssim_y"] == pytest.approx(published["ssim_y"], abs=1e-4)


def test_a_checkout_without_runs_fine_tunes_from_the_zoos_copy_of_a_published_run(monkeypatch, tmp_path):
    """runs/ is not committed: a fine-tune or distillation of a published model starts from the zoo's copy of the run
    its card's last stage names, never from a model that is not that run."""
    import train_zoo_long

    monkeypatch.setattr(train_zoo_long, "RUNS", tmp_path)
    assert Path(finished_model("nsr_sr_x3_plus3k")).resolve() == zoo_checkpoint("nsr_sr_x3").resolve()
    assert finished_model("nsr_sr_x3") == str(tmp_path / "nsr_sr_x3" / "model.pt")  # an earlier stage: not in the zoo
    (tmp_path / "nsr_sr_x2").mkdir()
    (tmp_path / "nsr_sr_x2" / "model.pt").write_bytes(b"")
    assert finished_model("nsr_sr_x2") == str(tmp_path / "nsr_sr_x2" / "model.pt")  # the run itself comes first
