"""Shared fixtures. Tests that need torch live at the top level; tests/runtime must pass without torch."""

import os
import warnings

os.environ.setdefault("PYTHONHASHSEED", "0")
warnings.filterwarnings("ignore", message=".*has not been tested with coremltools.*")

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/helpers.py (shared test helpers)
