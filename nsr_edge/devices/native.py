"""``profile --runner PATH``: time an artifact with a runtime's own native benchmark binary on the device, for devices
without Python (a stock phone over adb): ExecuTorch's ``executor_runner`` for ``.pte`` files, LiteRT's
``benchmark_model`` for ``.tflite`` files. The binary and the artifact file go to the device's temporary folder
through the same `base.Transport` as the Python runner, the tool runs there, its console output is parsed here, and
the folder is always removed.

The parsers read the tools' real output formats (the sources and samples are quoted beside each parser). They time
the program on the tool's own inputs (ones for ``executor_runner``, random for ``benchmark_model``): a latency,
never a validation (validate needs the Python runner).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from .base import DeviceError, DeviceRun, Transport, last_line

TOOLS = {"executorch": "executor_runner", "litert": "benchmark_model"}

# ---------------------------------------------------------------------------------------------------- executor_runner
# ExecuTorch examples/portable/executor_runner/executor_runner.cpp (pytorch/executorch) logs through ET_LOG:
#   ET_LOG(Info, "Model loaded in %f ms.", ...);
#   ET_LOG(Info, "Iteration %" PRIu32 " of %" PRIu32 ": %f ms", i + 1, FLAGS_num_executions, ...);
#   ET_LOG(Info, "Model executed successfully %" PRIu32 " time(s) in %f ms.", FLAGS_num_executions, ...);
# and the posix PAL (runtime/platform/default/posix.cpp) prefixes each line with
#   "%c %02u:%02u:%02u.%06lu executorch:%s:%zu] %s\n" (level, time since init, file, line, message).
# Older runners print only the "executed successfully" line (no per-iteration or load lines).
_ET_TOTAL = re.compile(r"Model executed successfully (\d+) time\(s\) in ([0-9.]+) ms")
_ET_ITER = re.compile(r"Iteration (\d+) of (\d+): ([0-9.]+) ms")
_ET_LOAD = re.compile(r"Model loaded in ([0-9.]+) ms")
_ET_ERROR = re.compile(r"^[EF] [0-9:.]+ executorch:\S+\] (.*)$|^[EF] executorch:\S+\] (.*)$", re.M)


def executor_runner_argv(binary: str, model: str, runs: int, warmup: int, threads: int) -> list[str]:
    """``executor_runner`` flags (gflags): ``--model_path``, ``--num_executions`` (warm-up runs included: the tool
    has no warm-up flag; they are dropped from the statistics when it prints per-iteration times), ``--cpu_threads``."""
    return [binary, f"--model_path={model}", f"--num_executions={runs + warmup}", f"--cpu_threads={threads}"]


def parse_executor_runner(text: str, warmup: int = 0) -> dict[str, Any]:
    """Timings from ``executor_runner``'s log: ``mean_ms`` over all executions (the tool's total / N), and with
    per-iteration lines (newer runners) ``median_ms``/``p90_ms``/``min_ms``/``max_ms`` over the executions after
    ``warmup``; ``load_ms`` where printed. One line (`DeviceError`) when the run did not succeed."""
    total = _ET_TOTAL.search(text)
    if not total:
        err = _ET_ERROR.search(text)
        raise DeviceError("executor_runner did not finish: " + ((err.group(1) or err.group(2)) if err else
                                                                last_line(text) or "no output"))
    n, total_ms = int(total.group(1)), float(total.group(2))
    out: dict[str, Any] = {"tool": "executor_runner", "executions": n, "total_ms": total_ms,
                           "mean_ms": round(total_ms / n, 4) if n else None}
    iters = [float(m.group(3)) for m in _ET_ITER.finditer(text)]
    timed = iters[warmup:] if len(iters) > warmup else iters
    if timed:
        out.update(_stats(timed))
        out["runs"] = len(timed)
    load = _ET_LOAD.search(text)
    if load:
        out["load_ms"] = float(load.group(1))
    return out


# ---------------------------------------------------------------------------------------------------- benchmark_model
# LiteRT/TFLite tensorflow/lite/tools/benchmark/benchmark_model.cc, BenchmarkLoggingListener::OnBenchmarkEnd:
#   TFLITE_LOG(INFO) << "Inference timings in us: " << "Init: " << init_us << ", " << "First inference: "
#                    << warmup_us.first() << ", " << "Warmup (avg): " << warmup_us.avg() << ", "
#                    << "Inference (avg): " << inference_us.avg();
# older releases (its README's sample): "Average inference timings in us: Warmup: 83235, Init: 38467, Inference:
# 79760.9". Each run phase logs its statistics (tensorflow/core/util/stats_calculator.h, Stat::OutputToStream):
#   "count=1000 first=52162 curr=49785 min=49088 max=686105 avg=63743.2 std=60716 p5=49620 median=51891 p95=68628"
# (percentiles in newer releases only); --enable_op_profiling=true adds tables, among them
#   "============================== Summary by node type =============================="
#   "\t [Node type]\t  [count]\t  [avg ms]\t    [avg %]\t    [cdf %]\t  [mem KB]\t[times called]"
_TFL_NEW = re.compile(r"Inference timings in us: Init: ([0-9.e+]+), First inference: ([0-9.e+]+), "
                      r"Warmup \(avg\): ([0-9.e+]+), Inference \(avg\): ([0-9.e+]+)")
_TFL_OLD = re.compile(r"Average inference timings in us: Warmup: ([0-9.e+]+), Init: ([0-9.e+]+), "
                      r"(?:no stats|Inference): ([0-9.e+]+)")
_TFL_STAT = re.compile(r"^(?:INFO: )?count=(\d+)((?: [a-z0-9]+=[0-9.e+-]+)+)\s*$", re.M)
_TFL_TYPE_HEAD = "Summary by node type"
_TFL_ERROR = re.compile(r"^ERROR: (.*)$", re.M)


def benchmark_model_argv(binary: str, model: str, runs: int, warmup: int, threads: int,
                         per_op: bool = False) -> list[str]:
    """``benchmark_model`` flags: ``--graph``, ``--num_threads``, ``--num_runs``, ``--warmup_runs`` (minimums: the
    tool also runs for at least ``--min_secs``), and ``--enable_op_profiling`` for the per-op tables."""
    argv = [binary, f"--graph={model}", f"--num_threads={threads}", f"--num_runs={runs}", f"--warmup_runs={warmup}"]
    return argv + (["--enable_op_profiling=true"] if per_op else [])


def _stat_fields(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"([a-z0-9]+)=([0-9.e+-]+)", text)}


def parse_benchmark_model(text: str) -> dict[str, Any]:
    """Timings (ms) from ``benchmark_model``'s log: ``mean_ms`` (the tool's inference average), ``init_ms``,
    ``first_ms`` and ``warmup_mean_ms`` where printed, the inference phase's ``runs``/``min_ms``/``max_ms``/``std_ms``
    and, from newer tools, ``median_ms``/``p5_ms``/``p95_ms``; ``per_op`` (node type, count, avg ms, share) with
    ``--enable_op_profiling``. One line (`DeviceError`) when the benchmark failed."""
    new, old = _TFL_NEW.search(text), _TFL_OLD.search(text)
    if not (new or old):
        errs = [e.strip() for e in _TFL_ERROR.findall(text)]
        why = next((e for e in errs if "Node number" in e), errs[0] if errs else last_line(text) or "no output")
        raise DeviceError(f"benchmark_model failed: {why}")
    out: dict[str, Any] = {"tool": "benchmark_model"}
    if new:
        init, first, warm, inf = (float(g) for g in new.groups())
        out.update(init_ms=init / 1e3, first_ms=first / 1e3, warmup_mean_ms=warm / 1e3, mean_ms=round(inf / 1e3, 4))
        end = new.start()
    else:
        warm, init, inf = (float(g) for g in old.groups())
        out.update(init_ms=init / 1e3, warmup_mean_ms=warm / 1e3, mean_ms=round(inf / 1e3, 4))
        end = old.start()
    # the inference phase's statistics: the last stats line before the summary (not the profiler's "Timings" lines)
    stats = [m for m in _TFL_STAT.finditer(text[:end])]
    if stats:
        m = stats[-1]
        f = _stat_fields(m.group(2))
        out["runs"] = int(m.group(1))
        for key, name in (("min", "min_ms"), ("max", "max_ms"), ("std", "std_ms"), ("median", "median_ms"),
                          ("p5", "p5_ms"), ("p95", "p95_ms")):
            if key in f:
                out[name] = round(f[key] / 1e3, 4)
    per_op = parse_node_type_summary(text)
    if per_op:
        out["per_op"] = per_op
    return out


def parse_node_type_summary(text: str) -> list[dict[str, Any]]:
    """The first "Summary by node type" table of ``--enable_op_profiling`` (rows: node type, count, avg ms,
    avg %); empty when absent."""
    i = text.find(_TFL_TYPE_HEAD)
    if i < 0:
        return []
    rows = []
    for line in text[i:].splitlines()[2:]:
        cells = [c.strip() for c in line.strip().split("\t") if c.strip()]
        if len(cells) < 4 or not re.fullmatch(r"\d+", cells[1]):
            break
        rows.append({"name": cells[0], "count": int(cells[1]), "ms": float(cells[2]),
                     "share": float(cells[3].rstrip("%")) / 100})
    return rows


def _stats(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    n = len(s)

    def pct(q: float) -> float:  # linear interpolation, as numpy.percentile
        k = (n - 1) * q
        lo = int(k)
        hi = min(lo + 1, n - 1)
        return s[lo] + (s[hi] - s[lo]) * (k - lo)

    return {"median_ms": round(pct(0.5), 4), "p90_ms": round(pct(0.9), 4), "min_ms": round(s[0], 4),
            "max_ms": round(s[-1], 4)}


# ------------------------------------------------------------------------------------------------------------ the run


def native_tool(card: Any, binary: Path) -> str:
    """Which tool ``binary`` is for this artifact (`TOOLS`), or one line why it cannot time it."""
    tool = TOOLS.get(card.runner)
    if tool is None or card.dispatch is not None:
        what = "hard-dispatch artifacts (several programs driven by a host loop)" if card.dispatch is not None else \
            f"{card.runner} artifacts"
        raise DeviceError(f"--runner times one program with executor_runner (.pte) or benchmark_model (.tflite); "
                          f"{what} need the Python runner (drop --runner, pass --remote-python)")
    if not binary.is_file():
        raise DeviceError(f"--runner {binary}: no such file")
    return tool


def run_native(transport: Transport, artifact_dir: str | Path, card: Any, binary: Path, run: DeviceRun,
               per_op: bool = False) -> dict[str, Any]:
    """Time the artifact's ``forward`` program with ``binary`` on the device; returns the parsed timings plus the
    device (read from its ``/proc/cpuinfo``) and the tool's name. The temporary folder is always removed."""
    from ..runtime.card import artifact_path, method_for_tile

    tool = native_tool(card, Path(binary))
    model = artifact_path(artifact_dir, card)
    remote_dir = None
    try:
        transport.check_shell()  # reachable; no Python needed
        remote_dir = transport.make_temp_dir()
        transport.push(Path(binary), remote_dir)
        transport.push(model, remote_dir)
        exe, remote_model = f"{remote_dir}/{Path(binary).name}", f"{remote_dir}/{model.name}"
        if tool == "executor_runner":
            argv = executor_runner_argv(exe, remote_model, run.runs, run.warmup, run.threads)
        else:
            argv = benchmark_model_argv(exe, remote_model, run.runs, run.warmup, run.threads, per_op)
        proc = transport.run(["sh", "-c", f"chmod +x {shlex.quote(exe)} && exec \"$@\" 2>&1", "sh", *argv],
                             run.timeout, {}, pid_file=f"{remote_dir}/pid")
        text = proc.stdout + proc.stderr
        if proc.returncode != 0 and not (_ET_TOTAL.search(text) or _TFL_NEW.search(text)):
            parse = parse_executor_runner if tool == "executor_runner" else parse_benchmark_model
            try:
                parse(text)
            except DeviceError as e:
                raise DeviceError(f"on {transport.describe()}: {e} (exit code {proc.returncode})") from None
        result = parse_executor_runner(text, run.warmup) if tool == "executor_runner" else parse_benchmark_model(text)
        device = describe_remote(transport, run.threads, tool)
    finally:
        if remote_dir is not None:
            try:
                transport.remove(remote_dir)
            except DeviceError:
                pass
        transport.close()
    method = method_for_tile(card)
    return {"command": "profile", "target": card.target, "runner": card.runner, "method": method.name,
            "tile": card.tile.get("tile"), "threads": run.threads, "warmup": run.warmup,
            "binary": Path(binary).name, **result, "device": device}


def describe_remote(transport: Transport, threads: int, tool: str) -> dict[str, Any]:
    """The device's `DeviceInfo` from its ``uname`` and ``/proc/cpuinfo``, read through the transport (a device
    without Python cannot describe itself)."""
    from ..runtime.device_info import GOVERNOR, describe_from

    sep = "----nsr-edge----"
    script = f"uname -m; uname -sr; cat /proc/cpuinfo; echo {sep}; cat {GOVERNOR} 2>/dev/null; true"
    proc = transport.run(["sh", "-c", script], 60, {})
    head, _, governor = proc.stdout.partition(sep)
    lines = head.splitlines()
    machine, system = (lines + ["", ""])[:2]
    info = describe_from(transport.name, transport.kind, machine.strip(), system.strip(), "\n".join(lines[2:]),
                         governor.strip() or None, runtime=f"{tool} (native)", threads=threads, python="")
    return info.__dict__


__all__ = ["TOOLS", "executor_runner_argv", "parse_executor_runner", "benchmark_model_argv", "parse_benchmark_model",
           "parse_node_type_summary", "native_tool", "run_native", "describe_remote"]
