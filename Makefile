# Two entry points for a fresh machine (see README): `make demo` and `make test`. Each creates what it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
RUNTIME_VENV := .venv-runtime
PY := $(VENV)/bin/python
RPY := $(RUNTIME_VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)  # Debian packages for test-apps: root installs them directly

.PHONY: demo test test-full test-runtime test-apps setup setup-runtime clean-venvs

# The main job on the bundled default model (set-up included).
demo: setup
	$(VENV)/bin/nsr-edge demo --out out/demo --force

# All tests (set-up included): the full toolkit, then runtime/ again in a venv without torch.
test: test-full test-runtime test-apps

test-full: setup
	$(PY) -m pytest -q

test-runtime: setup-runtime
	NSR_EDGE_EXPECT_NO_TORCH=1 $(RPY) -m pytest -q -p no:cacheprovider tests/runtime

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

# The device-side environment: numpy + Pillow (+ pytest, jsonschema for the card tests), no torch. Proves runtime/ needs nothing else.
$(RUNTIME_VENV)/.installed: pyproject.toml
	test -x $(RPY) || $(PYTHON) -m venv $(RUNTIME_VENV)
	$(RPY) -m pip install -q --disable-pip-version-check "numpy>=1.26,<2.4" pillow pytest hypothesis jsonschema
	$(RPY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

clean-venvs:
	rm -rf $(VENV) $(RUNTIME_VENV)
