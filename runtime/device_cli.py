"""The device side of ``nsr-edge validate|profile --device ...``: run one command on an artifact folder on this
machine and print one JSON object (the result plus the `card.DeviceInfo` of this machine).

    python -m nsr_edge.runtime.device_cli validate ARTIFACT_DIR --json [--threads N] [--save-outputs PATH]
    python -m nsr_edge.runtime.device_cli profile ARTIFACT_DIR --json [--threads N] [--runs N] [--warmup N]
    common: [--device-name NAME --transport local|ssh|adb|arm-emu] [--in-process]

``validate`` compares the artifact with the FP32 reference outputs stored beside it (`validate.validate_stored`; no
PyTorch on a device); ``profile`` is `profile.profile_artifact`. ``--save-outputs`` writes the artifact's outputs on
the stored reference tiles as ``.npz`` (``outputs``, float32 NCHW), so a host can compare device and host outputs bit
for bit. ``--in-process`` opens the runtime in this process instead of a child (under qemu-user a child process
cannot be spawned without binfmt_misc; the remote process as a whole is then the crash boundary).

Exit codes as ``nsr-edge``: 0 done, 1 a tolerance failed (validate; the JSON is printed all the same), 2 a user error
(one line on stderr: ``nsr-edge device: error: ...``). The host side (``nsr_edge.devices``) pushes this package as a
zip and runs this module with it on ``PYTHONPATH``. Torch-free: numpy and the artifact's runtime only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Sequence

from .errors import UserError

TRANSPORTS = ("local", "ssh", "adb", "arm-emu")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"bad arguments: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m nsr_edge.runtime.device_cli", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("validate", "profile"):
        s = sub.add_parser(name)
        s.add_argument("artifact")
        s.add_argument("--json", action="store_true", help="accepted for symmetry: the output is always JSON")
        s.add_argument("--threads", type=int, default=1)
        s.add_argument("--device-name", default="local")
        s.add_argument("--transport", default="local", choices=TRANSPORTS)
        s.add_argument("--in-process", action="store_true")
        s.add_argument("--save-outputs", help="write the artifact's outputs on the stored reference tiles (.npz)")
        if name == "validate":
            s.add_argument("--images", help="images.json of pushed evaluation images: PSNR/SSIM vs ground truth too")
            s.add_argument("--allow-small", action="store_true")
            s.add_argument("--max-abs", type=float)
            s.add_argument("--min-psnr-vs-reference", type=float)
        else:
            s.add_argument("--runs", type=int, default=50)
            s.add_argument("--warmup", type=int, default=5)
    return p


def save_outputs(artifact_dir: str, card: Any, path: str, threads: int, in_process: bool) -> dict[str, Any]:
    """Run the artifact on the stored reference tiles and write its outputs to ``path`` (``.npz``, ``outputs``)."""
    import numpy as np

    from .card import artifact_path
    from .reference_outputs import load_reference_outputs
    from .runners.child import open_runner

    inputs, _ = load_reference_outputs(artifact_dir, card)
    with open_runner(card.runner, str(artifact_path(artifact_dir, card)), "forward", threads, in_process) as proc:
        out = proc.run(inputs)
    with open(path, "wb") as f:
        np.savez(f, outputs=np.ascontiguousarray(out, dtype=np.float32))
    return {"file": os.path.basename(path), "shape": list(out.shape)}


def validate_images(artifact_dir: str, card: Any, manifest: str, threads: int, allow_small: bool) -> dict[str, Any]:
    """PSNR/SSIM vs ground truth on the images a host pushed (``images.json``: ``label`` and ``images``, each
    ``name``, ``hr`` and optional ``lr`` relative to it), prepared for the task exactly as the host does
    (`evaluation.prepare`), run through the card's tiling (`validate.validate_artifact`, no FP32 reference here)."""
    from pathlib import Path

    from . import validate as V
    from .datasets import EvalPair
    from .evaluation import prepare

    base = Path(manifest).parent
    try:
        spec = json.loads(Path(manifest).read_text())
        pairs = [EvalPair(i["name"], base / i["hr"], base / i["lr"] if i.get("lr") else None) for i in spec["images"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{manifest}: not an image list nsr-edge pushed ({e})") from None
    images = []
    for pair in pairs:
        try:
            images.append(prepare(pair, card.task))
        except (ValueError, TypeError, OSError) as e:
            raise UserError(f"{pair.hr_path.name}: {e}") from None
    report = V.validate_artifact(artifact_dir, card, {spec["label"]: images}, None, threads, allow_small,
                                 progress=False)[spec["label"]]
    return {"label": spec["label"], **report}


def run(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """(JSON result, exit code) of one device command."""
    from .card import load_card, tile_spec
    from .device_info import describe_device, runtime_version

    if args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    card = load_card(args.artifact)
    code = 0
    if args.command == "validate":
        from . import validate as V

        stored = V.validate_stored(args.artifact, card, threads=args.threads, in_process=args.in_process)
        tol = V.Tolerances(None, args.min_psnr_vs_reference, args.max_abs)
        fails = ([] if stored["summary"].get("finite", True) else
                 [f"the artifact's output holds {stored['summary'].get('non_finite')} non-finite values on the "
                  "stored reference tiles"]) + V.check(stored["summary"], tol)
        spec = tile_spec(card)
        result: dict[str, Any] = {
            "command": "validate", "stored": stored, "reference": "stored", "passed": not fails, "failures": fails,
            "tolerances": dict(vars(tol)),
            "artifact": {"target": card.target, "recipe": card.recipe["name"], "strategy": card.strategy,
                         "tile": spec.tile},
        }
        if args.images and args.in_process:
            raise UserError("--images runs the artifact over whole images in a child process; not with --in-process")
        if args.images:
            result["dataset"] = validate_images(args.artifact, card, args.images, args.threads, args.allow_small)
        code = 1 if fails else 0
    else:
        from .profile import profile_artifact

        result = {"command": "profile", **profile_artifact(args.artifact, card, args.threads, args.runs, args.warmup,
                                                          in_process=args.in_process)}
    if args.save_outputs:
        result["saved_outputs"] = save_outputs(args.artifact, card, args.save_outputs, args.threads, args.in_process)
    threads = result.get("threads", args.threads)
    # which nsr_edge.runtime ran: the pushed bundle (a zip on PYTHONPATH) or one installed on the device
    result["runtime_source"] = "bundle" if ".zip" in (__file__ or "") else "installed"
    result["device"] = describe_device(args.device_name, args.transport, runtime_version(card.runner), threads,
                                       emulated=args.transport == "arm-emu").__dict__
    return result, code


def json_main(body: Callable[[], tuple[dict[str, Any], int]]) -> int:
    """Run a device-side command: ``body()`` gives (result, exit code); the result is printed as JSON on the original
    stdout, refusals as one line on stderr (exit 2, 130 on Ctrl-C). Whatever native code prints to fd 1 meanwhile goes
    to stderr, so the result a host reads is never mixed with a runtime's chatter."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        result, code = body()
    except UserError as e:
        print(f"nsr-edge device: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nsr-edge device: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("nsr-edge device: error: out of memory on the device", file=sys.stderr)
        return 2
    out.write(json.dumps(result, indent=2) + "\n")
    out.flush()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    return json_main(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
