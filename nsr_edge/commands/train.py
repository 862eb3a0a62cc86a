"""`nsr-edge train`: train an NSR model or a dense baseline on the standard training sets."""

from __future__ import annotations

import argparse
import json

from ..errors import UserError
from ..runtime.files import check_writable
from ._common import (MAX_MEMORY_GB, NOISE, NON_NEGATIVE_FLOAT, POSITIVE, POSITIVE_FLOAT, THREADS,
                      add_architecture_options, architecture_overrides, check_dataset, float_in, int_in)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (reference recipe; resumable; CPU, CUDA, or torchrun DDP)",
                       description="Train with the reference recipe: L1 loss, Adam, multi-step decay, random crops "
                       "with flips and transpose. Multi-GPU: torchrun --nproc_per_node N -m nsr_edge.cli train ...")
    p.add_argument("--out", required=True, help="run folder (checkpoints, log); must be new unless --resume")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint; options given with it must be the run's "
                   "own (--threads, --device, --data-dir, --checkpoint-every, --compile may change)")
    p.add_argument("--model", default="wdsr_nsr", help="preset or architecture to train (default wdsr_nsr)")
    p.add_argument("--task", choices=("sr", "denoise", "jpeg"), dest="task_given",
                   help="default: sr, or the task of --init-from")
    p.add_argument("--noise", type=NOISE, default=0.0, help="denoising: sigma on the 0..255 scale")
    p.add_argument("--quality", type=int_in(0, 100), default=0, help="JPEG deblocking: quality 1..100")
    p.add_argument("--dataset", help="training set name (default: the task's standard set)")
    p.add_argument("--data-dir", help="root of the data sets (default $NSR_EDGE_DATA or ../shared/data)")
    p.add_argument("--steps", type=POSITIVE, default=10000)
    p.add_argument("--batch-size", type=int_in(1, 4096), default=16)
    p.add_argument("--patch-size", type=int_in(8, 1024), default=48, help="input (LR) patch side (8..1024)")
    p.add_argument("--lr", type=float_in(0, 1, lo_open=True), default=1e-3)
    p.add_argument("--milestones", type=float_in(0, 1), nargs="*", default=[2 / 3, 5 / 6],
                   help="fractions of --steps where the learning rate is multiplied by --lr-decay")
    p.add_argument("--lr-decay", type=POSITIVE_FLOAT, default=0.2)
    p.add_argument("--schedule", choices=("multistep", "cosine"), default="multistep",
                   help="learning rate: multistep (the reference: x --lr-decay at --milestones) or cosine (to 0)")
    p.add_argument("--seed", type=int_in(0, 2**63 - 1), default=0)
    p.add_argument("--checkpoint-every", type=POSITIVE, default=500)
    p.add_argument("--threads", type=THREADS, help="CPU threads (default: torch's choice)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the training step (needs a C++ compiler on the CPU): 1.1-1.4x fewer CPU seconds "
                   "per step for the zoo's SR models (docs/train_speed.md) after under a minute of compiling; how it "
                   "runs, not what it computes (a run may be resumed with or without it)")
    p.add_argument("--max-memory-gb", type=MAX_MEMORY_GB, default=8.0,
                   help="refuse a batch x patch whose estimated training memory exceeds this (default 8 GiB)")
    p.add_argument("--init-from", help="fine-tune: start from this zoo model or checkpoint (its architecture and "
                   "task), e.g. with --routing straight_through to make a soft-routed model hard; with --scale S "
                   "an SR model of another scale starts from its body (x2 pre-training for x3/x4: the two output "
                   "convs start fresh)")
    p.add_argument("--distill-from", help="teacher: a trained zoo model or checkpoint of the same task and scale "
                   "(e.g. the soft-routed model a hard-routed fine-tune starts from); adds --distill-weight x "
                   "L1(output, teacher output) to the loss")
    p.add_argument("--distill-weight", type=NON_NEGATIVE_FLOAT, default=1.0)
    g = p.add_argument_group("routing (NSR models)")
    g.add_argument("--routing", choices=("softmax", "sigmoid", "gumbel", "straight_through"))
    g.add_argument("--temperature", type=POSITIVE_FLOAT, help="fixed softmax temperature")
    g.add_argument("--learnable-temperature", action="store_true")
    g.add_argument("--normalize-logits", action="store_true", help="standardise routing logits over the banks")
    g.add_argument("--pool-grid", type=int_in(1, 16), help="route on a g x g grid of pooled sub-patches (default 1)")
    g.add_argument("--shared-routing", action="store_true", help="route both convs of a block from its input")
    g.add_argument("--sparsity", default="{}",
                   help='JSON sparsity options, e.g. \'{"temperature": [1, 0.05, 0.75], "load_balance": 0.01}\'')
    add_architecture_options(p)
    p.set_defaults(func=cmd_train)
    p.set_defaults(option_defaults={a.dest: a.default for a in p._actions if a.dest not in ("help", "func")})


def _routing_overrides(args: argparse.Namespace) -> dict:
    out = {}
    if args.routing:
        out["kind"] = args.routing
    if args.temperature is not None:
        out["temperature"] = args.temperature
    if args.learnable_temperature:
        out["learnable_temperature"] = True
    if args.normalize_logits:
        out["normalize_logits"] = True
    if args.pool_grid:
        out["pool_grid"] = args.pool_grid
    if args.shared_routing:
        out["shared"] = True
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .. import hub
    from ..runtime.tasks import TaskSpec
    from ..train import TrainConfig, describe, train

    args.task = args.task_given or "sr"
    check_writable(args.out, "--out")
    if args.resume:
        # Only --out (and how/where it runs): the configuration comes from the checkpoint. Any other option: the
        # whole command is rebuilt below and must describe the run being resumed (train() names what differs).
        given = {d for d, default in args.option_defaults.items() if getattr(args, d, default) != default}
        how = {"threads", "device", "data_dir", "checkpoint_every", "compile"}
        if not given - how - {"out", "resume", "max_memory_gb"}:
            overrides = {k: getattr(args, k) for k in given & how}
            path = train(None, args.out, resume=True, overrides=overrides)
            print(f"done: {path}")
            return 0
    init_task = None
    if args.init_from:
        # Fine-tune mode: architecture and task come from the starting model; routing options may change
        # (e.g. a straight-through fine-tune that makes a soft-routed model hard).
        start = hub.resolve(args.init_from, require_trained=True)
        arch = architecture_overrides(args)
        if any(v is not None for k, v in arch.items() if k != "scale"):
            raise UserError("--init-from fixes the architecture (only --scale may change: an SR model of another "
                            "scale); drop the other architecture options")
        config, init_task = start.config, start.checkpoint.provenance.get("task")
        if arch["scale"] is not None and arch["scale"] != config.scale:
            # x2 -> x3/x4 (EDSR's pre-training): the body carries over, the output convs start fresh (train.py)
            if config.scale == 1 or arch["scale"] == 1 or (init_task or {}).get("name", "sr") != "sr":
                raise UserError(f"--scale {arch['scale']} with --init-from {args.init_from}: another scale is "
                                "possible only from an SR model to an SR model")
            config = config.with_(scale=arch["scale"])
            init_task = {**init_task, "scale": arch["scale"]} if init_task else None
        init_path = str(hub.checkpoint_path(args.init_from))
    else:
        resolved = hub.resolve(args.model, architecture_overrides(args))
        if resolved.trained:
            raise UserError("--model names an architecture or preset; to fine-tune a trained model use --init-from")
        config, init_path = resolved.config, None
    routing = _routing_overrides(args)
    if routing:
        if not config.is_sparse:
            raise UserError("routing options apply to NSR (sparse) models only")
        config = config.with_(routing=replace(config.routing, **routing))
    if init_task and args.task_given is None:
        task = TaskSpec.from_dict(init_task)
    else:
        if args.task != "sr" and config.scale != 1:
            config = config.with_(scale=1)
        scale = config.scale if args.task == "sr" else 1
        task = TaskSpec(args.task, scale=scale, noise=args.noise, quality=args.quality, channels=config.channels)
    try:
        sparsity = json.loads(args.sparsity)
    except json.JSONDecodeError as e:
        raise UserError(f"--sparsity is not valid JSON: {e}") from None
    cfg = TrainConfig(
        task=task, model=config, dataset=args.dataset, steps=args.steps, batch_size=args.batch_size,
        patch_size=args.patch_size, lr=args.lr, milestones=tuple(args.milestones), lr_decay=args.lr_decay,
        schedule=args.schedule,
        seed=args.seed, checkpoint_every=args.checkpoint_every, threads=args.threads, device=args.device,
        compile=args.compile, data_dir=args.data_dir, init_from=init_path, sparsity=sparsity,
        distill_from=str(hub.checkpoint_path(args.distill_from)) if args.distill_from else None,
        distill_weight=args.distill_weight if args.distill_from else 0.0,
    )
    check_dataset(cfg.dataset or task.train_set, "training set (--dataset)", args.data_dir)
    from ..restore import tile_bytes

    need = 3 * cfg.batch_size * tile_bytes(config, cfg.patch_size)  # activations kept for the backward pass
    if need > args.max_memory_gb * 2**30:
        raise UserError(f"--batch-size {cfg.batch_size} x --patch-size {cfg.patch_size} needs about "
                        f"{need / 2**30:.1f} GiB to train, more than --max-memory-gb {args.max_memory_gb:g}; "
                        "use a smaller batch or patch, or raise --max-memory-gb")
    try:
        summary = describe(cfg)
    except ValueError as e:  # a layer refused the configuration
        raise UserError(f"invalid model options: {e}") from None
    print(summary)
    path = train(cfg, args.out, resume=args.resume)
    print(f"done: {path}")
    return 0
