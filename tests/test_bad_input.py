"""Bad input, as a hostile or careless user gives it (issue 16): every case ends in the expected exit code with one
line on stderr and no traceback, writes nothing over anything, and leaves no temporary file behind.

Fast by construction: one tiny model (1 block, C=8), one ONNX Runtime conversion of it at tile 24 (module fixture),
images of a few pixels, the CLI run in this process (`helpers.run_cli`). Groups: command-line options, images,
checkpoints, model cards, --force and output folders, read-only / full file systems, training runs, and SIGINT /
SIGKILL during a write."""

import copy
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import one_line_error, run_cli
from nsr_edge.checkpoint import Checkpoint, save_checkpoint
from nsr_edge.models import ModelConfig, build_model
from nsr_edge.runtime.tasks import TaskSpec

TINY = ModelConfig("wdsr_nsr", 2, 3, blocks=1, width=8, width_multiplier=2.0, banks=2, cardinality=1)


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Inputs shared by every case: a tiny checkpoint, its ONNX Runtime artifact, a few small images."""
    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    ckpt = root / "tiny.pt"
    save_checkpoint(Checkpoint(TINY, build_model(TINY).state_dict(), {"task": TaskSpec("sr", scale=2).to_dict()}),
                    ckpt)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 18, 3), dtype=np.uint8)).save(root / "rgb.png")
    r = run_cli("convert", "--model", ckpt, "--target", "onnxruntime", "--tile", "24", "--out", root / "art",
                "--quiet")
    assert r.returncode == 0, r.stderr
    return {"root": root, "ckpt": ckpt, "img": root / "rgb.png", "art": root / "art",
            "card": json.loads((root / "art" / "model.json").read_text())}


def snapshot(*folders: Path) -> dict[str, str]:
    """Every file (hidden ones too) under ``folders``: path -> SHA-256."""
    out = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def temp_files(*folders: Path) -> list[str]:
    return [str(p) for f in folders for p in Path(f).rglob("*") if p.name.endswith(".tmp") or ".old-" in p.name]


def refused(args, world, tmp_path, expect: str, code: int = 2) -> str:
    """Run the CLI; it must refuse in one line mentioning ``expect``, write nothing and leave no temporary file."""
    before = snapshot(world["root"], tmp_path)
    r = run_cli(*args)
    if code == 2:
        line = one_line_error(r)
    else:
        assert r.returncode == code, (r.returncode, r.stderr[-500:])
        assert "Traceback" not in r.stderr
        line = r.stderr.strip().splitlines()[-1]
    assert expect.lower() in line.lower(), line
    assert snapshot(world["root"], tmp_path) == before, "something was written"
    assert not temp_files(world["root"], tmp_path)
    return line


# ----------------------------------------------------------------------------------------------- command-line options

OPTION_CASES = [
    (["info", "wdsr_nsr", "--cardinality", "0"], "--cardinality must be an integer in 1..1024, got 0"),
    (["info", "wdsr_nsr", "--cardinality", "x"], "--cardinality must be an integer"),
    (["info", "wdsr_nsr", "--channels", "30", "--cardinality", "16"], "divisible by cardinality"),
    (["info", "wdsr_nsr", "--channels", "1024", "--blocks", "256", "--groups", "64"], "parameters"),
    (["info", "wdsr_nsr", "--blocks", "0"], "--blocks must be an integer in 1..256"),
    (["info", "wdsr_nsr", "--scale", "9"], "--scale must be an integer in 1..8"),
    (["info", "wdsr_nsr", "--width-multiplier", "nan"], "--width-multiplier must be a finite number"),
    (["info", "wdsr_nsr", "--width-multiplier", "0.01"], "leaves no channels"),
    (["info", "wdsr_nsr", "--groups", "0"], "--groups must be an integer in 1..64"),
    (["info", "wdsr_nsr", "--tile", "0"], "--tile must be an integer in 24..4096, got 0"),
    (["info", "wdsr_nsr", "--image-channels", "2"], "--image-channels"),
    (["info", "no_such_model"], "unknown model"),
    (["upscale", "{img}", "{out}/o.png", "--tile", "100000"], "--tile must be an integer in 24..4096, got 100000"),
    (["upscale", "{img}", "{out}/o.png", "--tile", "-5"], "--tile must be an integer in 24..4096"),
    (["upscale", "{img}", "{out}/o.png", "--max-megapixels", "0"], "--max-megapixels must be a finite number > 0"),
    (["upscale", "{img}", "{out}/o.png", "--max-megapixels", "inf"], "--max-megapixels must be a finite number"),
    (["upscale", "{img}", "{out}/o.png", "--max-memory-gb", "-1"], "--max-memory-gb must be a finite number > 0"),
    (["eval", "--method", "bicubic", "--scale", "0"], "--scale must be an integer in 1..8"),
    (["eval", "--method", "bicubic", "--noise", "-1"], "--noise must be a finite number in 0..255"),
    (["eval", "--method", "bicubic", "--jpeg", "101"], "--jpeg must be an integer in 1..100"),
    (["eval", "--method", "bicubic", "--scale", "2", "--dataset", "nope"], "unknown dataset"),
    (["convert", "--model", "{ckpt}", "--out", "{out}/a", "--tile", "12"], "--tile must be an integer in 24..4096"),
    (["convert", "--model", "{ckpt}", "--out", "{out}/a", "--extra-tiles", "0"], "--extra-tiles must be"),
    (["convert", "--model", "{ckpt}", "--out", "{out}/a", "--calibration-tiles", "0"], "--calibration-tiles must be"),
    (["convert", "--model", "{ckpt}", "--out", "{out}/a", "--qat-steps", "-1"], "--qat-steps must be an integer >= 0"),
    (["convert", "--model", "{ckpt}", "--out", "{out}/a", "--auto-max-drop-db", "-1"], "--auto-max-drop-db must be"),
    (["convert", "--model", "{ckpt}", "--out", "{out}/a", "--target", "tpu"], "unknown target"),
    (["convert", "--model", "{ckpt}", "--out", "{out}/a", "--quant", "int4"], "unknown recipe"),
    (["convert", "--model", "{ckpt}", "--out", "{out}/a", "--quant", "int8-ptq", "--calibration-dataset", "nowhere"],
     "calibration data"),
    (["convert", "--model", "nope", "--out", "{out}/a"], "not a trained model"),
    (["validate", "{art}", "--limit", "0"], "--limit must be an integer >= 1, got 0"),
    (["validate", "{art}", "--threads", "0"], "--threads must be an integer in 1..1024"),
    (["validate", "{art}", "--max-drop-db", "nan"], "--max-drop-db must be a finite number"),
    (["validate", "{art}", "--max-abs", "-0.1"], "--max-abs must be a finite number >= 0"),
    (["validate", "{art}", "--dataset", "nope", "--no-reference"], "unknown dataset"),
    (["validate", "{art}", "--reference", "{ckpt}", "--no-reference"], "contradict"),
    (["profile", "{art}", "--runs", "0"], "--runs must be an integer >= 1"),
    (["profile", "{art}", "--warmup", "-1"], "--warmup must be an integer >= 0"),
    (["profile", "{art}", "--threads", "100000"], "--threads must be an integer in 1..1024"),
    (["train", "--out", "{out}/r", "--steps", "0"], "--steps must be an integer >= 1"),
    (["train", "--out", "{out}/r", "--batch-size", "0"], "--batch-size must be an integer in 1..4096"),
    (["train", "--out", "{out}/r", "--patch-size", "0"], "--patch-size must be an integer in 8..1024"),
    (["train", "--out", "{out}/r", "--lr", "nan"], "--lr must be a finite number > 0"),
    (["train", "--out", "{out}/r", "--lr", "0"], "--lr must be a finite number > 0"),
    (["train", "--out", "{out}/r", "--milestones", "2"], "--milestones must be a finite number in 0..1"),
    (["train", "--out", "{out}/r", "--checkpoint-every", "0"], "--checkpoint-every must be"),
    (["train", "--out", "{out}/r", "--temperature", "0"], "--temperature must be a finite number > 0"),
    (["train", "--out", "{out}/r", "--quality", "500"], "--quality must be an integer in 0..100"),
    (["train", "--out", "{out}/r", "--dataset", "nope"], "unknown dataset"),
    (["train", "--out", "{out}/r", "--batch-size", "4096", "--patch-size", "1024"], "--max-memory-gb"),
    (["train", "--out", "{out}/r", "--max-memory-gb", "0"], "--max-memory-gb must be a finite number > 0"),
    (["train", "--out", "{out}/r", "--channels", "30", "--cardinality", "16"], "divisible by cardinality"),
    (["train", "--out", "{out}/r", "--sparsity", "{{not json"], "--sparsity is not valid JSON"),
    (["demo", "--out", "{out}/d", "--runs", "0"], "--runs must be an integer >= 1"),
    (["demo", "--out", "{out}/d", "--tile", "5000"], "--tile must be an integer in 24..4096"),
    (["visualize-routing", "{img}", "--model", "{ckpt}", "--out", "{out}/v.png", "--tile", "1"], "--tile must be"),
    (["visualize-routing", "{img}", "--model", "{ckpt}", "--out", "{out}/v.jpg"], "--out must be a .png"),
    (["no-such-command"], "invalid choice"),
    (["convert"], "required"),
]


@pytest.mark.parametrize("args,expect", OPTION_CASES, ids=[" ".join(a)[:60] for a, _ in OPTION_CASES])
def test_bad_options_are_one_line(world, tmp_path, args, expect):
    # No wall-clock assertion (timings are benchmarks, and CI machines are loaded): "before any work" is checked by
    # the tests that make the work itself fail if reached.
    values = {"img": world["img"], "ckpt": world["ckpt"], "art": world["art"], "out": tmp_path}
    refused([a.format(**values) for a in args], world, tmp_path, expect)


# ------------------------------------------------------------------------------------------------------------- images


def _png_header_only(path: Path, w: int, h: int) -> None:
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _make_image(kind: str, folder: Path) -> Path:
    rng = np.random.default_rng(1)
    p = folder / f"{kind}.png"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("this is not an image\n")
    elif kind == "random":
        p.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p)
        p.write_bytes(p.read_bytes()[:300])
    elif kind == "bad_crc":
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(p)
        data = bytearray(p.read_bytes())
        data[40] ^= 0xFF
        p.write_bytes(bytes(data))
    elif kind == "png_magic_only":
        p.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    elif kind == "huge_header":
        _png_header_only(p, 100_000, 100_000)
    elif kind == "multi_frame_tiff":
        p = folder / "pages.tif"
        frames = [Image.fromarray(np.full((12, 12, 3), v, np.uint8)) for v in (10, 200)]
        frames[0].save(p, save_all=True, append_images=frames[1:])
    elif kind == "animated_png":
        frames = [Image.fromarray(np.full((12, 12, 3), v, np.uint8)) for v in (10, 200)]
        frames[0].save(p, save_all=True, append_images=frames[1:])
    elif kind == "gif":
        p = folder / "x.gif"
        Image.fromarray(np.zeros((12, 12), np.uint8)).save(p)
    elif kind == "folder":
        p = folder / "dir.png"
        p.mkdir()
    elif kind == "missing":
        p = folder / "missing.png"
    else:
        raise AssertionError(kind)
    return p


BAD_IMAGES = [
    ("empty", "not a readable"), ("text", "not a readable"), ("random", "not a readable"),
    ("truncated", "corrupt or truncated"), ("bad_crc", "bad_crc.png"), ("png_magic_only", ""),
    ("huge_header", "more than"), ("multi_frame_tiff", "2 frames"), ("animated_png", "2 frames"),
    ("gif", "not a readable"), ("folder", "no such file"), ("missing", "no such file"),
]


@pytest.mark.parametrize("kind,expect", BAD_IMAGES, ids=[k for k, _ in BAD_IMAGES])
@pytest.mark.parametrize("command", ["upscale", "visualize-routing"])
def test_bad_images_are_refused(world, tmp_path, kind, expect, command):
    src = _make_image(kind, tmp_path)
    out = tmp_path / "out.png"
    args = ([command, src, out] if command == "upscale" else [command, src, "--out", out])
    refused([*args, "--model", world["ckpt"], "--tile", "24"], world, tmp_path, expect)
    assert not out.exists()


ODD_SIZES = [(1, 1), (1, 40), (40, 1), (7, 3), (25, 24)]


@pytest.mark.parametrize("h,w", ODD_SIZES)
def test_odd_image_sizes_restore(world, tmp_path, h, w):
    Image.fromarray(np.full((h, w), 77, np.uint8)).save(tmp_path / "odd.png")
    r = run_cli("upscale", tmp_path / "odd.png", tmp_path / "o.png", "--model", world["ckpt"], "--tile", "24")
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "o.png") as im:
        assert im.size == (2 * w, 2 * h) and im.mode == "L"
    assert not temp_files(tmp_path)


def test_16_bit_input_to_jpeg_says_it_stores_8_bits(world, tmp_path):
    Image.fromarray((np.arange(15 * 13, dtype=np.uint16).reshape(15, 13) * 300)).save(tmp_path / "g16.png")
    r = run_cli("upscale", tmp_path / "g16.png", tmp_path / "o.jpg", "--model", world["ckpt"], "--tile", "24")
    assert r.returncode == 0 and "16-bit" in r.stderr and "8 bits" in r.stderr, r.stderr


OUTPUT_CASES = [
    ("same_as_input", "also an input"), ("exists", "--force"), ("is_folder", "is a folder"),
    ("bad_extension", "cannot write"), ("missing_folder", "does not exist"), ("same_via_symlink", "also an input"),
    ("too_many_megapixels", "more than"), ("too_much_memory", "--max-memory-gb"),
]


@pytest.mark.parametrize("case,expect", OUTPUT_CASES, ids=[c for c, _ in OUTPUT_CASES])
def test_restore_outputs_that_are_refused(world, tmp_path, case, expect):
    src = tmp_path / "in.png"
    shutil.copy(world["img"], src)
    out, extra = tmp_path / "out.png", ["--force"]
    if case == "same_as_input":
        out = src
    elif case == "exists":
        out.write_bytes(b"keep me")
        extra = []
    elif case == "is_folder":
        out.mkdir()
    elif case == "bad_extension":
        out = tmp_path / "out.gif"
    elif case == "missing_folder":
        out = tmp_path / "nowhere" / "out.png"
    elif case == "same_via_symlink":
        (tmp_path / "link").symlink_to(tmp_path)
        out = tmp_path / "link" / "in.png"
    elif case == "too_many_megapixels":
        extra = ["--max-megapixels", "0.0001"]
    elif case == "too_much_memory":
        extra = ["--tile", "4096", "--max-memory-gb", "0.5"]
    refused(["upscale", src, out, "--model", world["ckpt"], *extra], world, tmp_path, expect)


# -------------------------------------------------------------------------------------------------------- checkpoints


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/nsr_edge_pwned",))


def _make_checkpoint(kind: str, folder: Path, good: Path) -> Path:
    p = folder / f"{kind}.pt"
    raw = good.read_bytes()
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "random":
        p.write_bytes(np.random.default_rng(2).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        p.write_bytes(raw[: len(raw) // 2])
    elif kind == "flipped_middle":
        data = bytearray(raw)
        data[len(data) // 2: len(data) // 2 + 64] = b"\xff" * 64
        p.write_bytes(bytes(data))
    elif kind == "pickled_code":
        torch.save({"x": _Evil()}, p)
    elif kind == "plain_pickle":
        p.write_bytes(pickle.dumps({"format": "nsr-edge-checkpoint"}))
    elif kind == "foreign_list":
        torch.save([torch.zeros(3)], p)
    elif kind == "foreign_dict":
        torch.save({"weights": torch.zeros(3)}, p)
    elif kind == "reference_format":
        torch.save({"model_state_dict": {"body.0.weight_v": torch.zeros(8, 3, 3, 3)}}, p)
    elif kind == "zip_bomb":
        with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("archive/data.pkl", b"\0" * (64 << 20))
    elif kind == "wrong_version":
        d = torch.load(good, weights_only=True)
        d["version"] = 99
        torch.save(d, p)
    elif kind in ("cardinality_zero", "cardinality_string", "absurd_size", "unknown_key"):
        d = torch.load(good, weights_only=True)
        d["config"] = {**d["config"], **{"cardinality_zero": {"cardinality": 0},
                                         "cardinality_string": {"cardinality": "4"},
                                         "absurd_size": {"width": 4096, "blocks": 4096},
                                         "unknown_key": {"depth": 3}}[kind]}
        torch.save(d, p)
    elif kind == "nan_weights":
        d = torch.load(good, weights_only=True)
        k = next(iter(d["state_dict"]))
        d["state_dict"][k] = torch.full_like(d["state_dict"][k], float("nan"))
        torch.save(d, p)
    elif kind == "wrong_shape":
        d = torch.load(good, weights_only=True)
        k = next(iter(d["state_dict"]))
        d["state_dict"][k] = torch.zeros(1)
        torch.save(d, p)
    elif kind == "folder":
        p.mkdir()
    elif kind == "missing":
        pass
    else:
        raise AssertionError(kind)
    return p


BAD_CHECKPOINTS = [
    ("empty", "empty file"), ("random", "random.pt"), ("truncated", "not a readable"),
    ("flipped_middle", "flipped_middle.pt"), ("pickled_code", "refused"), ("plain_pickle", "plain_pickle.pt"),
    ("foreign_list", "not an nsr-edge checkpoint"), ("foreign_dict", "not an nsr-edge checkpoint"),
    ("reference_format", "import-checkpoint"), ("zip_bomb", "refused"), ("wrong_version", "version"),
    ("cardinality_zero", "cardinality"), ("cardinality_string", "cardinality"), ("absurd_size", "parameters"),
    ("unknown_key", "unknown model config"), ("nan_weights", "nan_weights.pt"), ("wrong_shape", "shape mismatch"),
    ("folder", "directory"), ("missing", "no such file"),
]


@pytest.mark.parametrize("kind,expect", BAD_CHECKPOINTS, ids=[k for k, _ in BAD_CHECKPOINTS])
def test_bad_checkpoints_are_one_line_and_run_nothing(world, tmp_path, kind, expect):
    if Path("/tmp/nsr_edge_pwned").exists():
        os.unlink("/tmp/nsr_edge_pwned")
    ckpt = _make_checkpoint(kind, tmp_path, world["ckpt"])
    line = refused(["upscale", world["img"], tmp_path / "o.png", "--model", ckpt, "--tile", "24"], world,
                   tmp_path, expect)
    assert "weights_only" not in line and "miniz" not in line  # no library advice or internals cut in half
    assert not Path("/tmp/nsr_edge_pwned").exists()


@pytest.mark.parametrize("kind", ["empty", "truncated", "pickled_code", "zip_bomb", "foreign_list", "ours"])
def test_bad_reference_checkpoints_for_import(world, tmp_path, kind):
    if kind == "ours":
        src = tmp_path / "ours_already.pt"
        shutil.copy(world["ckpt"], src)
    else:
        src = _make_checkpoint(kind, tmp_path, world["ckpt"])
    line = refused(["import-checkpoint", src, "--out", tmp_path / "ours.pt"], world, tmp_path, str(src.name))
    assert "miniz" not in line  # no library internals
    if kind == "ours":
        assert "already an nsr-edge checkpoint" in line


_PKG = "model.mlpackage/"


@pytest.mark.parametrize("case,expect", [
    ("bomb", "expand to"), ("many_members", "members"), ("escaping_name", "outside the archive"),
    ("corrupt", "not a Core ML package"), ("no_package", "no .mlpackage"),
])
def test_core_ml_zips_are_limited_before_extraction(tmp_path, monkeypatch, case, expect):
    from nsr_edge.runtime.coreml_mil import load_artifact
    from nsr_edge.runtime.coreml_mil.errors import MilError

    monkeypatch.setenv("NSR_EDGE_MAX_UNZIP_MB", "1")
    monkeypatch.setenv("NSR_EDGE_MAX_UNZIP_FILES", "50")
    p = tmp_path / "model.mlpackage.zip"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        if case == "bomb":
            z.writestr(_PKG + "Data/weights.bin", b"\0" * (2 << 20))  # 2 MiB from a few KiB
        elif case == "many_members":
            for i in range(60):
                z.writestr(f"{_PKG}Data/{i}.bin", b"x")
        elif case == "escaping_name":
            z.writestr(_PKG + "../../evil.txt", b"x")
        elif case == "no_package":
            z.writestr("readme.txt", b"x")
        else:
            z.writestr(_PKG + "Manifest.json", b"x" * 100)
    if case == "corrupt":
        p.write_bytes(p.read_bytes()[:40] + b"\xff" * 20 + p.read_bytes()[60:])
    with pytest.raises(MilError) as e:
        load_artifact(p)
    assert "\n" not in str(e.value) and (expect in str(e.value) or case == "corrupt"), str(e.value)


def test_import_checkpoint_never_replaces_its_source(world, tmp_path):
    src = tmp_path / "ref.pth"
    shutil.copy(world["ckpt"], src)
    refused(["import-checkpoint", src, "--out", src, "--force"], world, tmp_path, "also an input")
    (tmp_path / "cfg.json").write_text("{}")
    refused(["import-checkpoint", src, "--config", tmp_path / "cfg.json", "--out", tmp_path / "cfg.json", "--force"],
            world, tmp_path, "also an input")


# -------------------------------------------------------------------------------------------------------- model cards


def _set(path: str, value):
    def edit(card):
        *parents, last = path.split(".")
        node = card
        for k in parents:
            node = node[k]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
        return card

    return edit


_DELETE = object()

CARD_CASES = [
    ("artifact_is_string", _set("artifact", "model.onnx"), "artifact"),
    ("artifact_file_missing", _set("artifact.file", _DELETE), "artifact.file"),
    ("artifact_file_int", _set("artifact.file", 3), "artifact.file"),
    ("task_missing", _set("model.task", _DELETE), "model.task"),
    ("scale_is_string", _set("model.scale", "2"), "model.scale"),
    ("channels_2", _set("model.channels", 2), "model.channels"),
    ("tile_is_list", _set("tile", [24]), "tile"),
    ("schema_wrong", _set("schema", "something-else"), "schema"),
    ("version_9", _set("version", "9.0"), "version"),
    ("version_number", _set("version", 2), "version"),
    ("sha_mismatch", _set("artifact.sha256", "0" * 64), "sha"),
    ("bytes_mismatch", _set("artifact.bytes", 1), "does not match its model card"),
    ("artifact_outside", _set("artifact.file", "../tiny.pt"), ""),
    ("runner_unknown", _set("runner", "tpu"), "runner"),
]


@pytest.mark.parametrize("name,edit,expect", CARD_CASES, ids=[c[0] for c in CARD_CASES])
def test_bad_cards_are_one_line(world, tmp_path, name, edit, expect):
    art = tmp_path / "art"
    shutil.copytree(world["art"], art)
    (art / "model.json").write_text(json.dumps(edit(copy.deepcopy(world["card"]))))
    for command in (["validate", art, "--limit", "1", "--no-reference", "--quiet"], ["profile", art, "--runs", "1"]):
        refused(command, world, tmp_path, expect)


@pytest.mark.parametrize("content", ["", "not json", "[1, 2]", "null", '{"schema": "nsr-edge-model-card"}'])
def test_unreadable_cards_are_one_line(world, tmp_path, content):
    art = tmp_path / "art"
    shutil.copytree(world["art"], art)
    (art / "model.json").write_text(content)
    refused(["validate", art, "--no-reference", "--quiet"], world, tmp_path, "model")


@pytest.mark.parametrize("case", ["no_folder", "no_card", "artifact_deleted", "artifact_truncated", "file_not_folder"])
def test_broken_artifact_folders_are_one_line(world, tmp_path, case):
    art = tmp_path / "art"
    shutil.copytree(world["art"], art)
    if case == "no_folder":
        shutil.rmtree(art)
    elif case == "no_card":
        (art / "model.json").unlink()
    elif case == "artifact_deleted":
        (art / "model.onnx").unlink()
    elif case == "artifact_truncated":
        (art / "model.onnx").write_bytes((art / "model.onnx").read_bytes()[:1000])
    elif case == "file_not_folder":
        shutil.rmtree(art)
        art.write_text("x")
    refused(["validate", art, "--no-reference", "--quiet", "--limit", "1"], world, tmp_path, str(art.name))


# -------------------------------------------------------------------------------------------- --force and output dirs


FORCE_CASES = ["foreign_folder", "card_of_another_schema", "card_not_json", "file_in_place", "symlink_in_place"]


@pytest.mark.parametrize("case", FORCE_CASES)
@pytest.mark.parametrize("command", ["convert", "demo"])
def test_force_replaces_only_what_nsr_edge_wrote(world, tmp_path, case, command):
    out = tmp_path / "victim"
    if case == "file_in_place":
        out.write_text("draft")
    elif case == "symlink_in_place":
        (tmp_path / "real").mkdir()
        (tmp_path / "real" / "thesis.txt").write_text("draft")
        out.symlink_to(tmp_path / "real")
    else:
        out.mkdir()
        (out / "thesis.txt").write_text("draft")
        if case == "card_of_another_schema":
            (out / "model.json").write_text('{"schema": "someone-else"}')
            (out / "results.json").write_text('{"schema": "someone-else"}')
        elif case == "card_not_json":
            (out / "model.json").write_text("{")
            (out / "results.json").write_text("{")
    args = (["convert", "--model", world["ckpt"], "--target", "onnxruntime", "--tile", "24"] if command == "convert"
            else ["demo", "--model", world["ckpt"], "--tile", "24"])
    line = refused([*args, "--out", out, "--force"], world, tmp_path, "victim")
    assert "written by nsr-edge" in line or "not a folder" in line, line


def test_force_replaces_an_artifact_folder_nsr_edge_wrote(world, tmp_path):
    out = tmp_path / "art"
    shutil.copytree(world["art"], out)
    (tmp_path / ".art.p999999999-dead.tmp").mkdir()  # a conversion killed halfway, by a process long gone
    r = run_cli("convert", "--model", world["ckpt"], "--target", "onnxruntime", "--tile", "32", "--out", out,
                "--force", "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "model.json").read_text())["tile"]["tile"] == 32
    assert "interrupted write" in r.stderr and not temp_files(tmp_path)


def test_non_empty_folder_without_force_is_kept(world, tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "mine.txt").write_text("x")
    refused(["convert", "--model", world["ckpt"], "--out", keep], world, tmp_path, "--force")


@pytest.mark.parametrize("leftover", [".out.png.abc123.tmp", ".out.png.p999999999-abc.tmp"])
def test_leftovers_of_interrupted_image_writes_are_removed(world, tmp_path, leftover):
    (tmp_path / leftover).write_bytes(b"half an image")
    r = run_cli("upscale", world["img"], tmp_path / "out.png", "--model", world["ckpt"], "--tile", "24")
    assert r.returncode == 0, r.stderr
    assert "interrupted write" in r.stderr and not temp_files(tmp_path)


def test_a_write_in_progress_of_a_live_process_is_left_alone(world, tmp_path):
    live = tmp_path / f".out.png.p{os.getppid()}-abc.tmp"
    live.write_bytes(b"being written")
    r = run_cli("upscale", world["img"], tmp_path / "out.png", "--model", world["ckpt"], "--tile", "24")
    assert r.returncode == 0, r.stderr
    assert live.exists()


# ------------------------------------------------------------------------------------- read-only and full file systems


@pytest.fixture
def small_fs(tmp_path):
    """(read-only folder, 64 KiB tmpfs): real mounts when allowed (root in a container), else skipped; as a
    non-root user a chmod 555 folder stands in for the read-only one."""
    ro, tiny = tmp_path / "ro", tmp_path / "tiny"
    ro.mkdir()
    tiny.mkdir()
    mounted = []
    if os.geteuid() != 0:
        ro.chmod(0o555)
        yield ro, None
        ro.chmod(0o755)
        return
    for folder, opts in ((ro, "ro,size=64k"), (tiny, "size=64k")):
        if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], capture_output=True).returncode:
            for m in mounted:
                subprocess.run(["umount", str(m)])
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(folder)
    yield ro, tiny
    for m in mounted:
        subprocess.run(["umount", str(m)])


@pytest.mark.parametrize("command", ["convert", "upscale", "import-checkpoint", "train", "demo"])
def test_read_only_output_is_refused_before_any_work(world, small_fs, command, tmp_path):
    ro, _ = small_fs
    args = {"convert": ["convert", "--model", world["ckpt"], "--tile", "24", "--out", ro / "a"],
            "upscale": ["upscale", world["img"], ro / "o.png", "--model", world["ckpt"]],
            "import-checkpoint": ["import-checkpoint", world["ckpt"], "--out", ro / "o.pt"],
            "train": ["train", "--out", ro / "run", "--steps", "1"],
            "demo": ["demo", "--model", world["ckpt"], "--out", ro / "d"]}[command]
    line = one_line_error(run_cli(*args))
    assert "cannot write" in line, line
    assert not any(ro.iterdir())


def test_full_disk_is_refused_before_conversion(world, small_fs):
    _, tiny = small_fs
    if tiny is None:
        pytest.skip("needs a small tmpfs")
    line = one_line_error(run_cli("convert", "--model", world["ckpt"], "--tile", "24", "--out", tiny / "a"))
    assert "MiB free" in line, line
    assert not any(tiny.iterdir())


# ---------------------------------------------------------------------------------------------------- training runs


@pytest.fixture
def set5_training(monkeypatch):
    from nsr_edge.runtime import datasets

    real = datasets.list_eval_images
    monkeypatch.setattr(datasets, "list_eval_images",
                        lambda name, scale=None, data_dir=None: real("set5", 2, data_dir) if name == "tiny_train"
                        else real(name, scale, data_dir))


def _tiny_train(steps: int = 4, dataset: str = "tiny_train"):
    from nsr_edge.train import TrainConfig

    return TrainConfig(task=TaskSpec("sr", scale=2), model=TINY, dataset=dataset, steps=steps, batch_size=2,
                       patch_size=16, checkpoint_every=2, log_every=1, threads=1)


def test_failed_train_leaves_no_dead_run_folder(tmp_path, set5_training, monkeypatch):
    import nsr_edge.train as train_mod
    from nsr_edge.errors import UserError

    def nan_loss(self, step):
        x, y = real(self, step)
        return x * float("nan"), y

    real = train_mod.PatchSampler.__call__
    monkeypatch.setattr(train_mod.PatchSampler, "__call__", nan_loss)
    with pytest.raises(UserError, match="loss became nan"):
        train_mod.train(_tiny_train(), tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="unknown dataset"):
        train_mod.train(_tiny_train(dataset="nope"), tmp_path / "run2", show_progress=False)
    assert not (tmp_path / "run2").exists()


def test_a_run_killed_before_its_first_checkpoint_is_reused(tmp_path, set5_training):
    from nsr_edge.train import train

    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    (run / ".last.pt.abcd.tmp").write_bytes(b"half a checkpoint")
    train(_tiny_train(steps=2), run, show_progress=False)
    assert sorted(p.name for p in run.iterdir()) == ["last.pt", "log.jsonl", "model.pt"]


def test_resumed_run_does_not_repeat_log_steps(tmp_path, set5_training):
    from nsr_edge.checkpoint import load_checkpoint
    from nsr_edge.train import train

    run = tmp_path / "run"
    train(_tiny_train(steps=2), run, show_progress=False)
    ckpt = load_checkpoint(run / "last.pt")
    ckpt.training["train_config"]["steps"] = 4  # as if the run had been killed at step 3, after logging it
    save_checkpoint(ckpt, run / "last.pt", force=True)
    (run / "model.pt").unlink()
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.1}\n{"step": 4, "lo')  # the kill cut the last line
    (run / ".last.pt.zzzz.tmp").write_bytes(b"half")
    train(None, run, resume=True, show_progress=False)
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert not temp_files(run)


def test_train_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    line = one_line_error(run_cli("train", "--out", tmp_path / "run", "--steps", "1", "--dataset", "set5"))
    assert "not empty" in line
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------------------- SIGINT / SIGKILL in a write

_WRITER = """
import sys, time
from pathlib import Path
from nsr_edge.converters.base import atomic_output_dir
with atomic_output_dir(sys.argv[1], False) as tmp:
    (tmp / "model.bin").write_bytes(b"x" * 1000)
    print("writing", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_signal_during_an_artifact_write(world, tmp_path, sig):
    out = tmp_path / "a"
    # a shell that runs the suite in the background starts it with SIGINT ignored, and children inherit that: give
    # the writer the default handling back, as it has when a user presses Ctrl-C in a terminal
    p = subprocess.Popen([sys.executable, "-c", _WRITER, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert p.stdout.readline().strip() == "writing"
    p.send_signal(sig)
    p.wait(timeout=60)
    assert not out.exists()  # never a partial artifact
    if sig == signal.SIGINT:
        assert not temp_files(tmp_path)  # the interrupted writer cleaned up after itself
        return
    assert temp_files(tmp_path)  # SIGKILL: nothing could run; the next run into the same place removes it
    r = run_cli("convert", "--model", world["ckpt"], "--target", "onnxruntime", "--tile", "24", "--out", out, "--quiet")
    assert r.returncode == 0 and "interrupted write" in r.stderr, r.stderr
    assert not temp_files(tmp_path) and (out / "model.json").is_file()
