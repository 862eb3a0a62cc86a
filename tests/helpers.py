"""Helpers the tests share (tests/conftest.py puts this folder on sys.path)."""

import contextlib
import io
import subprocess


def run_cli(*args):
    """The CLI in this process (its runtimes still run in child processes): exit code, stdout, stderr."""
    from nsr_edge.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def one_line_error(r) -> str:
    """A user error: exit code 2, exactly one ``nsr-edge ...`` line on stderr and no traceback; returns that line."""
    assert r.returncode == 2, (r.returncode, r.stderr[-500:])
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("nsr-edge")]
    assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr[-800:]
    return err[0]


def real_tiles(tile: int, n: int = 12, dataset: str = "set5", image: int = 0):
    """``n`` deploy tiles (``tile`` px, x2 SR inputs) spread over one real image of ``dataset``."""
    import numpy as np
    from nsr_edge.runtime import datasets, tiling

    pair = datasets.list_eval_images(dataset, 2)[image]
    x, _ = datasets.make_input(pair, "sr", 2)
    tiles, _ = tiling.split(x, tiling.deploy_spec(tile))
    return np.ascontiguousarray(tiles[:: max(1, len(tiles) // n)][:n], dtype=np.float32)


def artifact_vouched_by_card(source_dir, folder, data: bytes):
    """``folder`` holding ``data`` as the artifact of ``source_dir``'s card, with a card whose size and SHA-256 vouch
    for it: how a test gets a corrupt or poisoned artifact past the digest check to its runtime."""
    import hashlib
    import json
    from pathlib import Path

    card = json.loads((Path(source_dir) / "model.json").read_text())
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / card["artifact"]["file"]).write_bytes(data)
    card["artifact"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (folder / "model.json").write_text(json.dumps(card))
    return folder


def spread_router_model(cfg):
    """An untrained model of ``cfg`` (seed 0) whose routers have real spread, so that real tiles reach several banks
    (the dispatch and in-program routing tests exercise every branch)."""
    import torch
    from nsr_edge.models import build_model

    torch.manual_seed(0)
    m = build_model(cfg)
    with torch.no_grad():
        for mod in m.modules():
            if getattr(mod, "mlp", None) is not None:
                mod.mlp[0].weight.mul_(40.0)
    return m.eval()



def tiny_config():
    """The tiny SR x2 NSR model the converter tests lower in seconds: 1 block, width 8, k = 2 banks, d = 1."""
    from nsr_edge.models import ModelConfig

    return ModelConfig("wdsr_nsr", 2, 3, blocks=1, width=8, width_multiplier=2.0, banks=2, cardinality=1)


def tiny_checkpoint(path, seed: int = 0):
    """An untrained `tiny_config` model (torch seed ``seed``) saved as an SR x2 checkpoint at ``path``."""
    import torch
    from nsr_edge.checkpoint import Checkpoint, save_checkpoint
    from nsr_edge.models import build_model
    from nsr_edge.runtime.tasks import TaskSpec

    cfg = tiny_config()
    torch.manual_seed(seed)
    save_checkpoint(Checkpoint(cfg, build_model(cfg).state_dict(), {"task": TaskSpec("sr", scale=2).to_dict()}), path)
    return path
