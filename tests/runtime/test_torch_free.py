"""runtime/ is what runs on a device: it must import and work without torch (and never import it)."""

import importlib.util
import os
import pkgutil
import subprocess
import sys

import nsr_edge.runtime as runtime_pkg


def test_runtime_modules_never_import_torch():
    modules = [f"nsr_edge.runtime.{m.name}" for m in pkgutil.iter_modules(runtime_pkg.__path__)]
    assert modules, "runtime has no modules"
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = sorted(m for m in ('torch', 'executorch', 'coremltools', 'tensorflow') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"runtime imported {r.stdout.strip()}"


def test_this_environment_lacks_torch_when_it_claims_to():
    if os.environ.get("NSR_EDGE_EXPECT_NO_TORCH") == "1":
        assert importlib.util.find_spec("torch") is None, "the runtime test venv must not have torch"
