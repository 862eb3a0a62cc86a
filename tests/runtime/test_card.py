"""The model card contract (runtime/card.py): typed reading with one-line errors, MAJOR.MINOR versioning, the shipped
JSON Schema derived from the same dataclasses, the field reference in docs/model_card.md, directory digests."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from nsr_edge.runtime import card as C
from nsr_edge.runtime.files import artifact_digest, path_digest

ROOT = Path(__file__).resolve().parents[2]


def minimal_card(**changes) -> dict:
    """A complete, valid card as `convert` writes it (values made up for the test, shapes real)."""
    card = C.ModelCard(
        schema=C.SCHEMA, version=C.VERSION, created="2026-12-01T00:00:00Z",
        model=C.ModelInfo(id="m", arch="wdsr_nsr", task={"name": "sr", "scale": 2, "noise": 0.0, "quality": 0,
                                                          "channels": 3},
                          scale=2, channels=3, config={"arch": "wdsr_nsr"}, params=10,
                          source=C.Source("checkpoint", "m.pt", "0" * 64)),
        target="executorch", runner="executorch",
        artifact=C.ArtifactInfo(file="model.pte", sha256="1" * 64, bytes=3),
        strategy="output-mix", recipe={"name": "fp32"},
        tile={"tile": 32, "pad": 4, "stride": 24, "edge_strips": False, "edge_weight": 1.0, "pad_mode": "reflect",
              "whole_below": 0},
        io=C.IOSpec([C.TensorSpec("input", "NCHW", "float32", [0.0, 1.0], [1, 3, 32, 32])],
                    [C.TensorSpec("output", "NCHW", "float32", [0.0, 1.0], [1, 3, 64, 64])]),
        methods=[C.MethodSpec("forward", [1, 3, 32, 32], [1, 3, 64, 64])],
        delegation=C.Delegation("XNNPACK", {"forward": C.MethodDelegation(3, 3, 1, True)}),
        tools={"python": "3.11"},
    ).to_dict()
    card.update(changes)
    return card


def write(tmp_path: Path, data) -> Path:
    (tmp_path / C.CARD_FILE).write_text(json.dumps(data))
    return tmp_path


def test_shipped_schema_is_the_one_the_dataclasses_give():
    assert json.loads(C.SCHEMA_FILE.read_text()) == C.json_schema(), \
        "regenerate: python -m nsr_edge.runtime.card > runtime/model_card.schema.json"
    jsonschema.Draft202012Validator.check_schema(C.json_schema())


def test_docs_field_reference_is_current():
    doc = (ROOT / "docs" / "model_card.md").read_text()
    assert C.field_reference().strip() in doc, "docs/model_card.md: paste the output of card.field_reference()"


def test_a_valid_card_round_trips_and_passes_the_schema(tmp_path):
    data = minimal_card()
    jsonschema.validate(data, C.json_schema())
    card = C.load_card(write(tmp_path, data))
    assert isinstance(card.artifact, C.ArtifactInfo) and card.methods[0].input_shape == [1, 3, 32, 32]
    assert card.delegation.methods["forward"].fully_delegated and card.to_dict() == data
    assert card.task.scale == 2


def test_newer_minor_is_read_and_its_unknown_fields_survive_a_rewrite(tmp_path):
    data = minimal_card(version=f"{C.MAJOR}.7", from_the_future={"x": 1})
    data["model"]["also_new"] = True
    folder = write(tmp_path, data)
    assert C.load_card(folder).version == f"{C.MAJOR}.7"
    C.record_profile(folder, C.ProfileRecord("forward", 32, 1, 3, 1, 1.0, 1.1, 5.0, 100.0, "here", "now"))
    again = json.loads((folder / C.CARD_FILE).read_text())
    assert again["from_the_future"] == {"x": 1} and again["model"]["also_new"] is True
    assert len(again["profile"]) == 1


@pytest.mark.parametrize("version, message", [
    (f"{C.MAJOR + 1}.0", "upgrade nsr-edge"),
    (f"{C.MAJOR - 1}.3", "convert again"),
    (1, "not MAJOR.MINOR"),
    ("2", "not MAJOR.MINOR"),
])
def test_other_majors_and_malformed_versions_are_refused_in_one_line(tmp_path, version, message):
    with pytest.raises(C.CardError, match=message) as e:
        C.load_card(write(tmp_path, minimal_card(version=version)))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("path, value, message", [
    (("artifact",), "model.pte", "artifact: expected an object, got a string"),
    (("artifact", "file"), None, "artifact.file: expected string, got null"),
    (("model", "scale"), "2", "model.scale: expected integer, got a string"),
    (("model", "channels"), 2, "model.channels: 2 is not one of 1, 3"),
    (("methods",), {}, "methods: expected a list"),
    (("strategy",), "magic", "strategy: 'magic' is not one of"),
    (("io", "inputs", 0, "shape"), [1, "3"], r"io.inputs\[0\].shape\[1\]: expected integer"),
    (("model", "task"), None, "model.task: expected an object, got null"),
    (("methods",), [], "methods: needs at least 1 item"),
    (("io", "outputs"), [], "io.outputs: needs at least 1 item"),
])
def test_a_field_of_the_wrong_type_names_itself_in_one_line(tmp_path, path, value, message):
    data = minimal_card()
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(C.CardError, match=message) as e:
        C.load_card(write(tmp_path, data))
    assert "\n" not in str(e.value)
    with pytest.raises(jsonschema.ValidationError):  # the shipped schema says the same
        jsonschema.validate(data, json.loads(C.SCHEMA_FILE.read_text()))


def test_missing_fields_are_named(tmp_path):
    data = minimal_card()
    del data["io"], data["model"]["source"]
    with pytest.raises(C.CardError, match=r"model.source: missing \(and 1 more\)"):
        C.load_card(write(tmp_path, data))


def test_writer_refuses_a_card_that_breaks_the_schema(tmp_path):
    data = minimal_card()
    data["methods"] = "forward"
    with pytest.raises(C.CardError, match="methods"):
        C.write_card(tmp_path, data)
    assert not (tmp_path / C.CARD_FILE).exists()


def test_validation_records_have_one_shape_and_replace_their_own_dataset(tmp_path):
    folder = write(tmp_path, minimal_card())
    rec = C.ValidationRecord("set5", 5, {"psnr_y": 30.0}, True, "executorch", "t0")
    C.record_validation(folder, rec)
    C.record_validation(folder, C.ValidationRecord("set14", 14, {"psnr_y": 29.0}, True, "executorch", "t1"))
    C.record_validation(folder, C.ValidationRecord("set5", 5, {"psnr_y": 31.0}, False, "executorch", "t2"))
    card = C.load_card(folder)
    assert [(v.dataset, v.summary["psnr_y"]) for v in card.validation] == [("set14", 29.0), ("set5", 31.0)]


def test_directory_digest_is_a_manifest_and_matches_in_memory_and_on_disk(tmp_path):
    files = {"pkg/Manifest.json": b"{}", "pkg/Data/weights/weight.bin": b"\x00" * 10, "pkg/Data/model.mlmodel": b"m"}
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    mem, disk = artifact_digest(files, "pkg"), path_digest(tmp_path / "pkg")
    assert mem == disk and disk["bytes"] == 13 and disk["files"] == 3
    import hashlib

    manifest = "".join(f"{hashlib.sha256(files['pkg/' + rel]).hexdigest()}  {rel}\n"
                       for rel in sorted(["Manifest.json", "Data/weights/weight.bin", "Data/model.mlmodel"]))
    assert disk["sha256"] == hashlib.sha256(manifest.encode()).hexdigest()  # what an app recomputes
    (tmp_path / "pkg" / "Data" / "model.mlmodel").write_bytes(b"M")
    assert path_digest(tmp_path / "pkg")["sha256"] != disk["sha256"]
    assert artifact_digest({"model.pte": b"abc"}, "model.pte") == {
        "sha256": hashlib.sha256(b"abc").hexdigest(), "bytes": 3}


def test_a_directory_artifact_is_verified_against_the_card(tmp_path):
    (tmp_path / "model.mlpackage" / "Data").mkdir(parents=True)
    (tmp_path / "model.mlpackage" / "Data" / "x").write_bytes(b"abc")
    digest = path_digest(tmp_path / "model.mlpackage")
    data = minimal_card(artifact={"file": "model.mlpackage", "kind": "directory", **digest})
    card = C.load_card(write(tmp_path, data))
    assert C.artifact_path(tmp_path, card).is_dir()
    (tmp_path / "model.mlpackage" / "Data" / "y").write_bytes(b"")
    with pytest.raises(C.CardError, match="does not match its model card"):
        C.artifact_path(tmp_path, card)


def test_one_method_naming_rule_for_writers_and_runners():
    assert C.method_name(0, 64, 64) == "forward" and C.method_name(1, 48, 32) == "forward_48x32"
    assert C.method_tile("forward") is None and C.method_tile("forward_48x32") == (48, 32)
    assert C.method_file("model", ".onnx", "forward") == "model.onnx"
    assert C.method_file("model", ".tflite", "forward_48x48") == "model_forward_48x48.tflite"
    for bad in ("main", "forward_", "forward_48", "forward_axb", "../forward"):
        with pytest.raises(C.CardError, match="not an nsr-edge method name"):
            C.method_tile(bad)


def test_cards_name_no_absolute_path(tmp_path):
    prov = {"init_from": "/home/me/runs/x2/model.pt", "dataset": "sr291", "nested": [{"d": "C:\\data\\t.pt"}]}
    assert C.portable(prov) == {"init_from": "model.pt", "dataset": "sr291", "nested": [{"d": "t.pt"}]}
    data = minimal_card()
    data["model"]["provenance"] = {"init_from": "/home/me/runs/x2/model.pt"}
    with pytest.raises(C.CardError, match="absolute path at model.provenance.init_from"):
        C.write_card(tmp_path, data)
    data["model"]["provenance"] = C.portable(data["model"]["provenance"])
    C.write_card(tmp_path, data)
    assert C.load_card(tmp_path).model.provenance == {"init_from": "model.pt"}
