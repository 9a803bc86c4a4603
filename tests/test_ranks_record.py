"""``vramtop record`` on a box running distributed jobs keeps every rank, ``record --pid --job``
keeps one job's ranks, and ``vramtop report`` groups the ranks of each job (text, JSON, HTML):
fake ranks serving through the agent's real socket, FakeNvml as the driver, the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.fakes.fake_ranks import fake_job
from vramtop.recording import read_recording

ROOT = Path(__file__).resolve().parent.parent
GiB = 1 << 30


def vramtop(runtime: Path, pids: list[int], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "FAKE_NVML_PER_GPU": "1",
           "FAKE_NVML_SCALE": ",".join(map(str, pids))}
    env.pop("FAKE_NVML_GROW", None)
    return subprocess.run([sys.executable, "-m", "tests.fakes.run_with_fake_nvml", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def runtime_dir(tmp_path: Path) -> Path:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    return runtime


def test_record_keeps_every_rank_and_report_groups_them(tmp_path):
    runtime = runtime_dir(tmp_path)
    out = tmp_path / "job.jsonl"
    with fake_job(runtime, [62, 62, 62, 68, 62, 63, 62, 62]) as ranks:
        pids = [p.pid for p in ranks]
        done = vramtop(runtime, pids, "record", "-o", str(out), "-i", "0.3", "--duration", "2")
        assert done.returncode == 0, done.stderr
    rec = read_recording(out)
    assert sorted(a.rank for a in rec.samples[-1].agents) == list(range(8))
    assert all(a.launch is not None and a.launch.master == "127.0.0.1:29500" for a in rec.samples[-1].agents)

    text = vramtop(runtime, [], "report", str(out)).stdout
    assert "DISTRIBUTED JOBS" in text and "master 127.0.0.1:29500 · 8 ranks" in text
    assert "closest to OOM: rank 3 (GPU 3, 10735 MiB left at its peak" in text
    assert "peaks spread 6144 MiB (rank 3 highest, max/median 1.10)" in text
    doc = json.loads(vramtop(runtime, [], "report", str(out), "--json").stdout)
    (job,) = doc["jobs"]
    assert (job["closest_rank"], job["highest_rank"], job["peak_spread"]) == (3, 3, 6 * GiB)
    assert [r["pid"] for r in job["ranks"]] == pids and job["ranks"][3]["peak"] == int(68.5 * GiB)
    html_path = tmp_path / "job.html"
    assert vramtop(runtime, [], "report", str(out), "--html", str(html_path)).returncode == 0
    html = html_path.read_text()
    assert "<h2>Distributed jobs</h2>" in html and html.count("◀ closest to OOM") == 1


def test_record_pid_job_keeps_the_ranks_of_that_job_only(tmp_path):
    runtime = runtime_dir(tmp_path)
    with fake_job(runtime, [40, 44]) as first, fake_job(runtime, [50, 50], port=29501, first_gpu=2) as second:
        pids = [p.pid for p in first + second]
        job = tmp_path / "job.jsonl"
        one = tmp_path / "one.jsonl"
        for path, extra in ((job, ["--job"]), (one, [])):
            done = vramtop(runtime, pids, "record", "--pid", str(first[1].pid), *extra, "-o", str(path), "-i", "0.3",
                           "--duration", "1.5")
            assert done.returncode == 0, done.stderr
        whole = json.loads(vramtop(runtime, pids, "--once", "--json").stdout)
    assert sorted(len(j["ranks"]) for j in whole["jobs"]) == [2, 2]  # two jobs on the box
    for sample in read_recording(job).samples[1:]:
        assert sorted(a.pid for a in sample.agents) == [first[0].pid, first[1].pid]
        assert sorted(p.pid for g in sample.gpus for p in g.processes) == [first[0].pid, first[1].pid]
    assert {a.pid for s in read_recording(one).samples for a in s.agents} == {first[1].pid}
    report = json.loads(vramtop(runtime, [], "report", str(job), "--json").stdout)
    assert [[r["rank"] for r in j["ranks"]] for j in report["jobs"]] == [[0, 1]]


def test_job_needs_pid(tmp_path):
    done = vramtop(runtime_dir(tmp_path), [], "record", "--job", "-o", str(tmp_path / "x.jsonl"))
    assert done.returncode != 0 and "--job needs --pid" in done.stderr
