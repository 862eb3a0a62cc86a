"""Hard routing at equal budget, SR x2 (issue 15 item 4): training recipes for hard (top-1) NSR routing against the
equal-MACs dense model, every recipe with the SAME CPU budget, each phase one `nsr-edge train` run.

    .venv/bin/python bench/hard_recipes.py train [--only NAME ...]   # resumable: rerun to continue; one run at a time
    .venv/bin/python bench/hard_recipes.py eval                       # FP32 Y-PSNR Set5/Set14/BSD100 (reference tiling)
    .venv/bin/python bench/hard_recipes.py tiles [--recipe NAME]      # 32 vs 64 px deploy tiles: accuracy, calls/image
    .venv/bin/python bench/hard_recipes.py convert [--recipe NAME]    # INT8 dispatch / dense artifacts at 32 and 64 px
    bench/quiet_run.sh .venv/bin/python bench/hard_recipes.py time    # INT8 ms per tile and per image, interleaved
    .venv/bin/python bench/hard_recipes.py report                     # docs/hard_routing_budget.md (generated part)

Architecture: bench/front.py's `nsr_k4` (k = 4 banks of C = 16, 6 blocks, width multiplier 2, d = 1; shared routing
in every hard phase, so the block dispatch form applies) and its equal-MACs dense control `dense_c16`. Everything lives
in runs/hard_recipes/ (git-ignored): <recipe>/<phase>/ (one `nsr-edge train` run each), plan.json (steps per phase),
<recipe>/eval.json, tiles.json.

Budget: BUDGET_CPU_S of process CPU time per recipe (1 thread). A phase's steps come from a short calibration probe
of that very command (bench/front.py's `cpu_s_per_step`); the last phase of a recipe gets what the earlier phases
left of the budget as their checkpoints report it, so a recipe's total stays close to the budget.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (for front)
import front  # noqa: E402  (the front's helpers: calibration, provenance, evaluation)
from generated_doc import write_keeping_hand_written  # noqa: E402

ROOT = front.ROOT
RUNS = ROOT / "runs" / "hard_recipes"
PLAN = RUNS / "plan.json"

# 8 CPU-minutes per recipe (the brief's suggestion; the front had 4, and its soft-then-ST point collapsed).
BUDGET_CPU_S = float(os.environ.get("NSR_HARD_BUDGET_CPU_S", 480.0))
CALIB_STEPS = 40
NSR = ["--model", "wdsr_nsr", "--channels", "16", "--groups", "4", "--cardinality", "1"]
DENSE = ["--model", "wdsr", "--channels", "16"]
LB = ["--sparsity", '{"load_balance": 0.01}']
ST = ["--routing", "straight_through", "--shared-routing"]


@dataclass(frozen=True)
class Phase:
    """One `nsr-edge train` run of a recipe. ``share``: fraction of the budget (None: what the earlier phases left);
    ``init_from`` / ``distill_from``: an earlier phase of the same recipe; ``hard``: trained with hard routing (its
    eval-mode forward is the top-1 deploy routing)."""
    name: str
    options: tuple[str, ...]
    share: float | None = None
    init_from: str | None = None
    distill_from: str | None = None
    hard: bool = False


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    phases: tuple[Phase, ...]
    dense: bool = False

    def phase(self, name: str) -> Phase:
        return next(ph for ph in self.phases if ph.name == name)


RECIPES = [
    Recipe("dense_c16", "dense WDSR C = 16, the equal-MACs control", (Phase("dense", (*front.ARCH, *DENSE)),),
           dense=True),
    # (a) the front's recipe: 2/3 soft (reference softmax, per-conv routers), then straight-through from its weights
    Recipe("a_soft_then_st", "2/3 soft, then 1/3 straight-through + shared routing + load balance 0.01, lr 2e-4 "
           "(bench/front.py's recipe)",
           (Phase("soft", (*front.ARCH, *NSR), share=2 / 3),
            Phase("st", tuple(front.ST_OPTIONS), init_from="soft", hard=True))),
    # (b) hard from the start: no soft phase to unlearn
    Recipe("b_st_lb_from_start", "straight-through + shared routing + load balance 0.01 from step 0, lr 1e-3",
           (Phase("st", (*front.ARCH, *NSR, *ST, *LB), hard=True),)),
    # (c) anneal to hard: normalised logits so the linear head cannot cancel the temperature (field notes)
    Recipe("c_anneal_then_st", "3/4 softmax with normalised logits, temperature 1 -> 0.05 (geometric), shared "
           "routing; then 1/4 straight-through + load balance 0.01, lr 2e-4",
           (Phase("anneal", (*front.ARCH, *NSR, "--shared-routing", "--normalize-logits",
                             "--sparsity", '{"temperature": [1, 0.05, 1.0]}'), share=0.75),
            Phase("st", (*front.ST_OPTIONS, "--normalize-logits"), init_from="anneal", hard=True))),
    # (d) distillation: a shorter soft phase buys a longer hard phase that also matches the soft model's output
    Recipe("d_distill", "1/2 soft, then 1/2 straight-through + shared routing + load balance 0.01, lr 2e-4, "
           "distilled from that soft model (weight 1.0)",
           (Phase("soft", (*front.ARCH, *NSR), share=1 / 2),
            Phase("st_kd", (*front.ST_OPTIONS, "--distill-weight", "1.0"), init_from="soft", distill_from="soft",
                  hard=True))),
]


def recipe(name: str) -> Recipe:
    for r in RECIPES:
        if r.name == name:
            return r
    raise SystemExit(f"hard_recipes: unknown recipe {name!r} (known: {', '.join(r.name for r in RECIPES)})")


def phase_dir(r: Recipe, ph: Phase, runs: Path = RUNS) -> Path:
    return runs / r.name / ph.name


def train_cmd(r: Recipe, ph: Phase, steps: int, out: Path, runs: Path = RUNS) -> list[str]:
    """The `nsr-edge train` command line of one phase (1 thread, seed 0, batch 16 of 32 px: bench/front.py's)."""
    cmd = [front.PY, "-m", "nsr_edge.cli", "train", "--out", str(out), "--steps", str(steps), *front.COMMON,
           *ph.options]
    if ph.init_from:  # --init-from carries the architecture
        cmd += ["--init-from", str(phase_dir(r, r.phase(ph.init_from), runs) / "model.pt")]
    if ph.distill_from:
        cmd += ["--distill-from", str(phase_dir(r, r.phase(ph.distill_from), runs) / "model.pt")]
    return cmd


def spent(r: Recipe, before: Phase, runs: Path = RUNS) -> float:
    """CPU seconds the phases before ``before`` took, from their checkpoints."""
    total = 0.0
    for ph in r.phases:
        if ph is before:
            break
        total += front._provenance(phase_dir(r, ph, runs) / "model.pt")["train_cpu_seconds"]
    return total


def steps_for(r: Recipe, ph: Phase, s_per_step: float, runs: Path = RUNS, budget: float = BUDGET_CPU_S) -> int:
    """Steps that spend the phase's share of the budget (the last phase: what the earlier ones left)."""
    cpu = budget * ph.share if ph.share is not None else budget - spent(r, ph, runs)
    # checkpoints round CPU seconds to 0.1 s: a very short probe can read 0
    return max(50, int(cpu / max(s_per_step, 1e-3)))


def planned_steps(r: Recipe, ph: Phase, runs: Path = RUNS, budget: float = BUDGET_CPU_S,
                  calib_steps: int = CALIB_STEPS) -> int:
    """Steps of a phase, computed once just before it starts (its calibration probe needs the earlier phases'
    checkpoints) and kept in plan.json: a resumed run must keep its steps (the learning-rate schedule uses them)."""
    plan_path = runs / "plan.json"
    plan = front._json(plan_path)
    key = f"{r.name}/{ph.name}"
    if key not in plan:
        probe = runs / "_calib" / f"{r.name}-{ph.name}"
        s_per_step = front.cpu_s_per_step(train_cmd(r, ph, calib_steps, probe, runs), probe)
        plan = front._json(plan_path)
        plan[key] = {"cpu_s_per_step": round(s_per_step, 4), "steps": steps_for(r, ph, s_per_step, runs, budget),
                     "budget_cpu_s": budget}
        front._write_json(plan_path, plan)
    return plan[key]["steps"]


def resume_flag(out: Path) -> list[str]:
    """`--resume` when an interrupted run left its folder (nsr-edge train refuses an existing --out otherwise)."""
    return ["--resume"] if out.exists() else []


def train_recipe(r: Recipe, runs: Path = RUNS, budget: float = BUDGET_CPU_S, calib_steps: int = CALIB_STEPS) -> None:
    """Train (or continue) every phase of one recipe, niced, one run at a time."""
    (runs / r.name).mkdir(parents=True, exist_ok=True)
    for ph in r.phases:
        out = phase_dir(r, ph, runs)
        if (out / "model.pt").is_file():
            continue
        steps = planned_steps(r, ph, runs, budget, calib_steps)
        cmd = train_cmd(r, ph, steps, out, runs) + resume_flag(out)
        print(f"[{time.strftime('%H:%M:%S')}] {r.name}/{ph.name}: {steps} steps", flush=True)
        with open(runs / r.name / f"{ph.name}.log", "a") as log:
            rc = subprocess.run(["nice", "-n", "19", *cmd], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
        if rc != 0:
            raise RuntimeError(f"{r.name}/{ph.name} failed (rc {rc}); see {runs / r.name / (ph.name + '.log')}")
    print(f"[{time.strftime('%H:%M:%S')}] {r.name}: done", flush=True)


def done(r: Recipe, runs: Path = RUNS) -> bool:
    return (phase_dir(r, r.phases[-1], runs) / "model.pt").is_file()


def cmd_train(args) -> int:
    RUNS.mkdir(parents=True, exist_ok=True)
    lock = open(RUNS / ".lock", "w")
    try:  # one trainer at a time (the brief: runs one after the other on the 2 shared cores)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit("hard_recipes: another `train` is running") from None
    for r in [recipe(n) for n in args.only] if args.only else RECIPES:
        if not done(r):
            train_recipe(r)
    return 0


# ------------------------------------------------------------------------------------------------ evaluation
def wait_for_quiet() -> None:
    """Wait while another helper's bench/quiet_run.sh holds the timing lock: it pauses training runs only, so an
    evaluation or conversion started now would run inside its timed rounds."""
    path = os.environ.get("NSR_EDGE_TIMING_LOCK", "/tmp/nsr-edge-timing.lock")
    with open(path, "a") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                time.sleep(5)
                continue
            fcntl.flock(f, fcntl.LOCK_UN)
            return


def cpu_seconds(r: Recipe) -> dict[str, float]:
    """CPU seconds per trained phase, from the checkpoints."""
    return {ph.name: front._provenance(phase_dir(r, ph) / "model.pt")["train_cpu_seconds"] for ph in r.phases
            if (phase_dir(r, ph) / "model.pt").is_file()}


def eval_phase(r: Recipe, ph: Phase, form: str) -> dict[str, float]:
    """Y-PSNR of one phase's checkpoint: ``hard`` = the deploy form (top-1 bank per tile), ``soft`` = the training
    form (what `nsr-edge eval --model CKPT` runs), ``dense`` = the folded dense model."""
    from nsr_edge import hub
    from nsr_edge.hub import task_of

    ckpt = phase_dir(r, ph) / "model.pt"
    resolved = hub.resolve(str(ckpt), require_trained=True)
    model = resolved.build() if form == "soft" else front.deploy_form(ckpt, nsr=form == "hard")
    return front.psnr_y_sets(model, task_of(resolved), f"{r.name}/{ph.name}")


def routing_of(r: Recipe, ph: Phase) -> dict[str, float]:
    """bench/hard_routing.py's routing statistics (Set5's first image, 48 px tiles): mean top-1 probability, median
    top-1/top-2 margin, the busiest bank's share of tiles (lowest and highest over the routed layers)."""
    from nsr_edge import hub
    from nsr_edge.hub import task_of

    import hard_routing  # bench/hard_routing.py

    resolved = hub.resolve(str(phase_dir(r, ph) / "model.pt"), require_trained=True)
    st = hard_routing.routing_stats(resolved.build(), task_of(resolved))
    return {k: round(float(st[k]), 4) for k in ("top1", "median_margin", "min_busiest", "busiest")}


def forms(r: Recipe) -> list[tuple[Phase, str]]:
    """What to evaluate: the dense model; for NSR every phase's model made hard (top-1), and the soft phases also in
    their training form (an annealed phase's temperature is not stored, so its soft form is not evaluated)."""
    if r.dense:
        return [(r.phases[0], "dense")]
    out = []
    for ph in r.phases:
        if not ph.hard and "--normalize-logits" not in ph.options:
            out.append((ph, "soft"))
        out.append((ph, "hard"))
    return out


def cmd_eval(args) -> int:
    import torch

    torch.set_num_threads(1)
    for r in RECIPES:
        path = RUNS / r.name / "eval.json"
        ev = front._json(path)
        for ph, form in forms(r):
            if not (phase_dir(r, ph) / "model.pt").is_file():  # evaluates what is trained so far; rerun for more
                print(f"{r.name}/{ph.name}: not trained yet", flush=True)
                continue
            key = f"{ph.name}/{form}"
            if key not in ev:
                wait_for_quiet()
                ev[key] = eval_phase(r, ph, form)
                front._write_json(path, ev)
                print(r.name, key, ev[key], flush=True)
            if form != "dense" and f"{ph.name}/routing" not in ev:
                ev[f"{ph.name}/routing"] = routing_of(r, ph)
                front._write_json(path, ev)
    return 0



# ------------------------------------------------------------------------------------------------ (e) tile grid
TILES = (32, 64)  # deploy tiles (LR px, `nsr-edge eval --tile`): a 32 px tile routes a 4x finer grid than 64 px
TILES_JSON = RUNS / "tiles.json"


def mean_psnr(ev: dict, key: str) -> float | None:
    row = ev.get(key)
    return sum(row[d] for d in front.SETS) / len(front.SETS) if row else None


def best_hard() -> Recipe | None:
    """The hard recipe whose final (top-1) model has the highest mean Y-PSNR over the three sets."""
    scored = []
    for r in RECIPES:
        if not r.dense and done(r):
            m = mean_psnr(front._json(RUNS / r.name / "eval.json"), f"{r.phases[-1].name}/hard")
            if m is not None:
                scored.append((m, r.name))
    return recipe(max(scored)[1]) if scored else None


def lr_sizes(set_name: str, scale: int = 2) -> list[tuple[int, int]]:
    """(height, width) of a set's shipped LR images (read from the PNG headers)."""
    from PIL import Image

    from nsr_edge.runtime import datasets

    out = []
    for pair in datasets.list_eval_images(set_name, scale):
        with Image.open(pair.lr_path) as im:
            out.append((im.height, im.width))
    return out


def tiles_per_image(sizes: list[tuple[int, int]], tile: int) -> float:
    """Mean number of deploy tiles per image (`runtime.tiling.plan_tiles` with `deploy_spec(tile)`)."""
    from nsr_edge.runtime.tiling import deploy_spec, plan_tiles

    spec = deploy_spec(tile)
    return sum(len(plan_tiles(h, w, spec)) for h, w in sizes) / len(sizes)


def calls_per_tile(deploy) -> int:
    """Program calls per tile of the ExecuTorch dispatch form (`build_plan`: stem + one per block, tail fused)."""
    from nsr_edge.converters.executorch_dispatch import build_plan

    return int(build_plan(deploy).card()["calls_per_tile"])


def tile_row(r: Recipe, tile: int) -> dict:
    """Y-PSNR through fixed ``tile`` px deploy tiles (what `nsr-edge eval --tile` runs), tiles and program calls per
    image; the deploy form of the recipe's final model (hard top-1 per tile, or the folded dense model)."""
    from nsr_edge import hub
    from nsr_edge.hub import task_of
    from nsr_edge.runtime.tiling import deploy_spec

    ckpt = phase_dir(r, r.phases[-1]) / "model.pt"
    resolved = hub.resolve(str(ckpt), require_trained=True)
    deploy = front.deploy_form(ckpt, nsr=not r.dense)
    per_tile = 1 if r.dense else calls_per_tile(deploy)
    tiles = {d: round(tiles_per_image(lr_sizes(d), tile), 1) for d in front.SETS}
    return {"psnr_y": front.psnr_y_sets(deploy, task_of(resolved), r.name, deploy_spec(tile)),
            "tiles_per_image": tiles, "calls_per_tile": per_tile,
            "calls_per_image": {d: round(t * per_tile, 1) for d, t in tiles.items()}}


def cmd_tiles(args) -> int:
    import torch

    torch.set_num_threads(1)
    hard = recipe(args.recipe) if args.recipe else best_hard()
    if hard is None:
        raise SystemExit("hard_recipes: no hard recipe evaluated yet (run: bench/hard_recipes.py eval)")
    out = front._json(TILES_JSON)
    out["best_hard"] = hard.name
    for r in (hard, recipe("dense_c16")):
        for tile in TILES:
            key = f"{r.name}/{tile}"
            if key not in out and done(r):
                wait_for_quiet()
                out[key] = tile_row(r, tile)
                front._write_json(TILES_JSON, out)
                print(key, json.dumps(out[key]), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------ (e) latency
LATENCY = RUNS / "latency"


def latency_models(name: str | None) -> list[Recipe]:
    hard = recipe(name) if name else best_hard()
    if hard is None:
        raise SystemExit("hard_recipes: no hard recipe evaluated yet (run: bench/hard_recipes.py eval)")
    return [hard, recipe("dense_c16")]


def cmd_convert(args) -> int:
    """ExecuTorch INT8 (PT2E PTQ, 64 calibration tiles) at each deploy tile: the hard model as the dispatch artifact
    (one program per block and bank, routed on the host), the dense control as one program. A failure is kept."""
    import torch

    from nsr_edge.converters.pipeline import ConvertOptions, convert

    torch.set_num_threads(1)
    for r in latency_models(args.recipe):
        ckpt = str(phase_dir(r, r.phases[-1]) / "model.pt")
        opts = (dict(target="executorch", recipe="int8-ptq") if r.dense else
                dict(target="executorch-dispatch", recipe="int8-ptq", strategy="hard"))
        for tile in TILES:
            folder, err = LATENCY / f"{r.name}_{tile}", LATENCY / f"{r.name}_{tile}.error"
            if (folder / "model.json").is_file() or err.is_file():
                continue
            wait_for_quiet()
            t0 = time.process_time()
            try:
                convert(ConvertOptions(model=ckpt, tile=tile, calibration_tiles=64, progress=False, **opts),
                        str(folder), force=True)
            except Exception as e:  # kept and reported, never dropped silently
                err.parent.mkdir(parents=True, exist_ok=True)
                err.write_text(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}\n")
                print(f"{folder.name}: conversion failed: {err.read_text().strip()}", flush=True)
                continue
            print(f"{folder.name}: converted ({time.process_time() - t0:.0f} CPU-s)", flush=True)
    return 0


def cmd_time(args) -> int:
    """Every converted artifact in ONE interleaved run (bench/front.py's method: `time_interleaved`, a runner
    process each, 1 thread); per image = per tile x deploy tiles per image. Run it through bench/quiet_run.sh."""
    from importlib import metadata

    from nsr_edge.runtime.profile import time_interleaved

    folders = {f.name: f for f in sorted(LATENCY.glob("*_*")) if (f / "model.json").is_file()}
    if not folders:
        raise SystemExit("hard_recipes: nothing converted yet (run: bench/hard_recipes.py convert)")
    lat, before, after = time_interleaved(folders, args.rounds, args.runs_per_round)
    sizes = {d: lr_sizes(d) for d in front.SETS}
    for name, v in lat.items():
        tile = int(name.rsplit("_", 1)[1])
        v["tiles_per_image"] = {d: tiles_per_image(sz, tile) for d, sz in sizes.items()}
        v["ms_per_image_min"] = {d: round(v["min_ms"] * n, 1) for d, n in v["tiles_per_image"].items()}
        print(f"{name:28s} min {v['min_ms']:7.2f} ms  median {v['median_ms']:7.2f} ms per tile; per image (min) "
              + " / ".join(f"{x:.0f}" for x in v["ms_per_image_min"].values()) + " ms", flush=True)
    front._write_json(LATENCY / "latency.json", {
        "latency": lat, "load": [before, after], "rounds": args.rounds, "runs_per_round": args.runs_per_round,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "versions": {d: metadata.version(d) for d in ("torch", "executorch", "torchao", "numpy")}})
    return 0


def latency_lines() -> list[str]:
    lj = front._json(LATENCY / "latency.json")
    if not lj:
        return ["(INT8 latency per image: not measured in this run: `bench/hard_recipes.py convert`, then "
                "`bench/quiet_run.sh .venv/bin/python bench/hard_recipes.py time`.)", ""]
    load = lj["load"]
    out = ["INT8 latency (ExecuTorch/XNNPACK, PT2E PTQ; hard model = the dispatch artifact, the host running one bank "
           "program per block; dense = one program), one tile per run, 1 thread, all artifacts in ONE interleaved run "
           f"({lj['rounds']} rounds x {lj['runs_per_round']} runs) under bench/quiet_run.sh, {lj['when']}, 1-min load "
           f"average {load[0][0]:.2f} before / {load[1][0]:.2f} after; "
           + ", ".join(f"{k} {v}" for k, v in lj["versions"].items())
           + ". Per image = min ms per tile x deploy tiles per image (the host's tiling and stitching not included).",
           "", "| artifact | ms / tile min | median | ms / image (min x tiles): Set5 / Set14 / BSD100 |",
           "|---|---:|---:|---|"]
    for name, v in lj["latency"].items():
        out.append(f"| {name} | {v['min_ms']:.2f} | {v['median_ms']:.2f} | "
                   + " / ".join(f"{x:.0f}" for x in v["ms_per_image_min"].values()) + " |")
    return out + [""]



# ------------------------------------------------------------------------------------------------ report
DOC = ROOT / "docs" / "hard_routing_budget.md"
END = "<!-- end of generated part: what follows is written by hand and kept by `bench/hard_recipes.py report` -->"


def _fmt(row: dict | None) -> str:
    return " / ".join(f"{row[d]:.3f}" for d in front.SETS) if row else "-"


def shell_line(cmd: list[str]) -> str:
    """A command line as the docs show it: relative to the repository root, quoted for a shell."""
    import shlex

    rel = [c.replace(str(ROOT) + "/", "") for c in cmd]
    return "nice -n 19 " + " ".join(shlex.quote(c) for c in rel)


def recipe_row(r: Recipe, dense_mean: float | None) -> str:
    ev = front._json(RUNS / r.name / "eval.json")
    plan = front._json(PLAN)
    cpu = cpu_seconds(r)
    phases = ", ".join(f"{ph.name} {plan[f'{r.name}/{ph.name}']['steps']} steps / {cpu[ph.name]:.0f} s"
                       if ph.name in cpu else f"{ph.name} not trained" for ph in r.phases)
    last = r.phases[-1].name
    final = ev.get(f"{last}/dense" if r.dense else f"{last}/hard")
    soft = [f"{ph.name}: {_fmt(ev.get(f'{ph.name}/soft'))}" for ph in r.phases if f"{ph.name}/soft" in ev]
    early_hard = [f"{ph.name} made hard: {_fmt(ev.get(f'{ph.name}/hard'))}" for ph in r.phases[:-1]
                  if f"{ph.name}/hard" in ev]
    mean = mean_psnr(ev, f"{last}/dense" if r.dense else f"{last}/hard")
    vs = f"{mean - dense_mean:+.3f}" if mean is not None and dense_mean is not None and not r.dense else "-"
    rt = ev.get(f"{last}/routing")
    routing = (f"{100 * rt['min_busiest']:.0f}-{100 * rt['busiest']:.0f}%, margin {rt['median_margin']:.4f}"
               if rt else "-")
    return (f"| {r.name} | {phases} | {sum(cpu.values()):.0f} | {'<br>'.join(soft + early_hard) or '-'} | "
            f"{_fmt(final)} | " + (f"{mean:.3f}" if mean is not None else "-") + f" | {vs} | {routing} |")


def tiles_lines() -> list[str]:
    tj = front._json(TILES_JSON)
    if not tj:
        return ["(32 vs 64 px tiles: not run yet: `bench/hard_recipes.py tiles`.)", ""]
    out = [f"Finer routing grid: `{tj['best_hard']}` (the best hard model by the mean above) and the dense control "
           "through fixed deploy tiles (`runtime.tiling.deploy_spec`: 4 px margins, 8 px overlap; what `nsr-edge eval "
           "--tile` runs), hard top-1 routing per tile. Calls per tile: the ExecuTorch dispatch plan's (`build_plan`: "
           "stem + one program per block, tail fused); dense = one program per tile.", "",
           "| model | tile (px) | Set5 | Set14 | BSD100 | tiles / image (Set5 / Set14 / BSD100) | calls / tile | "
           "calls / image (Set5 / Set14 / BSD100) |", "|---|---:|---:|---:|---:|---|---:|---|"]
    for key, row in tj.items():
        if key == "best_hard":
            continue
        name, tile = key.rsplit("/", 1)
        out.append(f"| {name} | {tile} | " + " | ".join(f"{row['psnr_y'][d]:.3f}" for d in front.SETS)
                   + " | " + " / ".join(f"{row['tiles_per_image'][d]:.1f}" for d in front.SETS)
                   + f" | {row['calls_per_tile']} | "
                   + " / ".join(f"{row['calls_per_image'][d]:.0f}" for d in front.SETS) + " |")
    return out + [""]


def cmd_report(args) -> int:
    import platform
    from importlib import metadata

    plan = front._json(PLAN)
    dense = recipe("dense_c16")
    dense_mean = mean_psnr(front._json(RUNS / dense.name / "eval.json"), "dense/dense") if done(dense) else None
    L = ["# Hard routing at equal budget, SR x2 (issue 15 item 4)", "",
         "Produced by `bench/hard_recipes.py` (`train`, `eval`, `tiles`, `report`; everything in runs/hard_recipes/). "
         f"Every recipe trains the same model with the **same budget: {BUDGET_CPU_S / 60:.0f} CPU-minutes** (process "
         "CPU time, 1 thread, niced, read back from the checkpoints' provenance), batch 16 of 32 px patches, seed 0: "
         "bench/front.py's `nsr_k4` (k = 4 banks of C = 16, 6 blocks, width multiplier 2, d = 1, shared routing in "
         "the hard phases so the block dispatch form applies) against its equal-MACs dense control `dense_c16`. Steps "
         "per phase: a 40-step calibration probe of that very command gives CPU s/step; the last phase of a recipe "
         "gets what the earlier phases left of the budget (probes and evaluation are not counted).", "",
         "Accuracy: FP32 Y-PSNR with `nsr-edge eval`'s evaluation (`evaluate_sets`, reference 48 px tiling). Hard = "
         "the deploy form (`to_deploy(model, 'hard')`: top-1 bank per tile, what the dispatch artifact runs); soft = "
         "the training form (what `nsr-edge eval --model CKPT` runs on a soft checkpoint). Routing: busiest bank's "
         "share of tiles over the routed layers (lowest-highest) and the median top-1/top-2 probability margin, on "
         "Set5's first image (bench/hard_routing.py's `routing_stats`).", "",
         f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared with a niced background training run), "
         f"Python {platform.python_version()}, "
         + ", ".join(f"{d} {metadata.version(d)}" for d in ("torch", "numpy")) + ".", "",
         "| recipe | phases: steps / CPU-s | CPU-s total | soft model, or an earlier phase made hard: Set5 / Set14 / "
         "BSD100 | final model (hard top-1; dense): Set5 / Set14 / BSD100 | mean | mean vs dense_c16 | busiest bank, "
         "median margin |", "|---|---|---:|---|---|---:|---:|---|"]
    for r in RECIPES:
        if (RUNS / r.name / "eval.json").is_file():  # also a recipe stopped part-way, its last phase missing
            L.append(recipe_row(r, dense_mean))
    L += [""] + ["Recipes:", ""] + [f"- `{r.name}`: {r.description}." for r in RECIPES] + [""]
    missing = [r.name for r in RECIPES if not done(r)]
    if missing:
        L += ["Not trained to the budget in this run: " + ", ".join(missing) + ".", ""]
    L += tiles_lines()
    L += latency_lines()
    L += ["Exact training commands (steps from runs/hard_recipes/plan.json):", "", "```bash"]
    for r in RECIPES:
        for ph in r.phases:
            entry = plan.get(f"{r.name}/{ph.name}")
            if entry:
                L.append(shell_line(train_cmd(r, ph, entry["steps"], phase_dir(r, ph))))
    L += ["```", "", END]
    write_keeping_hand_written(DOC, L, END)
    print(f"wrote {DOC}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("train").add_argument("--only", nargs="*")
    sub.add_parser("eval")
    sub.add_parser("tiles").add_argument("--recipe")
    sub.add_parser("convert").add_argument("--recipe")
    tm = sub.add_parser("time")
    tm.add_argument("--rounds", type=int, default=15)
    tm.add_argument("--runs-per-round", type=int, default=4)
    sub.add_parser("report")
    args = ap.parse_args()
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    return {"train": cmd_train, "eval": cmd_eval, "tiles": cmd_tiles,
            "convert": cmd_convert, "time": cmd_time, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
