"""`nsr-edge demo`: the main job (placeholder until written)."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="convert -> validate -> profile the bundled default model; write a report")
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=lambda a: 0)
