# Two entry points for a fresh machine (see README): `make demo` and `make test`. Each creates what it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
RUNTIME_VENV := .venv-runtime
PY := $(VENV)/bin/python
RPY := $(RUNTIME_VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)  # Debian packages for test-apps: root installs them directly

DEVICE_FIXTURES := build/device-fixtures

.PHONY: demo test test-full test-runtime test-apps setup setup-runtime device-fixtures device-test-deps arm-emu compile-deps clean-venvs

# The main job on the bundled default model (set-up included).
demo: setup
	$(VENV)/bin/nsr-edge demo --out out/demo --force

# All tests (set-up included): the full toolkit, then runtime/ again in a venv without torch.
test: test-full test-runtime test-apps

# Test files run in parallel, one worker per CPU (at most 4; pytest-xdist): a whole file per worker, so that a
# module's fixtures (converted artifacts) are made once. One worker took ~30 min on a slow 2-core machine.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)

test-full: setup setup-runtime device-test-deps arm-emu compile-deps
	NSR_EDGE_REQUIRE_ARM_EMU=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# ARM emulation for --device arm-emu (docs/arm.md): Debian's qemu-user (with TCG plugin support), debootstrap and gcc,
# then the cached aarch64 root filesystem under ~/.cache/nsr-edge (1.5-3.5 min the first time, ~1 s when ready;
# debootstrap needs root). The ARM tests fail, not skip, when this is missing (NSR_EDGE_REQUIRE_ARM_EMU).
arm-emu: setup
	command -v qemu-aarch64 >/dev/null && command -v debootstrap >/dev/null && command -v gcc >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends qemu-user debootstrap gcc libc6-dev >/dev/null)
	$(SUDO) env HOME="$$HOME" $(PY) -m nsr_edge.devices.arm_rootfs

# `nsr-edge train --compile` (torch.compile's inductor builds C++ on the CPU): Debian's g++ (tests/test_train_eval.py).
compile-deps:
	command -v g++ >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends g++ >/dev/null)

# Debian packages for the --device tests: a real OpenSSH server the tests start on 127.0.0.1 (tests/test_devices_ssh.py,
# which runs the device venv as the remote Python) and the adb client (tests/test_devices_adb.py).
device-test-deps:
	test -x /usr/sbin/sshd && command -v adb >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends openssh-server openssh-client adb >/dev/null)

# runtime/ in the device venv (no torch), including validate/profile of .tflite and .onnx artifacts against the FP32
# reference outputs convert stored beside them (tests/runtime/test_device_env.py on the device fixtures).
test-runtime: setup-runtime device-fixtures
	NSR_EDGE_EXPECT_NO_TORCH=1 NSR_EDGE_DEVICE_FIXTURES=$(CURDIR)/$(DEVICE_FIXTURES) $(RPY) -m pytest -q -p no:cacheprovider tests/runtime

# Small artifacts for the device venv's tests (nsr_sr_x2 at tile 32: LiteRT and ONNX Runtime, FP32 and INT8, plus
# files the device runtime must refuse), converted with the full venv (~1 min); rebuilt only when what makes them
# changes.
device-fixtures: $(DEVICE_FIXTURES)/.built
$(DEVICE_FIXTURES)/.built: $(VENV)/.installed tests/device_fixtures.py $(wildcard converters/*.py) \
		$(wildcard zoo/nsr_sr_x2/*) runtime/card.py runtime/reference_outputs.py runtime/tiling.py nsr_edge/deploy.py \
		nsr_edge/models.py nsr_edge/layers.py nsr_edge/quant.py
	mkdir -p $(dir $(DEVICE_FIXTURES))
	$(PY) tests/device_fixtures.py $(DEVICE_FIXTURES) >$(DEVICE_FIXTURES).log 2>&1 || (tail -20 $(DEVICE_FIXTURES).log; exit 1)
	touch $@

# The demo apps' tiling cores: the Kotlin one compiles and passes its JUnit tests here (Debian's kotlin 1.3, one
# kotlinc call, ~40 s with the install); the Swift one needs a Swift toolchain (ios_demo/README.md).
test-apps:
	command -v kotlinc >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends kotlin junit4 libandroid-json-java >/dev/null)
	android_demo/tiling-core/run_tests.sh

setup: $(VENV)/.installed
setup-runtime: $(RUNTIME_VENV)/.installed

# Re-installs when pyproject.toml changes. The pins are the stack verified together (shared notes).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[full,test]"
	touch $@

# The device-side environment: what a board or phone-like Linux runs, no torch (a test checks): numpy<2, Pillow,
# tflite-runtime 2.14.0 (LiteRT's older standalone interpreter; it needs numpy<2, so it cannot share the main venv)
# and onnxruntime, plus pytest, hypothesis and jsonschema for the tests. Proves runtime/ needs nothing else.
$(RUNTIME_VENV)/.installed: pyproject.toml Makefile
	test -x $(RPY) || $(PYTHON) -m venv $(RUNTIME_VENV)
	$(RPY) -m pip install -q --disable-pip-version-check "numpy>=1.26,<2" pillow "tflite-runtime==2.14.0" onnxruntime \
		pytest hypothesis jsonschema
	$(RPY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

clean-venvs:
	rm -rf $(VENV) $(RUNTIME_VENV)
