"""bench/monitor_cpu.py, run end to end against the fake NVML with a tiny window (no GPU).

Checks the shape of the JSON and that CPU was measured; never how fast anything is.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "monitor_cpu.py"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs pty and /proc")


def _processes_with(token: str) -> list[int]:
    """PIDs of processes whose environment carries ``token`` (i.e. the benchmark's children)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if token.encode() in f.read():
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_fake_mode_writes_complete_json(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    token = f"BENCH_TEST_{uuid.uuid4().hex}"
    env = dict(os.environ, FAKE_NVML_GROW="1", BENCH_TEST_TOKEN=token)
    fake = shlex.join([sys.executable, "-m", "tests.fakes.run_with_fake_nvml"])
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--vramtop", fake, "--skip-nvitop", "--seconds", "5",
         "--repeats", "1", "--json-out", str(out),
         # The job scenario with a stand-in job (no GPU here): started first, killed after.
         "--job", shlex.join([sys.executable, "-c", "import time; time.sleep(120)"]), "--job-warmup", "0.5"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not _processes_with(token), "a child outlived the benchmark"

    report = json.loads(out.read_text())
    assert report["schema"] == "vramtop.bench.monitor_cpu"
    assert report["version"] == 1
    machine = report["machine"]
    assert machine["cpu_count"] >= 1
    assert machine["python"] and machine["date_utc"]
    assert "gpus" in machine and "nvidia_smi_error" in machine
    assert report["versions"]["vramtop"].startswith("vramtop ")
    assert report["versions"]["nvitop"] is None
    assert any("nvitop skipped" in note for note in report["notes"])
    assert set(report["commands"]) == {"vramtop"}

    cpu = report["cpu"]
    assert [(r["scenario"], r["tool"], r["interval_s"]) for r in cpu] == [
        ("job", "vramtop", 1.0), ("job", "vramtop", 0.2), ("idle", "vramtop", 1.0), ("idle", "vramtop", 0.2)]
    for row in cpu:
        assert row["status"] == "ok", row
        assert row["argv"][-2:] == ["-i", "1" if row["interval_s"] == 1.0 else "0.2"]
        assert row["cpu_s"] > 0
        assert row["cpu_user_s"] >= 0 and row["cpu_sys_s"] >= 0
        assert row["cpu_s"] == pytest.approx(row["cpu_user_s"] + row["cpu_sys_s"], abs=0.002)
        assert row["wall_s"] >= 2.0
        assert row["cpu_pct_of_one_core"] > 0
        assert row["first_frame_s"] > 0
        assert row["tty_bytes"] > 0
        assert row["processes_in_tree"] >= 1

    frame = report["first_frame"]["vramtop"]
    assert frame["ok"] == 1 and len(frame["runs"]) == 1
    assert 0 < frame["min_s"] <= frame["median_s"]
    assert frame["runs"][0]["cpu_to_first_frame_s"] > 0

    once = report["once"]["vramtop"]
    assert once["argv"][-2:] == ["--once", "--json"]
    assert once["ok"] == 1 and 0 < once["min_s"] <= once["median_s"]
    assert "error" not in once["cold"]

    # The same data as Markdown on stdout.
    assert "| vramtop | 1 s |" in done.stdout
    assert "| vramtop | 0.2 s |" in done.stdout
    assert "Time to first frame" in done.stdout and "One-shot" in done.stdout


def test_the_scale_box_is_eight_gpus_of_eight_processes_each_with_an_agents_pid_on_every_gpu():
    # bench/monitor_scale.py's scene (it also checks, before measuring, that the live join puts
    # every agent on its row); here the fake box itself, through the real NVML source.
    from tests.fakes.run_with_fake_nvml import big_box
    from vramtop.sources.nvml import NvmlSource

    agents = [4100 + i for i in range(8)]
    source = NvmlSource(nvml=big_box(agents))  # type: ignore[arg-type]
    source.open()
    sample = source.read()
    assert len(sample.gpus) == 8 and sum(len(g.processes) for g in sample.gpus) == 64
    assert all(len({p.pid for p in g.processes} & set(agents)) == 1 for g in sample.gpus)  # one rank each
