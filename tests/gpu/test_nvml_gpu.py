"""vramtop's NVML numbers against nvidia-smi's, on a real GPU, while a CUDA process holds a
known amount of memory."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vramtop.units import mib

REPO = Path(__file__).resolve().parents[2]
HOLD_GIB = 3


def smi(query: str, kind: str = "gpu") -> list[list[str]]:
    out = subprocess.run(["nvidia-smi", f"--query-{kind}={query}", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout
    return [[cell.strip() for cell in row] for row in csv.reader(io.StringIO(out)) if row]


@pytest.fixture(scope="module")
def holder():
    """A CUDA process holding HOLD_GIB GiB plus its context, idle."""
    code = ("import time, torch\n"
            f"x = torch.empty({HOLD_GIB} << 30, dtype=torch.uint8, device='cuda')\n"
            "torch.cuda.synchronize(); print('READY', flush=True); time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
    time.sleep(0.5)
    yield proc
    proc.kill()
    proc.wait()


def vramtop_json() -> dict:
    out = subprocess.run([sys.executable, "-m", "vramtop", "--once", "--json"], capture_output=True,
                         text=True, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    return json.loads(out)


def test_once_json_equals_nvidia_smi_at_the_same_moment(holder):
    gpu_query = "uuid,memory.total,memory.used,memory.free,memory.reserved"
    for _ in range(5):  # retry until nothing moved while we read (another process may start)
        before = smi(gpu_query), smi("pid,gpu_uuid,used_memory", "compute-apps")
        doc = vramtop_json()
        after = smi(gpu_query), smi("pid,gpu_uuid,used_memory", "compute-apps")
        if before == after:
            break
    else:
        pytest.fail("GPU memory kept changing during the comparison")
    gpus, apps = before
    assert len(doc["gpus"]) == len(gpus)
    for ours, theirs in zip(doc["gpus"], gpus, strict=False):
        uuid, total, used, free, reserved = theirs
        assert ours["uuid"] == uuid
        assert [mib(ours["memory_total"]), mib(ours["memory_used"]), mib(ours["memory_free"]),
                mib(ours["memory_reserved"])] == [int(total), int(used), int(free), int(reserved)]
    ours_apps = sorted((p["pid"], g["uuid"], mib(p["used_memory"])) for g in doc["gpus"] for p in g["processes"])
    theirs_apps = sorted((int(pid), uuid, int(used)) for pid, uuid, used in apps)
    assert ours_apps == theirs_apps
    held = [p for g in doc["gpus"] for p in g["processes"] if p["pid"] == holder.pid]
    assert held and held[0]["used_memory"] >= HOLD_GIB << 30
    assert held[0]["visibility"] == "ok" and "python" in held[0]["command"]


def test_once_text_prints_the_same_mib(holder):
    out = subprocess.run([sys.executable, "-m", "vramtop", "--once"], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    used, total = smi("memory.used,memory.total")[0]
    assert f"used {used} MiB / {total} MiB" in out
    assert str(holder.pid) in out


async def test_the_tui_renders_the_real_process(holder):
    from textual.widgets import DataTable

    from vramtop.sources.nvml import NvmlSource
    from vramtop.ui.app import VramtopApp

    app = VramtopApp(NvmlSource(), interval=0.2)
    async with app.run_test(size=(160, 48)) as pilot:
        deadline = time.monotonic() + 15
        rows: list[str] = []
        while time.monotonic() < deadline:
            await pilot.pause(0.2)
            table = app.query_one(DataTable)
            rows = [" ".join(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)]
            if any(str(holder.pid) in r for r in rows):
                break
        assert any(str(holder.pid) in r for r in rows), rows
        total = smi("memory.total")[0][0]
        assert f"/{total} MiB" in str(app.query_one("#gpus").render())
