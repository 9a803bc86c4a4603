"""bench/fault_nvml.py's shim, the way faults reach the real NVML on the GPU machine, checked
here against a stub driver library (tests/fakes/stub_nvml.c): the real pynvml and ctypes load
the shim by name, healthy calls reach the library behind it, and each kind of fault the control
file names (an error code, a hang, the library vanishing and coming back) is what pynvml sees.
The GPU suite runs the whole fault matrix through it against the driver
(tests/gpu/test_nvml_faults_gpu.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import fault_nvml  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="the shim is compiled with gcc")

SCRIPT = textwrap.dedent("""
    import os, sys, threading, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    import pynvml
    from fault_nvml import ShimControl, CONTROL_ENV

    control = ShimControl(Path(os.environ[CONTROL_ENV]))

    def code(call):
        try:
            call()
        except pynvml.NVMLError as err:
            return err.value
        return 0

    pynvml.nvmlInit()
    print("healthy", pynvml.nvmlDeviceGetCount(), pynvml.nvmlSystemGetDriverVersion())

    control.fail.update({"nvmlDeviceGetCount": pynvml.NVML_ERROR_GPU_IS_LOST})
    print("failed", code(pynvml.nvmlDeviceGetCount), code(pynvml.nvmlSystemGetDriverVersion))
    control.fail.clear()
    print("healed", pynvml.nvmlDeviceGetCount())

    control.release.clear()
    control.hang_in.update({"nvmlDeviceGetCount"})
    answers = []
    reader = threading.Thread(target=lambda: answers.append(pynvml.nvmlDeviceGetCount()), daemon=True)
    reader.start()
    reader.join(0.5)
    print("hung", reader.is_alive(), answers)
    control.hang_in.clear()
    control.release.set()
    reader.join(5)
    print("released", reader.is_alive(), answers)

    control.vanish()
    print("vanished", code(pynvml.nvmlInit), code(pynvml.nvmlDeviceGetCount))
    control.come_back()
    print("back", code(pynvml.nvmlDeviceGetCount))
    pynvml.nvmlInit()
    print("initialised", pynvml.nvmlDeviceGetCount())
""")


def test_the_shim_forwards_to_the_library_behind_it_and_injects_each_fault(tmp_path):
    stub = tmp_path / "stub" / "libstub-nvml.so"
    stub.parent.mkdir()
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(stub), str(ROOT / "tests/fakes/stub_nvml.c")], check=True)
    shim = fault_nvml.build(tmp_path / "shim")
    env = fault_nvml.environment(shim.parent, tmp_path / "faults", real=str(stub))
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT / "bench")], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines == [
        "healthy 3 0.0.stub",  # through the shim to the library behind it
        "failed 15 0",  # GPU_IS_LOST for the named call only
        "healed 3",
        "hung True []",  # blocks while the line is there...
        "released False [3]",  # ...and calls the library once it is gone
        "vanished 12 1",  # nvmlInit: LIBRARY_NOT_FOUND; the rest: UNINITIALIZED
        "back 1",  # back, but not initialised again yet
        "initialised 3",
    ], out.stdout
