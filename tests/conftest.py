"""Shared fixtures. Tests that need torch live at the top level; tests/runtime must pass without torch."""

import os
import warnings

os.environ.setdefault("PYTHONHASHSEED", "0")
warnings.filterwarnings("ignore", message=".*has not been tested with coremltools.*")

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/helpers.py (shared test helpers)

import json

import pytest

CARDS_CHECKED: list[str] = []  # every model card written during the run, checked against the shipped JSON Schema


@pytest.fixture(scope="session", autouse=True)
def every_written_card_validates():
    """Every model card the tests make nsr-edge write (convert, auto, validate/profile --record, the demo) is checked
    with a real JSON Schema validator against the schema file shipped in the package, as an app would check it."""
    import jsonschema

    from nsr_edge.runtime import card as card_module

    validator = jsonschema.Draft202012Validator(json.loads(card_module.SCHEMA_FILE.read_text()))
    original = card_module.atomic_write_json

    def checked(path, data):
        if Path(path).name == card_module.CARD_FILE:
            errors = sorted(validator.iter_errors(data), key=lambda e: list(e.path))
            assert not errors, f"{path}: written card fails the schema: {errors[0].message} at {list(errors[0].path)}"
            CARDS_CHECKED.append(str(path))
        original(path, data)

    card_module.atomic_write_json = checked
    yield
    card_module.atomic_write_json = original
