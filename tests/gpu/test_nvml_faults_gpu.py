"""The NVML fault matrix against the real driver: the monitor (the real Textual app, the real
pynvml) reads the real libnvidia-ml.so.1 through bench/fault_nvml.py's shim, which injects each
fault beneath pynvml: every NVML error code in every read, a hung read, the library vanishing
mid-run and coming back hung in nvmlInit or the device count, hangs at start-up. Between faults
every call reaches the driver, so each recovery is to the driver's real figures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import nvml_faults as nf  # noqa: E402


@pytest.mark.skipif(shutil.which("gcc") is None, reason="the shim is compiled with gcc")
def test_every_fault_through_the_real_driver_is_shown_and_recovered_from(tmp_path):
    out = tmp_path / "faults.json"
    run = subprocess.run([sys.executable, str(REPO / "bench/nvml_faults.py"), "--real", "--deadline", "1",
                          "--open-deadline", "2", "--json-out", str(out)],
                         capture_output=True, text=True, timeout=900)
    print(run.stdout[-6000:])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    outcomes = {o["name"]: o for o in result["outcomes"]}
    assert len(outcomes) == len(nf.faults())
    for code in nf.CODES:
        o = outcomes[f"{nf.code_name(code)} ({code}) in every read"]
        # The bench checked the driver's own words for the code (it words them with the
        # library loaded; this process has not loaded it).
        assert o["error"] is None and "!" in o["messages"][0], o
        assert o["keys_handled"] and o["recovered_s"] is not None, o
    hung = outcomes["a read hangs (memory info)"]
    assert hung["stale_marked"] == [True] and "driver hung?" in hung["messages"][0], hung
    for name in ("the library vanishes mid-run", "… and comes back hung in nvmlInit",
                 "… and comes back hung in nvmlDeviceGetCount"):
        o = outcomes[name]
        assert o["error"] is None and "driver not found" in o["messages"][0] and all(o["stale_marked"]), o
        assert o["keys_handled"] and o["recovered_s"] is not None, o
    for row in result["startup"]:
        assert row["message"] and row["exit_code"], row
