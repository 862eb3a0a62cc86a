"""Test vectors for the demo apps' tiling cores (android_demo/tiling-core, ios_demo SRCore), made by the Python side.

    python -m nsr_edge.app_vectors [--out android_demo/testdata]

What it writes (small, committed; both apps' tests read the same folder):
- ``cards/<name>/model.json``: cards that ``convert`` writes today for tiny checkpoints made here (seed 0, 1 block,
  width 8, k=2): ExecuTorch FP32, executorch-dispatch (hard routing), ONNX Runtime (gray denoiser, scale 1), LiteRT
  FP32, Core ML FP32. Only ``created`` is pinned (so that regenerating gives the same bytes); the artifacts are not
  kept (the cores' tests need the cards, not the models).
- ``images/*.u8``: small 8-bit images, interleaved HWC (odd sizes; one smaller than a tile).
- ``cases/<case>/``: per (card, image): ``plan.json`` (the tile plan of ``runtime/tiling.py``), ``tiles.f32`` (every
  packed tile, NCHW float32 little-endian, plan order), ``output.f32`` (the stitched output, CHW float32, of the
  stand-in engine below), and for the dispatch card ``routes.json`` (the bank the real ExecuTorch runtime chose at
  every routed stage of every tile, and the routing logits, from the PyTorch programs, that led there).
- ``int8/``: one tile quantized with the int8 rule of the cores (synthetic scale and zero point: the cards written
  today have float32 I/O).
- ``app_fields.json``: every card field the apps read (the Kotlin test checks its parser reads exactly these;
  tests/test_app_vectors.py that cards written today have them).
- ``vectors.json``: the index.

Stand-in engine (no model needed on the app side): ``out = nearest_upscale(tile, scale) + 0.5 * tile[:, :, 0, 0]``
(the tile's top-left value, padding included, added to every output pixel of its channel): it depends on where the
tile was read from, so stitching, padding and core offsets all show in the output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .runtime import tiling
from .runtime.card import load_card

CREATED = "2026-01-01T00:00:00Z"  # pinned in the copied cards (the only field changed)
FORMAT = 1

# Every card field the apps read ("[]": each list item, "{}": each map value, "?": may be absent).
APP_FIELDS = [
    "schema", "version",
    "model", "model.id", "model.task", "model.task.name", "model.scale", "model.channels",
    "runner",
    "artifact", "artifact.file", "artifact.kind?", "artifact.sha256",
    "recipe", "recipe.name",
    "tile", "tile.tile", "tile.pad", "tile.stride", "tile.pad_mode", "tile.edge_strips", "tile.whole_below",
    "io", "io.inputs", "io.outputs",
    "io.inputs[].name", "io.inputs[].layout", "io.inputs[].dtype", "io.inputs[].range", "io.inputs[].shape",
    "io.outputs[].name", "io.outputs[].layout", "io.outputs[].dtype", "io.outputs[].range", "io.outputs[].shape",
    "methods", "methods[].name", "methods[].input_shape", "methods[].output_shape",
    "target_extra?",
    "target_extra.dispatch?", "target_extra.dispatch.layout", "target_extra.dispatch.stages",
    "target_extra.dispatch.stages[].name", "target_extra.dispatch.stages[].methods",
    "target_extra.dispatch.stages[].inputs", "target_extra.dispatch.stages[].outputs",
    "target_extra.dispatch.stages[].route?",
    "target_extra.litert?", "target_extra.litert.methods?", "target_extra.litert.methods{}",
    "target_extra.litert.methods{}.inputs", "target_extra.litert.methods{}.inputs[].dtype",
    "target_extra.litert.methods{}.inputs[].scale", "target_extra.litert.methods{}.inputs[].zero_point",
]

# name -> (checkpoint, convert options)
CARDS = {
    "executorch_fp32": ("sr_x2", dict(target="executorch", tile=24)),
    "executorch_int8": ("sr_x2", dict(target="executorch", recipe="int8-ptq", tile=24, calibration_tiles=8,
                                      calibration_dataset="set5")),
    "dispatch_fp32": ("sr_x2_hard", dict(target="executorch-dispatch", strategy="hard", tile=24)),
    "onnxruntime_gray": ("denoise_gray", dict(target="onnxruntime", tile=32)),
    "litert_fp32": ("sr_x2", dict(target="litert", tile=24)),
    "coreml_fp32": ("sr_x2", dict(target="coreml", tile=24)),
}
IMAGES = {"rgb_37x29": (37, 29, 3), "rgb_5x3": (5, 3, 3), "gray_40x23": (40, 23, 1)}  # name -> (h, w, c)
CASES = {  # case -> (card, image)
    "executorch_rgb_37x29": ("executorch_fp32", "rgb_37x29"),
    "executorch_rgb_5x3": ("executorch_fp32", "rgb_5x3"),
    "dispatch_rgb_37x29": ("dispatch_fp32", "rgb_37x29"),
    "onnxruntime_gray_40x23": ("onnxruntime_gray", "gray_40x23"),
}
INT8 = {"case": "executorch_rgb_37x29", "tile": 0, "dtype": "int8", "scale": 1.0 / 255.0, "zero_point": -128}


# ------------------------------------------------------------------------------------------------ the models


def _checkpoints(root: Path) -> dict[str, Path]:
    """Tiny deterministic checkpoints (seed 0; routers scaled so that real tiles reach both banks)."""
    import torch

    from .checkpoint import Checkpoint, save_checkpoint
    from .layers import RoutingConfig
    from .models import ModelConfig, build_model
    from .runtime.tasks import TaskSpec

    specs = {
        "sr_x2": (ModelConfig("wdsr_nsr", 2, 3, blocks=1, width=8, width_multiplier=2.0, banks=2, cardinality=1),
                  TaskSpec("sr", scale=2)),
        "sr_x2_hard": (ModelConfig("wdsr_nsr", 2, 3, blocks=1, width=8, width_multiplier=2.0, banks=2, cardinality=1,
                                   routing=RoutingConfig(kind="straight_through")), TaskSpec("sr", scale=2)),
        "denoise_gray": (ModelConfig("wdsr_nsr", 1, 1, blocks=1, width=8, width_multiplier=2.0, banks=2,
                                     cardinality=1), TaskSpec("denoise", noise=25.0, channels=1)),
    }
    out = {}
    for name, (cfg, task) in specs.items():
        torch.manual_seed(0)
        model = build_model(cfg)
        with torch.no_grad():
            for mod in model.modules():
                if getattr(mod, "mlp", None) is not None:
                    mod.mlp[0].weight.mul_(40.0)
        out[name] = root / f"tiny_{name}.pt"
        save_checkpoint(Checkpoint(cfg, model.state_dict(), {"task": task.to_dict()}), out[name])
    return out


def _convert_all(work: Path) -> dict[str, Path]:
    from .converters.pipeline import ConvertOptions, convert

    ckpts = _checkpoints(work)
    folders = {}
    for name, (ckpt, options) in CARDS.items():
        folders[name], _ = convert(ConvertOptions(str(ckpts[ckpt]), progress=False, **options), str(work / name))
        folders[name] = Path(folders[name])
    return folders


# ------------------------------------------------------------------------------------------------ the vectors


def make_image(h: int, w: int, c: int, seed: int) -> np.ndarray:
    """HWC uint8: a smooth ramp plus noise (every pixel different enough to catch an off-by-one)."""
    rng = np.random.default_rng(seed)
    ramp = (np.arange(h)[:, None, None] * 5 + np.arange(w)[None, :, None] * 3 + np.arange(c)[None, None, :] * 40)
    return ((ramp + rng.integers(0, 64, (h, w, c))) % 256).astype(np.uint8)


def stand_in(tiles: np.ndarray, scale: int) -> np.ndarray:
    """The stand-in engine: nearest-neighbour upscale plus half the tile's top-left value (per channel)."""
    up = np.repeat(np.repeat(tiles, scale, axis=2), scale, axis=3)
    return up + np.float32(0.5) * tiles[:, :, :1, :1]


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: str) -> np.ndarray:
    """The cores' int8 rule: round(x / scale) half away from zero (x / scale in float32), + zero point, clamp."""
    v = x.astype(np.float32) / np.float32(scale)
    r = np.sign(v) * np.floor(np.abs(v).astype(np.float64) + 0.5)
    lo, hi = (-128, 127) if dtype == "int8" else (0, 255)
    return np.clip(r + zero_point, lo, hi).astype(np.int8 if dtype == "int8" else np.uint8)


def _spec(card: dict[str, Any]) -> tiling.TileSpec:
    return tiling.TileSpec.from_dict(card["tile"])


def _plan_json(plan: list[tiling.TilePlacement]) -> list[list[Any]]:
    return [[t.y, t.x, t.height, t.width, t.core_y, t.core_x, t.core_h, t.core_w, t.weight] for t in plan]


def _routes(folder: Path, tiles: np.ndarray, work: Path) -> dict[str, Any]:
    """Banks chosen by the real runtime (DispatchSession) per tile, and the logits behind them (PyTorch programs of
    the same checkpoint, through ``run_programs``); the two must agree."""
    import torch

    from .checkpoint import load_checkpoint
    from .converters.executorch_dispatch import build_plan, run_programs
    from .deploy import to_deploy
    from .runtime.runners.dispatch_runner import DispatchSession

    session = DispatchSession(str(folder / "model.pte"))
    try:
        session.run(tiles)
        real = [list(map(int, r)) for r in session.last_routes]
    finally:
        session.close()
    card = json.loads((folder / "model.json").read_text())
    stages = card["target_extra"]["dispatch"]["stages"]
    model = load_checkpoint(work / "tiny_sr_x2_hard.pt").build().eval()
    plan = build_plan(to_deploy(model, "hard"))
    routed = {st["route"] for st in stages if st.get("route")}
    per_tile = []
    for i in range(len(tiles)):
        calls: list[dict[str, Any]] = []

        def wrap(name: str, fn: Any) -> Any:
            def call(*args: Any) -> Any:
                outs = fn(*args)
                outs = outs if isinstance(outs, (tuple, list)) else (outs,)
                st = next(s for s in stages if name in s["methods"])
                logits = {n: [float(v) for v in o.reshape(-1).tolist()] for n, o in zip(st["outputs"], outs)
                          if n in routed}
                calls.append({"method": name, "logits": logits})
                return outs
            return call

        programs = {n: wrap(n, fn) for n, fn in plan.programs.items()}
        with torch.no_grad():
            run_programs(programs, stages, torch.from_numpy(tiles[i:i + 1]))
        banks = [st["methods"].index(c["method"]) for st, c in zip(stages, calls) if len(st["methods"]) > 1]
        if banks != real[i]:
            raise RuntimeError(f"tile {i}: PyTorch programs route {banks}, the ExecuTorch runtime {real[i]}")
        per_tile.append({"banks": real[i], "calls": calls})
    return {"source": "banks: ExecuTorch runtime (DispatchSession); logits: the PyTorch programs (run_programs)",
            "tiles": per_tile}


def _write(path: Path, data: bytes | str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    path.write_bytes(raw)
    return hashlib.sha256(raw).hexdigest()


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=False) + "\n"


def generate(out: Path, work: Path) -> None:
    """Convert the tiny checkpoints in ``work`` and write every vector under ``out`` (replacing it)."""
    folders = _convert_all(work)
    if out.exists():
        shutil.rmtree(out)
    files: dict[str, str] = {}

    def put(rel: str, data: bytes | str) -> None:
        files[rel] = _write(out / rel, data)

    cards = {}
    for name, folder in folders.items():
        load_card(folder)  # typed check of what convert wrote
        card = json.loads((folder / "model.json").read_text())
        card["created"] = CREATED
        cards[name] = card
        put(f"cards/{name}/model.json", json.dumps(card, indent=2) + "\n")
    images = {}
    for seed, (name, (h, w, c)) in enumerate(IMAGES.items()):
        images[name] = make_image(h, w, c, seed)
        put(f"images/{name}.u8", images[name].tobytes())
    cases = {}
    for case, (cname, iname) in CASES.items():
        card, img = cards[cname], images[iname]
        spec = _spec(card)
        x = np.ascontiguousarray(img.transpose(2, 0, 1)).astype(np.float32) / np.float32(255)
        tiles, plan = tiling.split(x, spec)
        scale = int(card["model"]["scale"])
        outputs = stand_in(tiles, scale)
        stitched = tiling.stitch(outputs, plan, (x.shape[1] * scale, x.shape[2] * scale), scale)
        base = f"cases/{case}"
        put(f"{base}/plan.json", _dump(_plan_json(plan)))
        put(f"{base}/tiles.f32", tiles.astype("<f4").tobytes())
        put(f"{base}/output.f32", stitched.astype("<f4").tobytes())
        entry = {"card": cname, "image": iname, "tiles": len(plan), "tile_shape": list(tiles.shape[1:]),
                 "output_shape": list(stitched.shape)}
        if card["runner"] == "dispatch":
            put(f"{base}/routes.json", _dump(_routes(folders[cname], tiles, work)))
            entry["routes"] = "routes.json"
        cases[case] = entry
    q = INT8
    tile = np.frombuffer((out / f"cases/{q['case']}/tiles.f32").read_bytes(), "<f4").reshape(
        -1, *cases[q["case"]]["tile_shape"])[q["tile"]]
    put("int8/tile0.i8", quantize(tile, q["scale"], q["zero_point"], q["dtype"]).tobytes())
    put("app_fields.json", _dump(APP_FIELDS))
    index = {"format": FORMAT, "made_by": "python -m nsr_edge.app_vectors", "created_pinned": CREATED,
             "stand_in": "out = nearest_upscale(tile, scale) + 0.5 * tile[:, :, 0, 0] (per channel), float32",
             "images": {n: {"file": f"images/{n}.u8", "height": h, "width": w, "channels": c, "layout": "HWC uint8"}
                        for n, (h, w, c) in IMAGES.items()},
             "cards": {n: f"cards/{n}/model.json" for n in CARDS},
             "cases": cases,
             "int8": {**q, "file": "int8/tile0.i8", "rule": "clamp(round_half_away(x / scale) + zero_point)"},
             "files": dict(sorted(files.items()))}
    _write(out / "vectors.json", _dump(index))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nsr_edge.app_vectors", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="android_demo/testdata")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nsr-app-vectors-") as work:
        generate(Path(args.out), Path(work))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
