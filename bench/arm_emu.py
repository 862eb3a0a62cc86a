"""The zoo x2 model on the real ARM kernels of each runtime under qemu-user (``--device arm-emu``): ARM vs x86
outputs and instruction counts per tile on emulated Cortex cores. Writes docs/arm.md.

    .venv/bin/python bench/arm_emu.py [--cpus cortex-a76 cortex-a53] [--parts numerics counts] [--only SUBSTR ...]

- numerics: ``nsr_sr_x2`` (and ``nsr_sr_x2_hard`` dispatch) at a 32 px tile, each artifact's stored reference tiles
  (``reference.npz``: real Set5 tiles + FP32 PyTorch outputs) run on the emulated core and on this machine: ARM vs
  x86 bit-exact or max-abs / values that differ / Y-PSNR, and each vs FP32 PyTorch (`arm_emu.validate_on_arm`).
- counts: guest instructions per 64 px tile (the deploy tile) of the inference call, by class, for FP32 and INT8,
  soft NSR, hard dispatch and the dense baselines of equal params and equal MACs (`arm_emu.count_instructions`).
  Instructions, not time: no latency is derived (issue 13 item 6 needs a published calibration; see the doc).

Resumable: artifacts are converted once into ``--work`` (``out/arm_emu/<tile>/<variant>``; the 64 px ones are copied
from ``out/bench_runtimes`` where that bench made them), each result is cached in ``--work/results.json`` keyed by
part, variant and CPU (delete an entry to measure it again); the doc is rewritten from the cache after every result.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.artifact_cache import is_current  # noqa: E402
from nsr_edge.devices import arm_rootfs
from nsr_edge.devices.arm_emu import count_instructions, qemu_version, validate_on_arm

# name: (model, target, recipe, strategy)
NUMERICS = {
    "nsr LiteRT INT8": ("nsr_sr_x2", "litert", "int8-ptq", "output-mix"),
    "nsr ORT INT8": ("nsr_sr_x2", "onnxruntime", "int8-ptq", "output-mix"),
    "nsr LiteRT FP32": ("nsr_sr_x2", "litert", "fp32", "output-mix"),
    "nsr ORT FP32": ("nsr_sr_x2", "onnxruntime", "fp32", "output-mix"),
    "hard LiteRT dispatch INT8": ("nsr_sr_x2_hard", "litert", "int8-ptq", "hard"),
    "nsr ExecuTorch INT8": ("nsr_sr_x2", "executorch", "int8-ptq", "output-mix"),
}
COUNTS = {
    "nsr LiteRT FP32": ("nsr_sr_x2", "litert", "fp32", "output-mix"),
    "nsr LiteRT INT8": ("nsr_sr_x2", "litert", "int8-ptq", "output-mix"),
    "hard LiteRT dispatch FP32": ("nsr_sr_x2_hard", "litert", "fp32", "hard"),
    "hard LiteRT dispatch INT8": ("nsr_sr_x2_hard", "litert", "int8-ptq", "hard"),
    "eqparams LiteRT FP32": ("dense_sr_x2_eqparams", "litert", "fp32", "output-mix"),
    "eqparams LiteRT INT8": ("dense_sr_x2_eqparams", "litert", "int8-ptq", "output-mix"),
    "eqmacs LiteRT INT8": ("dense_sr_x2_eqmacs", "litert", "int8-ptq", "output-mix"),
    "nsr ORT FP32": ("nsr_sr_x2", "onnxruntime", "fp32", "output-mix"),
    "nsr ORT INT8": ("nsr_sr_x2", "onnxruntime", "int8-ptq", "output-mix"),
    "nsr ORT FP32 kernel-mix": ("nsr_sr_x2", "onnxruntime", "fp32", "kernel-mix"),
    "eqparams ORT FP32": ("dense_sr_x2_eqparams", "onnxruntime", "fp32", "output-mix"),
    "eqparams ORT INT8": ("dense_sr_x2_eqparams", "onnxruntime", "int8-ptq", "output-mix"),
}
# out/bench_runtimes folder names of the 64 px artifacts (bench/runtimes.py)
BENCH_RUNTIMES = {"litert": "litert", "onnxruntime": "ort"}


def bench_runtimes_name(model: str, target: str, recipe: str, strategy: str) -> str:
    q = "int8" if recipe.startswith("int8") else "fp32"
    t = BENCH_RUNTIMES[target] + ("_dispatch" if strategy == "hard" else "")
    mix = "_kernel_mix" if strategy == "kernel-mix" else ""
    return f"{model}__{t}_{q}{mix}_t64"


def slug(name: str) -> str:
    return name.lower().replace(" ", "_").replace("-", "_")


def artifact(work: Path, name: str, spec: tuple[str, str, str, str], tile: int) -> Path:
    model, target, recipe, strategy = spec
    dest = work / f"t{tile}" / slug(name)
    if is_current(dest):
        return dest
    src = ROOT / "out" / "bench_runtimes" / bench_runtimes_name(model, target, recipe, strategy) if tile == 64 and \
        target in BENCH_RUNTIMES else None
    fixtures = {("litert", "fp32"): "litert-fp32", ("litert", "int8-ptq"): "litert-int8",
                ("onnxruntime", "fp32"): "ort-fp32", ("onnxruntime", "int8-ptq"): "ort-int8"}
    if tile == 32 and model == "nsr_sr_x2" and strategy == "output-mix" and (target, recipe) in fixtures:
        src = ROOT / "build" / "device-fixtures" / fixtures[(target, recipe)]  # tests/device_fixtures.py, tile 32
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src is not None and is_current(src):
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns("set5.json"))
        return dest
    from nsr_edge.converters.pipeline import ConvertOptions, convert

    print(f"converting {name} at tile {tile} ...", flush=True)
    convert(ConvertOptions(model, target, recipe, tile=tile, strategy=strategy, calibration_tiles=16,
                           progress=False), str(dest))
    return dest


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def save(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


# ------------------------------------------------------------------------------------------------------- the doc


def _num(s: dict) -> str:
    if s["bit_exact"]:
        return "**bit-exact**"
    yp = "inf" if s["y_psnr"] is None else f"{s['y_psnr']:.1f}"
    return f"{s['max_abs']:.1e} / {s['differing'] / s['values']:.1%} / {s['differing_8bit'] / s['values']:.2%} / {yp}"


def _yp(s: dict) -> str:
    return "inf" if s["y_psnr"] is None else f"{s['y_psnr']:.2f}"


def write_doc(doc: Path, results: dict, cpus: list[str]) -> None:
    seen = {k.split("|")[1] for part in ("numerics", "counts") for k in results.get(part, {})}
    cpus = [c for c in arm_rootfs.CPUS if c in seen and c not in cpus] + list(cpus)
    cpus = sorted(set(cpus), key=lambda c: ["cortex-a76", "neoverse-n1", "max", "cortex-a72", "cortex-a53"].index(c))
    stamp = arm_rootfs.read_stamp() or {}
    num = results.get("numerics", {})
    cnt = results.get("counts", {})
    lines = [
        "# ARM kernels without a device: numerics and instruction counts under emulation",
        "",
        "Written by `bench/arm_emu.py` (`--device arm-emu[:CPU]`, issue 13). The artifacts run in their real runtimes'",
        "aarch64 builds (the same versions as the toolkit's x86 environment) under `qemu-aarch64` user-mode emulation,",
        "so the ARM kernels (NEON, SDOT/UDOT dot product where the emulated core has it) compute the outputs.",
        "Emulation says **what** an ARM core computes and **how many instructions** it executes, never how long it takes.",
        "",
        "## Set-up",
        "",
        "`python -m nsr_edge.devices.arm_rootfs` (idempotent; `make test` runs it when the root filesystem is absent)",
        "builds `~/.cache/nsr-edge/arm64-rootfs` (`$NSR_EDGE_CACHE`): Debian bookworm arm64 by `debootstrap --foreign`",
        "(download and unpack only), the packages unpacked on the host with `dpkg-deb -x` (no emulated second stage),",
        "the runtimes' aarch64 wheels installed by the host's pip (`--platform manylinux_*_aarch64 --only-binary=:all:`),",
        "the instruction-count plugin compiled with the system gcc, then a smoke import in the guest. A completion stamp",
        "with the hash of everything that went in is written last; a folder without it (an interrupted set-up) or with",
        "another hash is refused in one line and rebuilt by the next set-up, never used.",
        "",
    ]
    if stamp:
        v = stamp.get("versions", {})
        lines += [f"Measured here: **{stamp.get('seconds', 0):.0f} s** to build, **{stamp.get('bytes', 0) / 1e6:.0f} MB** "
                  f"on disk; guest Python {v.get('python')}, numpy {v.get('numpy')}, onnxruntime {v.get('onnxruntime')}, "
                  f"ai-edge-litert {v.get('ai_edge_litert')}" + (f", executorch {v['executorch']}, torch {v['torch']}"
                                                                 if "executorch" in v else "") +
                  f"; {stamp.get('qemu', qemu_version())}. Machine: {platform.machine()}, 2 cores shared with other "
                  "jobs; build time is network- and load-bound: the first build here took 81 s (load ~1), this one "
                  "under a load average of ~7. `make test`'s ARM tests then take ~2.5 min on an idle machine (one "
                  "24 px ORT INT8 conversion, 4 emulated runs).", ""]
    lines += [
        "How it runs: `qemu-aarch64 -cpu CPU -L VIEW ROOTFS/usr/bin/python3.11` (no chroot, no binfmt_misc, no root at",
        "run time). qemu's `-L` redirects only the paths that exist under the prefix, so the root filesystem has no",
        "`/proc`, `/sys`, `/dev`, `/tmp`: the guest sees the host's (`/sys` present: XNNPACK is used), and a per-CPU view",
        "adds an ARM `/proc/cpuinfo` whose Features line is read from the HWCAPs qemu gives that core (an x86 cpuinfo",
        "crashes onnxruntime; claiming the dot product on cortex-a72 would give SIGILL). No child process can start",
        "under qemu-user without binfmt, so the runtime runs in the device process (`device_cli --in-process`).",
        "",
        "## ARM vs x86 outputs (same artifact, same stored tiles)",
        "",
        "`nsr-edge validate ART --device arm-emu:CPU`: the artifact's stored reference tiles (4 real Set5 tiles, 32 px,",
        "with the FP32 PyTorch outputs) run on the emulated core and on this x86 machine. Cells: bit-exact, or",
        "max |diff| / float values that differ / values that differ after 8-bit rounding / Y-PSNR (dB, 8-bit).",
        "",
        "| artifact | CPU | ARM vs x86 | ARM vs FP32 Y-PSNR | x86 vs FP32 Y-PSNR |",
        "|---|---|---|---:|---:|",
    ]
    for name in NUMERICS:
        for cpu in cpus:
            r = num.get(f"{name}|{cpu}")
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {name} | {cpu} | not run: {r['error']} | | |")
                continue
            a = r["arm"]
            lines.append(f"| {name} | {cpu} | {_num(a['arm_vs_host'])} | {_yp(a['arm_vs_fp32'])} | "
                         f"{_yp(a['host_vs_fp32'])} |")
    lines += ["", NOTES_NUMERICS, "", "## Instruction counts per tile (64 px, 1 thread)", "",
              "`nsr-edge profile ART --device arm-emu:CPU`: a qemu TCG plugin (`nsr_edge/devices/qemu_plugin/insn_count.c`)",
              "counts the guest instructions executed between two marker system calls around the inference call only",
              "(input/output conversion outside, as `profile` times it). Here: 1 warm-up call, then 1 tile x 3 calls, median",
              "(`profile --device arm-emu` itself: 2 warm-up calls, 2 tiles x 5 calls). The 64 px artifacts of",
              "`bench/runtimes.py` store no reference tiles, so the tile is seeded noise: the kernels' work does not depend",
              "on the values, and hard dispatch's banks all have one size.",
              "Classes decoded from the A64 encoding: `dot` = SDOT/UDOT, `simd` = other NEON/FP",
              "(loads/stores included), `scalar` = the rest (i8mm and SVE were 0 on these cores). M = 10^6 per tile;",
              "G/MP = 10^9 per output megapixel at the tiling stride.", ""]
    for cpu in cpus:
        rows = [(n, cnt.get(f"{n}|{cpu}")) for n in COUNTS]
        rows = [(n, r) for n, r in rows if r]
        if not rows:
            continue
        lines += [f"### {cpu}", "", "| artifact | M instr / tile | G / MP | scalar | simd | dot | vs FP32 | vs dense eq. params |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for n, r in rows:
            if "error" in r:
                lines.append(f"| {n} | not run: {r['error']} | | | | | | |")
                continue
            ic = r["instruction_count"]
            c = ic["classes"]
            tot = ic["per_tile"]
            fp = cnt.get(f"{n.replace('INT8', 'FP32')}|{cpu}") if "INT8" in n else None
            vs_fp = f"{tot / fp['instruction_count']['per_tile']:.2f}x" if fp and "instruction_count" in fp else ""
            rt, q = ("LiteRT" if "LiteRT" in n else "ORT"), ("INT8" if "INT8" in n else "FP32")
            dense = cnt.get(f"eqparams {rt} {q}|{cpu}")
            vs_d = (f"{tot / dense['instruction_count']['per_tile']:.2f}x" if dense and "instruction_count" in dense
                    and not n.startswith("eqparams") else "")
            lines.append(f"| {n} | {tot / 1e6:.1f} | {ic['per_megapixel'] / 1e9:.2f} | {c['scalar'] / tot:.0%} | "
                         f"{c['simd'] / tot:.0%} | {c['dot'] / tot:.0%} | {vs_fp} | {vs_d} |")
        lines.append("")
    rep = results.get("repeat", {})
    if rep:
        lines += ["Repeatability (same artifact, three separate runs after the table's): " + "; ".join(
            f"{k}: {', '.join(f'{x:,}' for x in v['per_tile'])} instructions per tile (spread {v['spread']:.4%})"
            for k, v in rep.items()) + "; the table's run, from an earlier invocation, differs from them by " + ", ".join(
                f"{abs(cnt[k2]['instruction_count']['per_tile'] - v['per_tile'][0]):,}" for k, v in rep.items()
                for k2 in [k.replace(' cortex', '|cortex')] if k2 in cnt) + " instructions.", ""]
    lines += [NOTES_COUNTS, ""]
    doc.write_text("\n".join(lines))


NOTES_NUMERICS = """Reading (cortex-a76, with dot-product kernels, and cortex-a53, without, show the same differences to x86: the same
max |diff| and the same count of differing values):

- **Integer kernels are bit-exact ARM vs x86.** The hard-dispatch INT8 artifact (`nsr_sr_x2_hard`, LiteRT: only
  int8 convolutions in its programs, routing by argmax on the host) gives identical outputs on the emulated cores and
  on x86, so XNNPACK's QS8 convolution kernels (NEON / dot product on ARM, AVX2 on x86) agree to the bit.
- **Float kernels differ in the last bits.** The FP32 artifacts differ by at most 2-4e-7 (a few ULPs; no 8-bit output
  value changes), what different vector widths, summation orders and fused multiply-adds in the float convolutions
  and the routing heads' softmax/exp lead one to expect (not traced kernel by kernel). ONNX Runtime's integer
  kernels were not isolated (its INT8 artifacts keep float parts); they are covered only by the soft-routed row.
- **Soft-routed INT8 artifacts inherit that float noise.** Their routing heads, softmax and mixing stay float between
  the int8 convolutions (the recipe's `fp32_parts`); an ULP-level float difference that lands on an int8 rounding
  boundary moves one quantized activation by 1 LSB, which then propagates (our reading of the numbers, not traced op
  by op): 0.5-1.1% of the 8-bit output values move by one level (max |diff| 2.6e-3 LiteRT, 3.2e-3 ORT, below one
  8-bit level), Y-PSNR ARM vs x86 72-76 dB, and the distance to FP32 PyTorch is the same on both (Y-PSNR within
  0.01 dB). Deploy these on ARM with the same accuracy; for
  bit-identical outputs across CPUs, hard dispatch (integer-only programs) is the form that gives them.
- ExecuTorch: not measured under emulation. Its Python runtime links libtorch, and PyPI's aarch64 torch 2.13.0
  depends on CUDA wheels (`nvidia-nccl-cu13`, ...) that have no build for this platform; the CPU-only wheels' index
  (download.pytorch.org) is not reachable from this machine. The same XNNPACK kernels run LiteRT's numbers above."""

NOTES_COUNTS = """Reading:

- **INT8 vs FP32** (cortex-a76, LiteRT): the soft model executes 0.36x the instructions in INT8 (dot-product
  instructions are 45% of them), the dense equal-params model 0.30x; ONNX Runtime's INT8 (its float parts left float
  by the recipe) 0.47x.
- **Hard dispatch vs dense of equal params** (cortex-a76, LiteRT): 0.28x in FP32, 0.66x in INT8; ORT kernel mixing
  (soft routing, exact) 0.30x of the equal-params dense model in FP32. INT8 dispatch gains less because its per-layer
  host loop (numpy quantize/dequantize and routing between the bank programs, counted: it runs on the device too)
  stays: 70% of its instructions are NEON/FP outside the dot-product kernels, and it executes 1.9x the instructions of
  the dense model of equal MACs. The same ordering as the x86 wall-clock bench (docs/dispatch_bench.md: 2.24x faster
  than equal params, equal MACs 1.28x faster still).
- **cortex-a53** (no dot product): INT8 saves much less: 0.73x of FP32 for the soft model, 0.71x for the dense
  equal-params model, 0.88x on ONNX Runtime (without SDOT, which does 16 int8 MACs in one instruction, the int8
  products are widened and accumulated by several NEON instructions). Hard dispatch vs dense equal params: 0.27x (FP32), 0.33x (INT8):
  on a core without dot product the sparse form keeps most of its advantage in INT8 too.
- Kernels follow the core, not only its ISA: XNNPACK picks Cortex-A53-tuned FP32 kernels from the core's MIDR (the
  view's /proc/cpuinfo), 1.5x the instructions of the cortex-a76 ones for the same model, while ONNX Runtime's MLAS
  runs the same FP32 kernels on both cores (identical counts to 0.003%).
- The counts are guest instructions of the real ARM kernels, not time: a dot-product instruction does 16 int8 MACs,
  a NEON FMA 4 fp32 MACs, and cores retire them at different rates (in-order dual-issue A53 vs out-of-order A76), so
  ratios within one CPU and one runtime are the meaningful comparison, not absolute numbers across CPUs.
- **No latency estimate** (issue 13 item 6) is printed: it is allowed only with a published calibration figure of a
  reference network on a named core for the same runtime and kernels, and none was found. TensorFlow Lite's own
  benchmark page (tensorflow.org/lite/performance/benchmarks) lists MobileNet 1.0 224 float/quant on Pixel 2 / Pixel
  XL (Cortex-A73 / Kryo, TFLite 1.x, no XNNPACK) and iPhone 8, nothing for Cortex-A76 or A53 with current
  LiteRT/XNNPACK; mapping those to our kernels would be a guess, so no estimate is given.
- Repeatability: each count is the guest thread that opened the region only (a runtime's helper thread once added
  ~0.4 M instructions to a random call); ASLR is off (`setarch -R`), the run folder name is fixed, PYTHONHASHSEED=0;
  the reported figure is the median of the calls per tile, averaged over the tiles. Separate runs: LiteRT INT8
  identical (above); ONNX Runtime INT8 at 64 px 164,295,229 and 164,299,376 (0.003%; the table's 164,294,694), but
  at a 24 px tile (the test's) 0.003-0.05% apart: ORT's own helper thread is not counted, yet its lock and allocator
  timing reaches the counted thread, which weighs more on a small tile. Single calls within one run vary by up to
  ~0.1%."""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpus", nargs="+", default=["cortex-a76", "cortex-a53"])
    p.add_argument("--parts", nargs="+", default=["numerics", "counts"], choices=["numerics", "counts", "repeat"])
    p.add_argument("--only", nargs="*", default=[])
    p.add_argument("--work", default=str(ROOT / "out" / "arm_emu"))
    p.add_argument("--doc", default=str(ROOT / "docs" / "arm.md"))
    p.add_argument("--doc-only", action="store_true")
    p.add_argument("--runs", type=int, default=3, help="counted calls per tile")
    p.add_argument("--tiles", type=int, default=1, help="tiles counted per artifact")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "results.json"
    results = load(cache)
    doc = Path(args.doc)
    stamp = arm_rootfs.read_stamp() or {}
    has_et = "executorch" in stamp.get("versions", {})

    def wanted(name: str) -> bool:
        return not args.only or any(s in name for s in args.only)

    if not args.doc_only:
        arm_rootfs.ensure_ready()
        for cpu in args.cpus:
            if "numerics" in args.parts:
                for name, spec in NUMERICS.items():
                    key = f"{name}|{cpu}"
                    if not wanted(name) or "error" not in results.get("numerics", {}).get(key, {"error": 1}):
                        continue
                    if spec[1] == "executorch" and not has_et:
                        continue
                    t0 = time.time()
                    try:
                        r = validate_on_arm(artifact(work, name, spec, 32), cpu)
                        r.pop("stored", None)
                    except Exception as e:  # noqa: BLE001 - recorded in the table
                        r = {"error": str(e).splitlines()[0][:200]}
                    r["seconds"] = round(time.time() - t0, 1)
                    results.setdefault("numerics", {})[key] = r
                    save(cache, results)
                    write_doc(doc, results, args.cpus)
                    print(key, json.dumps(r.get("arm", r), default=str)[:300], flush=True)
            if "counts" in args.parts:
                for name, spec in COUNTS.items():
                    key = f"{name}|{cpu}"
                    if not wanted(name) or "error" not in results.get("counts", {}).get(key, {"error": 1}):
                        continue
                    t0 = time.time()
                    try:
                        r = count_instructions(artifact(work, name, spec, 64), cpu, runs=args.runs, tiles=args.tiles,
                                               warmup=1)
                        r.pop("device", None)
                    except Exception as e:  # noqa: BLE001
                        r = {"error": str(e).splitlines()[0][:200]}
                    r["seconds"] = round(time.time() - t0, 1)
                    results.setdefault("counts", {})[key] = r
                    save(cache, results)
                    write_doc(doc, results, args.cpus)
                    print(key, json.dumps(r.get("instruction_count", r), default=str)[:300], flush=True)
        if "repeat" in args.parts:
            name = "nsr LiteRT INT8"
            for cpu in args.cpus[:1]:
                art = artifact(work, name, COUNTS[name], 64)
                runs = [count_instructions(art, cpu, runs=args.runs, tiles=args.tiles, warmup=1)["instruction_count"]
                        for _ in range(3)]
                per = [r["per_tile"] for r in runs]
                results.setdefault("repeat", {})[f"{name} {cpu}"] = {
                    "per_tile": per, "spread": (max(per) - min(per)) / min(per)}
                save(cache, results)
    write_doc(doc, results, args.cpus)
    print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
