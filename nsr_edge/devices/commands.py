"""``--device`` for ``nsr-edge validate`` and ``nsr-edge profile``: the options, and the two commands as they run on
another machine (`base.run_on_device`, or a native ``--runner`` binary). Same report format as on the host; with
``--record`` the card gets the record with its ``device`` (`card.DeviceInfo`) and the device's machine line.

``--device local`` (the default) without ``--remote-python`` is not handled here: the commands run as they always did.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..errors import UserError
from . import DeviceOptions, DeviceRun, Transport, parse_device, run_on_device


def add_device_arguments(p: argparse.ArgumentParser, runner: bool = False) -> None:
    g = p.add_argument_group("on another device (docs/devices.md)")
    g.add_argument("--device", default="local", help="local (default), ssh:USER@HOST[:PORT], adb[:SERIAL], "
                   "arm-emu[:CPU]")
    g.add_argument("--remote-python", help="the device's Python (ssh default: python3; adb: one the shell user can "
                   "run); with --device local: run through the device path with this interpreter")
    g.add_argument("--ssh-key", help="private key file for ssh (key authentication only, never a password prompt)")
    g.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE", help="more `ssh -o` options")
    g.add_argument("--remote-tmp", help="folder on the device for the temporary files (ssh /tmp, adb /data/local/tmp)")
    if runner:
        g.add_argument("--runner", help="profile with a native benchmark binary pushed to the device instead of "
                       "Python: ExecuTorch executor_runner (.pte) or LiteRT benchmark_model (.tflite)")


def on_device(args: argparse.Namespace) -> bool:
    """True when the command must run through a device (anything but plain ``--device local``)."""
    return (getattr(args, "device", "local") or "local") != "local" or bool(getattr(args, "remote_python", None)) \
        or bool(getattr(args, "runner", None))


def transport_for(args: argparse.Namespace) -> Transport:
    for opt in args.ssh_option:
        if "=" not in opt or opt.startswith("="):
            raise UserError(f"--ssh-option {opt!r}: expected KEY=VALUE (an `ssh -o` option)")
    options = DeviceOptions(remote_python=args.remote_python, ssh_key=args.ssh_key,
                            ssh_options=tuple(args.ssh_option), remote_tmp=args.remote_tmp,
                            runner=getattr(args, "runner", None))
    return parse_device(args.device, options)


def _refuse(args: argparse.Namespace, flags: dict[str, str]) -> None:
    for dest, why in flags.items():
        value = getattr(args, dest, None)
        if value not in (None, False, []):
            raise UserError(f"--{dest.replace('_', '-')} {why} (--device {args.device})")


def device_line(d: dict[str, Any]) -> str:
    feats = ", ".join(d.get("isa_features") or []) or "no kernel-selecting ISA features listed"
    gov = f", governor {d['governor']}" if d.get("governor") else ""
    emu = " [EMULATED: no latency]" if d.get("emulated") else ""
    return (f"  device {d['name']}: {d['cpu_model']} ({d['arch']}, {d['cores']} cores; {feats}{gov}), {d['os']}, "
            f"{d.get('runtime') or 'runtime ?'}, {d.get('threads')} thread(s){emu}")


def local_device(card: Any, threads: int):
    """This machine as the `card.DeviceInfo` of a plain ``--device local`` run (the runtime the toolkit has)."""
    from ..runtime.device_info import describe_device, runtime_version

    return describe_device("local", "local", runtime_version(card.runner), threads)


def with_device(record: Any, device: Any) -> Any:
    """A validation/profile record with its ``device`` (a `DeviceInfo` or its dict)."""
    from ..runtime.card import DeviceInfo

    return dataclasses.replace(record, device=device if isinstance(device, DeviceInfo) else DeviceInfo(**device))


def _device_info(result: dict[str, Any]):
    from ..runtime.card import DeviceInfo

    return DeviceInfo(**result["device"])


def _machine(d: dict[str, Any]) -> str:
    """The record's ``machine`` line for the device (the host's `profile.machine` would name the wrong machine)."""
    return f"{d['os']} {d['arch']} ({d['cpu_model']})" + (f", Python {d['python']}" if d.get("python") else "")


# ----------------------------------------------------------------------------------------------------------- validate


def validate_on_device(args: argparse.Namespace) -> int:
    from ..commands._common import print_json
    from ..runtime import validate as V
    from ..runtime.card import load_card, record_validation, tile_spec
    from ..runtime.reference_outputs import load_reference_outputs

    _refuse(args, {
        "reference": "runs the FP32 model in PyTorch on the host: a device compares with the stored reference",
        "no_reference": "leaves nothing to compare on a device (it validates against the stored reference)",
        "max_drop_db": "needs the FP32 model's PSNR on the data set, which a device does not compute: check "
                       "--max-abs or --min-psnr-vs-reference there",
        "per_layer": "needs ETRecord/Inspector on the host: not available with a device yet",
    })
    if args.limit and not (args.dataset or args.dataset_dir):
        raise UserError(f"--limit applies to --dataset/--dataset-dir (--device {args.device} validates on the stored "
                        "reference tiles otherwise)")
    transport = transport_for(args)
    card = load_card(args.artifact)
    hook = getattr(transport, "validate_command", None)  # a transport with its own validate (see base.Transport)
    if hook is not None:
        return hook(args, card)
    load_reference_outputs(args.artifact, card)  # a missing or mismatching reference.npz: before the device is touched
    tol = V.Tolerances(None, args.min_psnr_vs_reference, args.max_abs)
    with tempfile.TemporaryDirectory(prefix="nsr-edge-images.") as tmp:
        images = stage_images(card, args, Path(tmp)) if (args.dataset or args.dataset_dir) else None
        result = run_on_device(transport, args.artifact, "validate",
                               DeviceRun("validate", threads=args.threads, max_abs=args.max_abs,
                                         min_psnr_vs_reference=args.min_psnr_vs_reference, images=images,
                                         allow_small=args.allow_small))
    stored = result["stored"]
    data = result.get("dataset")
    summary, fails = stored_summary(stored, tol, data["summary"] if data else None)
    label = data["label"] if data else f"{stored['reference']['dataset']} (stored reference tiles)"
    spec = tile_spec(card)
    report = {"stored": stored, "summary": summary, "images": data["images"] if data else [], "dataset": label,
              "reference": "stored",
              "artifact": {"target": card.target, "recipe": card.recipe["name"], "strategy": card.strategy,
                           "tile": spec.tile},
              "passed": not fails, "device": result["device"], "runtime_source": result.get("runtime_source")}
    if card.tensor_errors is not None:  # INT8 LiteRT: from the card, written by convert (as on the host)
        report["tensor_errors"] = card.to_dict()["tensor_errors"]
    if args.record:
        rec = V.validation_record(label, summary, tol, not fails, card.runner)
        record_validation(args.artifact, dataclasses.replace(rec, device=_device_info(result)))
    if args.json:
        print_json(report)
    else:
        title = f"{card.title} on {result['device']['name']}"
        if data:
            print(V.format_report(report, f"{title}, {label} (vs ground truth)"))
        print(V.format_stored(stored, "" if data else title))
        if card.tensor_errors is not None:
            print(V.format_tensor_errors(card.tensor_errors))
        print(device_line(result["device"]))
    for f in fails:
        print(f"nsr-edge validate: FAILED: {f}", file=sys.stderr)
    return 1 if fails else 0


def stored_summary(stored: dict[str, Any], tol: Any, base: dict[str, Any] | None = None
                   ) -> tuple[dict[str, Any], list[str]]:
    """The summary of a device validation on the stored reference tiles (added to the data set's summary ``base``
    when images were scored too) and the failed checks: non-finite outputs, then the tolerances ``tol``."""
    from ..runtime import validate as V

    ss = stored["summary"]
    summary: dict[str, Any] = dict(base) if base else {"images": 0}
    summary["reference_tiles"] = ss["tiles"]
    for key in ("psnr_vs_reference", "max_abs_vs_reference", "psnr_vs_reference_identical_images"):
        if key in ss:
            summary[key] = ss[key]
    fails = [] if stored.get("finite", True) else [
        f"the artifact's output holds {ss.get('non_finite')} non-finite values on the stored reference tiles"]
    return summary, fails + V.check(summary, tol)


def stage_images(card: Any, args: argparse.Namespace, folder: Path) -> Path:
    """Copy the evaluation images ``--dataset``/``--dataset-dir`` (and ``--limit``) name into ``folder/images`` with
    an ``images.json`` (label; name, ground truth and, for the shipped SR sets, the LR file of each): what the device
    prepares exactly as the host would (`runtime.device_cli.validate_images`)."""
    import json
    import shutil

    from ..runtime.datasets import list_eval_images, list_folder_images

    task = card.task
    try:
        if args.dataset_dir:
            pairs, label = list_folder_images(args.dataset_dir), Path(args.dataset_dir).name
        else:
            label = args.dataset
            pairs = list_eval_images(label, task.scale if task.name == "sr" else None, args.data_dir)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    pairs = pairs[: args.limit] if args.limit else pairs
    out = folder / "images"
    out.mkdir()
    entries = []
    for i, pair in enumerate(pairs):
        entry = {"name": pair.name}
        for key, path in (("hr", pair.hr_path), ("lr", pair.lr_path)):
            if path is not None:
                name = f"{i:04d}_{key}{Path(path).suffix.lower()}"
                shutil.copyfile(path, out / name)
                entry[key] = name
        entries.append(entry)
    (out / "images.json").write_text(json.dumps({"label": label, "images": entries}))
    return out


# ------------------------------------------------------------------------------------------------------------ profile


def profile_on_device(args: argparse.Namespace) -> int:
    from ..commands._common import print_json
    from ..runtime.card import load_card, record_profile
    from ..runtime.profile import profile_record

    transport = transport_for(args)
    card = load_card(args.artifact)
    hook = getattr(transport, "profile_command", None)  # a transport with its own profile (see base.Transport)
    if hook is not None:
        return hook(args, card)
    run = DeviceRun("profile", threads=args.threads, runs=args.runs, warmup=args.warmup)
    if args.runner:
        from .native import run_native

        if args.record:
            raise UserError("--record stores the median, p90 and peak memory the Python runner measures; a native "
                            "--runner reports its own statistics: print them (--json) instead")
        result = run_native(transport, args.artifact, card, Path(args.runner), run, per_op=args.per_op)
    else:
        if args.per_op:
            raise UserError(f"--per-op (ETDump) is not available with --device {args.device} yet; profile without it, "
                            "or with a LiteRT benchmark_model --runner (its per-op tables)")
        result = run_on_device(transport, args.artifact, "profile", run)
        if args.record and result["device"].get("emulated"):
            raise UserError("emulated seconds are not a latency: --record is refused under emulation (arm-emu "
                            "records instruction counts)")
        if args.record:
            rec = profile_record(result)
            record_profile(args.artifact, dataclasses.replace(rec, machine=_machine(result["device"]),
                                                              device=_device_info(result)))
    if args.json:
        print_json(result)
        return 0
    d = result["device"]
    if args.runner:
        med = f"median {result['median_ms']:.3f} ms  " if result.get("median_ms") is not None else ""
        print(f"{card.title} with {result['binary']} ({result['tool']}), {result['threads']} thread(s), "
              f"{result.get('runs', '?')} runs:")
        print(f"  {med}mean {result['mean_ms']:.3f} ms per tile (the tool's own inputs)")
        for r in result.get("per_op", [])[:15]:
            print(f"    {r['ms']:>9.3f}  {100 * r['share']:5.1f}%  x{r['count']:<4} {r['name']}")
    else:
        print(f"{card.title}, {result['threads']} thread(s), {result['runs']} runs after {result['warmup']} warm-up:")
        if d.get("emulated"):
            print("  emulated: the times below are the emulator's, not a latency of any ARM core")
        print(f"  median {result['median_ms']:.3f} ms  p90 {result['p90_ms']:.3f} ms per tile;  "
              f"{result['ms_per_megapixel']:.1f} ms per output megapixel;  peak RSS {result['peak_rss_mb']:.0f} MB")
    print(device_line(d))
    return 0


__all__ = ["add_device_arguments", "on_device", "transport_for", "validate_on_device", "profile_on_device",
           "device_line", "local_device", "with_device"]
