"""bench/front.py's Pareto front: which (latency, Y-PSNR) points docs/front.md marks as on the front."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("front", Path(__file__).resolve().parent.parent / "bench" / "front.py")
front = importlib.util.module_from_spec(_spec)
sys.modules["front"] = front  # dataclasses look their module up while the file runs
_spec.loader.exec_module(front)


def test_front_keeps_only_points_nothing_beats() -> None:
    pts = [(1.0, 30.0), (2.0, 31.0), (2.5, 30.5), (3.0, 32.0), (4.0, 31.9)]
    # (2.5, 30.5) is slower and worse than (2.0, 31.0); (4.0, 31.9) is slower and worse than (3.0, 32.0)
    assert front.pareto_front(pts) == [0, 1, 3]


def test_ties_and_duplicates() -> None:
    # same latency, better quality dominates; an exact duplicate dominates nothing, so both stay
    assert front.pareto_front([(2.0, 30.0), (2.0, 31.0)]) == [1]
    assert front.pareto_front([(2.0, 31.0), (2.0, 31.0)]) == [0, 1]
    assert front.pareto_front([]) == []


def test_each_artifact_is_its_own_point() -> None:
    # An NSR model's two artifacts share its accuracy but not its latency: the faster one can be on the front while
    # the slower one is dominated by it; a row without latency (not timed) is never on the front.
    acc = {"mean3": 33.0, "int8_set5": {"psnr_y": 36.0}}
    rs = [{"name": "dense_c8", "variant": "et_int8", "lat": {"min_ms": 1.0}, "mean3": 32.5,
           "int8_set5": {"psnr_y": 35.5}},
          {"name": "nsr_k4", "variant": "dispatch_int8", "lat": {"min_ms": 2.4}, **acc},
          {"name": "nsr_k4", "variant": "inprogram_int8", "lat": {"min_ms": 2.0}, **acc},
          {"name": "nsr_k8", "variant": "inprogram_int8", "lat": None, **acc}]
    fronts = front.mark_fronts(rs)
    assert fronts == {"mean3": [0, 2], "int8_set5": [0, 2]}
    assert [r["front_mean3"] for r in rs] == [True, False, True, False]
    assert [r["front_int8_set5"] for r in rs] == [True, False, True, False]
