"""`nsr-edge export-app-assets`: it writes, for each app, folders holding exactly the artifact and a card the apps'
tiling cores accept (the typed contract and every field in android_demo/testdata/app_fields.json), and it replaces
only folders nsr-edge wrote. One tiny conversion (ExecuTorch FP32, tile 24) serves the tests; the refusals convert
nothing."""

import json
from pathlib import Path

import pytest
from helpers import one_line_error, run_cli
from nsr_edge.runtime.card import load_card
from test_app_vectors import _present

FIELDS = json.loads((Path(__file__).resolve().parents[1] / "android_demo" / "testdata" / "app_fields.json").read_text())


def _tiny_checkpoint(path: Path, hard: bool = False) -> Path:
    import torch
    from nsr_edge.checkpoint import Checkpoint, save_checkpoint
    from nsr_edge.layers import RoutingConfig
    from nsr_edge.models import ModelConfig, build_model
    from nsr_edge.runtime.tasks import TaskSpec

    routing = RoutingConfig(kind="straight_through") if hard else RoutingConfig()
    cfg = ModelConfig("wdsr_nsr", 2, 3, blocks=1, width=8, width_multiplier=2.0, banks=2, cardinality=1,
                      routing=routing)
    torch.manual_seed(0)
    save_checkpoint(Checkpoint(cfg, build_model(cfg).state_dict(), {"task": TaskSpec("sr", scale=2).to_dict()}), path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    ckpt = _tiny_checkpoint(root / "tiny.pt")
    android = root / "android"
    r = run_cli("export-app-assets", "--model", ckpt, "--app", "android", "--variants", "executorch-fp32",
                "--tile", 24, "--android-dir", android, "--ios-dir", root / "ios", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    return root, ckpt, android


def test_writes_artifact_and_a_card_the_apps_accept(exported):
    root, _, android = exported
    folder = android / "tiny_executorch_fp32"
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.pte"]  # no etrecord, no temporaries
    assert sorted(p.name for p in android.iterdir()) == ["tiny_executorch_fp32"]
    assert not (root / "ios").exists()
    card = load_card(folder)  # the typed contract, artifact size and digest included
    assert (card.runner, card.artifact.file, card.tile["tile"]) == ("executorch", "model.pte", 24)
    data = json.loads((folder / "model.json").read_text())
    optional = {f[:-1] for f in FIELDS if f.endswith("?")}
    for field in FIELDS:
        parts = field.rstrip("?").split(".")
        assert _present(data, parts, lambda key, _p=parts: any(o.split(".")[-1].rstrip("[]{}") == key
                                                                 for o in optional)), field
    assert data["schema"] == "nsr-edge-model-card" and data["version"].split(".")[0] == "2"
    assert data["methods"][0]["input_shape"] == [1, 3, 24, 24] and data["methods"][0]["output_shape"] == [1, 3, 48, 48]
    assert data["tile"]["edge_strips"] is False and data["tile"]["whole_below"] == 0  # what the cores require


def test_refuses_to_replace_without_force_and_anything_it_did_not_write(exported, tmp_path):
    root, ckpt, android = exported
    args = ["export-app-assets", "--model", ckpt, "--app", "android", "--variants", "executorch-fp32", "--tile", 24,
            "--quiet"]
    before = (android / "tiny_executorch_fp32" / "model.json").read_bytes()
    err = one_line_error(run_cli(*args, "--android-dir", android))
    assert "is not empty; pass --force" in err
    assert (android / "tiny_executorch_fp32" / "model.json").read_bytes() == before

    foreign = tmp_path / "android" / "tiny_executorch_fp32"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    err = one_line_error(run_cli(*args, "--android-dir", tmp_path / "android", "--force"))
    assert "not an artifact folder (model.json model card) written by nsr-edge" in err
    assert (foreign / "notes.txt").read_text() == "mine"


def test_refuses_bad_requests_before_converting(exported, tmp_path):
    _, ckpt, _ = exported
    base = ["export-app-assets", "--model", ckpt, "--android-dir", tmp_path / "a", "--ios-dir", tmp_path / "i"]
    assert "for hard-routed models" in one_line_error(run_cli(*base, "--variants", "dispatch-fp32"))
    assert "unknown nope" in one_line_error(run_cli(*base, "--variants", "nope"))
    assert "written twice" in one_line_error(run_cli(*base, "--model", ckpt, "--app", "ios"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "i").exists()
