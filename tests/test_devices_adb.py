"""``--device adb``: no phone or emulator runs here, so the adb command lines are checked as built, the real ``adb``
client answers for a device that is not there, and the native benchmark tools' output parsers read real output of
those tools (copied from their documentation and logs; the source of each sample is named). The shared push / run /
fetch / clean-up logic is the same `run_on_device` that tests/test_devices_ssh.py runs against a real sshd."""

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from helpers import one_line_error, run_cli
from test_devices import shared_ort_artifact

from nsr_edge.devices import DeviceError, DeviceOptions, DeviceRun, parse_device
from nsr_edge.devices.base import remove_command, shell_command
from nsr_edge.devices.native import (
    benchmark_model_argv,
    executor_runner_argv,
    parse_benchmark_model,
    parse_executor_runner,
    run_native,
)

# ----------------------------------------------------------------------------------------------- real tool output

# LiteRT benchmark_model on an Android phone (android_aarch64_benchmark_model, Termux), a user's session log on
# GitHub: the current format ("Inference timings in us: Init: ..., First inference: ..., Warmup (avg): ...,
# Inference (avg): ...", statistics lines with percentiles).
BENCHMARK_MODEL_ANDROID = """INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Min num runs: [1000]
INFO: Min warmup runs: [5]
INFO: Graph: [./models/tiny_muaalem_float32.tflite]
INFO: Signature to run: []
INFO: Loaded model ./models/tiny_muaalem_float32.tflite
INFO: Initialized TensorFlow Lite runtime.
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
VERBOSE: Replacing 2168 out of 2168 node(s) with delegate (TfLiteXNNPackDelegate) node, yielding 1 partitions for subgraph 0.
INFO: The input model file size (MB): 24.6229
INFO: Initialized session in 119.515ms.
INFO: Running benchmark for at least 5 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=9 first=87112 curr=51629 min=51629 max=87112 avg=58147.4 std=11478 p5=51629 median=51962 p95=87112

INFO: Running benchmark for at least 1000 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=1000 first=52162 curr=49785 min=49088 max=686105 avg=63743.2 std=60716 p5=49620 median=51891 p95=68628

INFO: Inference timings in us: Init: 119515, First inference: 87112, Warmup (avg): 58147.4, Inference (avg): 63743.2
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=55.4961 overall=55.4961
"""

# The same log, the INT8 model that failed to prepare.
BENCHMARK_MODEL_FAILED = """INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
VERBOSE: Replacing 2136 out of 2168 node(s) with delegate (TfLiteXNNPackDelegate) node, yielding 65 partitions for subgraph 0.
ERROR: tensorflow/lite/kernels/batch_matmul.cc:353 (lhs_data->type == kTfLiteFloat32 && rhs_data->type == kTfLiteInt8) || lhs_data->type == rhs_data->type was not true.
ERROR: Node number 57 (BATCH_MATMUL) failed to prepare.
ERROR: Failed to allocate tensors!
ERROR: Benchmarking failed.
"""

# tensorflow/lite/tools/benchmark/README.md, the end of its --enable_op_profiling sample (MobileNet v1, an older
# tool: "Average inference timings in us: Warmup: ..., Init: ..., Inference: ...").
BENCHMARK_MODEL_README_PROFILE = """Number of nodes executed: 31
============================== Summary by node type ==============================
\t             [Node type]\t  [count]\t  [avg ms]\t    [avg %]\t    [cdf %]\t  [mem KB]\t[times called]
\t                 CONV_2D\t       15\t     1.406\t    89.270%\t    89.270%\t     0.000\t        0
\t       DEPTHWISE_CONV_2D\t       13\t     0.169\t    10.730%\t   100.000%\t     0.000\t        0
\t                 SOFTMAX\t        1\t     0.000\t     0.000%\t   100.000%\t     0.000\t        0
\t                 RESHAPE\t        1\t     0.000\t     0.000%\t   100.000%\t     0.000\t        0
\t         AVERAGE_POOL_2D\t        1\t     0.000\t     0.000%\t   100.000%\t     0.000\t        0

Timings (microseconds): count=50 first=79449 curr=81350 min=77385 max=88213 avg=79732 std=1929
Memory (bytes): count=0
31 nodes observed


Average inference timings in us: Warmup: 83235, Init: 38467, Inference: 79760.9
"""

# ExecuTorch docs (docs/source/using-executorch-building-from-source.md), executor_runner on MobileNet v2 + XNNPACK.
EXECUTOR_RUNNER_DOCS = """I 00:00:00.043703 executorch:executor_runner.cpp:379] Model executed successfully 1 time(s) in 15.013292 ms.
I 00:00:00.043720 executorch:executor_runner.cpp:383] 1 outputs:
OutputX 0: tensor(sizes=[1, 1000], [
  -0.509859, 0.300644, 0.0953884, 0.147724, 0.231202, 0.338554, 0.206888, -0.0575762, -0.389273, -0.0606864,
  ...,
  0.421219, 0.100447, -0.506771, -0.115824, -0.693017, -0.183262, 0.154781, -0.410684, 0.0119296, 0.449713,
])
"""

# A newer executor_runner (per-iteration and load lines), a captured run of ExecuTorch's add_mul example under Node
# (wasm build; the posix PAL's time stamp is absent there).
EXECUTOR_RUNNER_ITERATIONS = """I executorch:executor_runner.cpp:565] Model file add_mul.pte is loaded.
I executorch:executor_runner.cpp:575] Using method forward
I executorch:executor_runner.cpp:718] Model loaded in 7.85 ms.
I executorch:executor_runner.cpp:880] Iteration 1 of 1: 1.62 ms
I executorch:executor_runner.cpp:889] Model executed successfully 1 time(s) in 1.62 ms.
I executorch:executor_runner.cpp:893] 1 outputs:
OutputX 0: tensor(sizes=[2, 2], [3., 3., 3., 3.])
"""


def test_benchmark_model_current_format():
    r = parse_benchmark_model(BENCHMARK_MODEL_ANDROID)
    assert r["mean_ms"] == pytest.approx(63.7432) and r["init_ms"] == pytest.approx(119.515)
    assert r["first_ms"] == pytest.approx(87.112) and r["warmup_mean_ms"] == pytest.approx(58.1474)
    assert r["runs"] == 1000 and r["median_ms"] == pytest.approx(51.891) and r["p95_ms"] == pytest.approx(68.628)
    assert r["min_ms"] == pytest.approx(49.088) and r["max_ms"] == pytest.approx(686.105)


def test_benchmark_model_older_format_and_per_op_table():
    r = parse_benchmark_model(BENCHMARK_MODEL_README_PROFILE)
    assert r["mean_ms"] == pytest.approx(79.7609) and r["warmup_mean_ms"] == pytest.approx(83.235)
    assert "median_ms" not in r and "runs" not in r  # the profiler's "Timings (microseconds)" line is not the run's
    assert [o["name"] for o in r["per_op"]] == ["CONV_2D", "DEPTHWISE_CONV_2D", "SOFTMAX", "RESHAPE",
                                                "AVERAGE_POOL_2D"]
    assert r["per_op"][0] == {"name": "CONV_2D", "count": 15, "ms": 1.406, "share": pytest.approx(0.8927)}


def test_benchmark_model_failure_is_one_line():
    with pytest.raises(DeviceError) as e:
        parse_benchmark_model(BENCHMARK_MODEL_FAILED)
    assert str(e.value) == "benchmark_model failed: Node number 57 (BATCH_MATMUL) failed to prepare."


def test_executor_runner_formats():
    r = parse_executor_runner(EXECUTOR_RUNNER_DOCS)
    assert (r["executions"], r["mean_ms"]) == (1, pytest.approx(15.013292)) and "median_ms" not in r
    r = parse_executor_runner(EXECUTOR_RUNNER_ITERATIONS)
    assert r["median_ms"] == pytest.approx(1.62) and r["load_ms"] == pytest.approx(7.85) and r["runs"] == 1
    with pytest.raises(DeviceError, match="executor_runner did not finish"):
        parse_executor_runner("I 00:00:00.000639 executorch:executor_runner.cpp:82] Model file add.pte is loaded.\n")


def test_native_tool_command_lines():
    assert executor_runner_argv("/t/executor_runner", "/t/model.pte", 20, 3, 1) == [
        "/t/executor_runner", "--model_path=/t/model.pte", "--num_executions=23", "--cpu_threads=1"]
    assert benchmark_model_argv("/t/benchmark_model", "/t/model.tflite", 50, 5, 4, per_op=True) == [
        "/t/benchmark_model", "--graph=/t/model.tflite", "--num_threads=4", "--num_runs=50", "--warmup_runs=5",
        "--enable_op_profiling=true"]


# ----------------------------------------------------------------------------------------------- adb command lines


def test_adb_command_lines():
    t = parse_device("adb:R58M12ABCDE", DeviceOptions(remote_python="/data/local/tmp/py/bin/python3"))
    assert t.adb("push", "/x/model", "/data/local/tmp/nsr-edge.abc/") == [
        "adb", "-s", "R58M12ABCDE", "push", "/x/model", "/data/local/tmp/nsr-edge.abc/"]
    assert t.shell("mktemp -d /data/local/tmp/nsr-edge.XXXXXX") == [
        "adb", "-s", "R58M12ABCDE", "shell", "mktemp -d /data/local/tmp/nsr-edge.XXXXXX"]
    assert parse_device("adb").adb("pull", "/a", "/b") == ["adb", "pull", "/a", "/b"]  # the only device connected
    d = "/data/local/tmp/nsr-edge.abc"
    line = shell_command(t.python_argv() + ["-m", "nsr_edge.runtime.device_cli", "profile", f"{d}/my art"],
                         {"PYTHONPATH": f"{d}/nsr_edge_runtime.zip"}, pid_file=f"{d}/pid")
    assert line == (f"echo $$ > {d}/pid && env PYTHONPATH={d}/nsr_edge_runtime.zip "
                    f"/data/local/tmp/py/bin/python3 -m nsr_edge.runtime.device_cli profile '{d}/my art' ; exit $?")
    rm = remove_command(d)
    assert rm.endswith(f"rm -rf {d}") and f"grep -qF {d} /proc/$p/cmdline" in rm
    with pytest.raises(DeviceError, match="not a folder nsr-edge made"):
        remove_command("/data/local/tmp")
    with pytest.raises(DeviceError, match="--remote-python is needed"):
        parse_device("adb").python_argv()


@pytest.fixture
def private_adb_server(monkeypatch):
    """The real adb client on a private server port (no device attached); the server is stopped afterwards."""
    if not shutil.which("adb"):
        pytest.fail("adb is not installed: `apt-get install -y adb`")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", port)
    yield
    subprocess.run(["adb", "kill-server"], env={**os.environ, "ANDROID_ADB_SERVER_PORT": port},
                   capture_output=True, timeout=30)


def test_no_such_device_is_one_line(private_adb_server, ort_artifact):
    line = one_line_error(run_cli("validate", ort_artifact, "--device", "adb:NOSUCHDEVICE", "--remote-python",
                                  "python3"))
    assert "Android device NOSUCHDEVICE (adb): no such device connected" in line


# --------------------------------------------------------------------------------- the native path, run for real


@pytest.fixture(scope="module")
def ort_artifact(tmp_path_factory):
    return shared_ort_artifact(tmp_path_factory)


def test_native_runner_refusals(ort_artifact, tmp_path):
    line = one_line_error(run_cli("profile", ort_artifact, "--device", "adb:X", "--runner", tmp_path / "nope"))
    assert "executor_runner (.pte) or benchmark_model (.tflite)" in line and "onnxruntime artifacts" in line
    line = one_line_error(run_cli("profile", ort_artifact, "--device", "adb:X", "--runner", tmp_path / "nope",
                                  "--record"))
    assert "--record" in line


def test_native_path_pushes_runs_parses_and_cleans(tmp_path):
    """`run_native` through `LocalTransport`: the binary and the .tflite are pushed, the binary is made executable
    and run with the tool's flags, its output parsed, the device read from /proc/cpuinfo, the folder removed. No
    benchmark_model can be installed here, so the binary is a script that replays the tool's real Android log above
    and records its arguments: this checks our plumbing, not a device's numbers."""
    import json

    from nsr_edge.runtime.card import load_card

    art = _litert_artifact(tmp_path)
    log = tmp_path / "log.txt"
    log.write_text(BENCHMARK_MODEL_ANDROID)
    args_file = tmp_path / "args.json"
    tool = tmp_path / "benchmark_model"
    tool.write_text(f"#!/bin/sh\npython3 -c 'import json,sys; json.dump(sys.argv[1:], open(\"{args_file}\", \"w\"))' "
                    f"\"$@\"\ncat {log}\n")
    remote = tmp_path / "remote"
    remote.mkdir()
    t = parse_device("local", DeviceOptions(remote_tmp=str(remote)))
    r = run_native(t, art, load_card(art), tool, DeviceRun("profile", threads=2, runs=7, warmup=1))
    assert r["tool"] == "benchmark_model" and r["median_ms"] == pytest.approx(51.891) and r["threads"] == 2
    assert r["device"]["runtime"] == "benchmark_model (native)" and r["device"]["cpu_model"]
    argv = json.loads(args_file.read_text())
    assert argv[0].startswith("--graph=") and argv[0].endswith("/model.tflite") and "--num_runs=7" in argv
    assert list(remote.iterdir()) == []


def _litert_artifact(tmp_path) -> Path:
    from nsr_edge.converters.pipeline import ConvertOptions, convert

    out = tmp_path / "litert"
    convert(ConvertOptions("nsr_sr_x2", target="litert", tile=32, progress=False), str(out))
    return out
