"""Latency of an artifact on this machine: median / p90 over warm runs of one tile, with stated threads, per tile and
per megapixel of output, plus the runner process's peak memory. The same for every target (through its runner).

"Per megapixel" counts the output pixels a tile contributes when it tiles a large image: its stride, squared, times
the scale squared (margins and overlaps are overhead that a user pays); ``ms_per_megapixel_tile`` counts the whole
tile output instead.

numpy only: this module runs on a device.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .card import ModelCard, ProfileRecord, artifact_path, method_for_tile, now_utc, tile_spec
from .runners.child import RunnerProcess, open_runner


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    if ms.size == 0:
        raise ValueError("no timed runs")
    return {
        "median_ms": round(float(np.median(ms)), 4),
        "p90_ms": round(float(np.percentile(ms, 90)), 4),
        "mean_ms": round(float(ms.mean()), 4),
        "min_ms": round(float(ms.min()), 4),
        "max_ms": round(float(ms.max()), 4),
    }


def profile_artifact(
    artifact_dir: str, card: ModelCard, threads: int = 1, runs: int = 50, warmup: int = 5,
    etdump: str | None = None, seed: int = 0, in_process: bool = False,
) -> dict[str, Any]:
    """Time ``runs`` executions of the card's ``forward`` on a random tile (after ``warmup``), in a child process
    (``in_process``: in this one, where no child can be started; the peak memory is then this process's).

    With ``etdump`` a second child runs the program with event tracing and writes the ETDump there (timings are
    taken without tracing, so tracing costs do not leak into them).
    """
    path = artifact_path(artifact_dir, card)
    method = method_for_tile(card)
    spec = tile_spec(card)
    scale = card.model.scale
    x = np.random.default_rng(seed).random(method.input_shape, dtype=np.float32)
    with open_runner(card.runner, str(path), method.name, threads, in_process) as proc:
        times = proc.time(x, runs, warmup)
        rss = proc.peak_rss_bytes()
        used_threads = proc.threads
    if etdump is not None:
        with open_runner(card.runner, str(path), method.name, threads, in_process, etdump=etdump) as proc:
            proc.time(x, 3, 1)
            proc.write_etdump()
    stats = latency_stats(times)
    out_h, out_w = method.output_shape[-2:]
    effective = (spec.stride * scale) ** 2
    return {
        "target": card.target, "runner": card.runner, "method": method.name,
        "threads": used_threads, "tile": spec.tile, "input_shape": method.input_shape,
        "runs": runs, "warmup": warmup, **stats,
        "ms_per_megapixel": round(stats["median_ms"] / (effective / 1e6), 3),
        "ms_per_megapixel_tile": round(stats["median_ms"] / (out_h * out_w / 1e6), 3),
        "peak_rss_mb": round(rss / 2**20, 1),
    }


def cpu_model() -> str:
    """The processor's name as the device description gives it (/proc/cpuinfo; platform.processor() is empty on
    Linux): latency figures differ several-fold between CPUs of one architecture (AVX2 vs AVX-512 VNNI)."""
    import platform

    from .device_info import _read, parse_cpuinfo

    return parse_cpuinfo(_read("/proc/cpuinfo") or "", platform.machine())[0]


def machine() -> str:
    """Where a measurement ran, in words: platform, processor, Python."""
    import platform

    return f"{platform.system()} {platform.machine()} ({cpu_model()}), Python {platform.python_version()}"


def profile_record(result: dict[str, Any]) -> ProfileRecord:
    """The card's record of a `profile_artifact` result (one shape for every writer)."""
    main = ("method", "tile", "threads", "runs", "warmup", "median_ms", "p90_ms", "ms_per_megapixel", "peak_rss_mb")
    stats = {k: v for k, v in result.items() if k in ("mean_ms", "min_ms", "max_ms", "ms_per_megapixel_tile")}
    return ProfileRecord(**{k: result[k] for k in main}, machine=machine(), recorded=now_utc(), stats=stats)


def time_interleaved(folders: dict[str, Any], rounds: int, runs: int, warmup: int = 2,
                     seed: int = 0) -> tuple[dict[str, dict[str, float]], tuple[float, ...], tuple[float, ...]]:
    """Latency of several artifacts measured in one interleaved run (the benches' method on a shared machine):
    one runner process per artifact, all loaded at once, 1 thread; each round times every artifact ``runs`` times,
    the order reversed every other round, so load changes hit all alike. Returns name -> {median_ms, min_ms, n}
    and the load averages before and after."""
    import os

    from .card import load_card

    procs: dict[str, RunnerProcess] = {}
    try:
        for name, folder in folders.items():
            card = load_card(folder)
            procs[name] = RunnerProcess(card.runner, str(artifact_path(folder, card)), method_for_tile(card).name, 1)
        x = {n: np.random.default_rng(seed).random(p.input_shape, dtype=np.float32) for n, p in procs.items()}
        times: dict[str, list[float]] = {n: [] for n in procs}
        for n, p in procs.items():
            p.time(x[n], warmup, warmup)
        before = os.getloadavg()
        for r in range(rounds):
            for n in (list(procs) if r % 2 == 0 else list(reversed(procs))):
                times[n] += procs[n].time(x[n], runs, 1)
        after = os.getloadavg()
    finally:
        for p in procs.values():
            p.close()
    lat = {n: {"median_ms": 1e3 * float(np.median(t)), "min_ms": 1e3 * min(t), "n": len(t)} for n, t in times.items()}
    return lat, before, after


__all__ = ["latency_stats", "profile_artifact", "cpu_model", "machine", "profile_record", "time_interleaved"]
