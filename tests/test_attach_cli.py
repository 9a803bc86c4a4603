"""`vramtop attach PID` and `vramtop record --pid PID --inject` end to end: the real command in a
real terminal (tmux) or headless, FakeNvml listing the target, a real target started without
vramtop, real injection (see tests/test_attach_inject.py for the target)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.attach_targets import TRAIN, exec_done, procs_fixture, runtime_fixture, start  # noqa: F401 - fixtures
from tests.test_tui_tmux import SESSION, Tmux
from vramtop.errors import EXIT_USAGE

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.machine() != "x86_64",
                                reason="the injector is for Linux on x86_64")

REPO = Path(__file__).resolve().parent.parent


def fake_nvml_env(pid: int, runtime: Path) -> dict[str, str]:
    """The monitor's environment: FakeNvml lists ``pid`` on GPU 0; agents are looked for in ``runtime``."""
    return {**os.environ, "PYTHONPATH": str(REPO), "FAKE_NVML_PIDS": str(pid),
            "XDG_RUNTIME_DIR": str(runtime.parent)}


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_attach_asks_once_then_shows_the_bill_of_a_process_started_without_vramtop(runtime, procs, tmp_path):
    pytest.importorskip("torch")
    proc = start([sys.executable, "-c", TRAIN, "3000", "0.01"])
    procs.append(proc)
    env = fake_nvml_env(proc.pid, runtime)
    command = ["env", *(f"{k}={env[k]}" for k in ("PYTHONPATH", "FAKE_NVML_PIDS", "XDG_RUNTIME_DIR")),
               sys.executable, "-m", "tests.fakes.run_with_fake_nvml", "-i", "0.2", "attach", str(proc.pid)]
    tmux = Tmux()
    try:
        tmux.start(command, 100, 40, tmp_path / "status")
        tmux.wait_for(lambda s: f"start the vramtop agent inside PID {proc.pid}" in s and "[y/N]" in s,
                      "the question")
        tmux("send-keys", "-t", SESSION, "y", "Enter")
        screen = tmux.wait_for(lambda s: "alloc 123 MiB" in s and "Attached late" in s,
                               "the process's bill", timeout=30)
        assert "step" in screen and "torch 2." in screen
        tmux("send-keys", "-t", SESSION, "q")
        assert tmux.wait_for_exit() == 0
    finally:
        tmux.kill_server()
    assert proc.poll() is None  # the job goes on


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_attach_answered_no_shows_nvml_and_how_to_get_the_bill(runtime, procs, tmp_path):
    proc = start([sys.executable, "-c", "import time\nprint('ready', flush=True)\ntime.sleep(60)\n"])
    procs.append(proc)
    env = fake_nvml_env(proc.pid, runtime)
    command = ["env", *(f"{k}={env[k]}" for k in ("PYTHONPATH", "FAKE_NVML_PIDS", "XDG_RUNTIME_DIR")),
               sys.executable, "-m", "tests.fakes.run_with_fake_nvml", "attach", str(proc.pid)]
    tmux = Tmux()
    try:
        tmux.start(command, 120, 30, tmp_path / "status")
        tmux.wait_for(lambda s: "[y/N]" in s, "the question")
        tmux("send-keys", "-t", SESSION, "n", "Enter")
        tmux.wait_for(lambda s: f"No vramtop agent in PID {proc.pid}" in s, "NVML's view with the hint")
        tmux("send-keys", "-t", SESSION, "q")
        assert tmux.wait_for_exit() == 0
    finally:
        tmux.kill_server()
    assert not list(runtime.glob("*.sock")) if runtime.exists() else True  # nothing was started


def test_record_inject_refuses_a_process_that_is_not_python_in_one_line(runtime, tmp_path):
    sleep = subprocess.Popen(["sleep", "30"])
    exec_done(sleep, "sleep")
    try:
        result = subprocess.run([sys.executable, "-m", "tests.fakes.run_with_fake_nvml", "record", "--pid",
                                 str(sleep.pid), "--inject", "-o", str(tmp_path / "r.jsonl")],
                                env=fake_nvml_env(sleep.pid, runtime), capture_output=True, text=True,
                                timeout=60, cwd=REPO)
    finally:
        sleep.kill()
        sleep.wait()
    assert result.returncode == 1
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("vramtop:")]
    assert f"PID {sleep.pid} (sleep) is not a Python process" in line and "without --inject" in line


def test_record_inject_needs_pid():
    result = subprocess.run([sys.executable, "-m", "vramtop", "record", "--inject"], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == EXIT_USAGE and "give --pid" in result.stderr


def test_record_inject_records_the_bill_of_a_running_process(runtime, procs, tmp_path):
    pytest.importorskip("torch")
    proc = start([sys.executable, "-c", TRAIN, "3000", "0.01"])
    procs.append(proc)
    out = tmp_path / "run.jsonl"
    result = subprocess.run([sys.executable, "-m", "tests.fakes.run_with_fake_nvml", "record", "--pid",
                             str(proc.pid), "--inject", "-i", "0.2", "--duration", "5", "-o", str(out)],
                            env=fake_nvml_env(proc.pid, runtime), capture_output=True, text=True, timeout=90,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert f"agent started in PID {proc.pid}" in result.stderr
    assert f"starting the agent in PID {proc.pid} (Python {platform.python_version()}, through ptrace)" in result.stderr
    from vramtop.recording.reader import read_recording

    samples = [s for s in read_recording(out).samples if s.agents]
    assert samples, "no agent sample recorded"
    agent = samples[-1].agents[0]
    assert agent.attached and agent.devices[0].stats.allocated == 123 << 20
    assert proc.poll() is None


def test_bench_attach_step_time_runs_on_the_cpu(runtime, tmp_path):
    """The benchmark's structure, never its speed."""
    pytest.importorskip("torch")
    out = tmp_path / "attach.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "attach_step_time.py"), "--device", "cpu",
                             "--before", "2", "--after", "3", "--settle", "0.5", "--width", "64",
                             "--json-out", str(out)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "XDG_RUNTIME_DIR": str(runtime.parent)})
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["steps"]["before"] > 0 and report["steps"]["after"] > 0
    assert report["median_step_ms"]["before"] > 0 and report["attach_until_serving_s"] > 0
    assert "not a GPU figure" in report["note"]


@pytest.mark.parametrize("command", [["attach"], ["record", "-o", "x.jsonl", "--pid"]])
@pytest.mark.parametrize("pid", ["99999999999999999999", "0", "-5", "abc"])
def test_a_pid_that_is_no_process_id_is_a_usage_error_in_one_line(tmp_path, command, pid):
    # attach once died in OverflowError (psutil.pid_exists) on a number past a pid_t.
    result = subprocess.run([sys.executable, "-m", "vramtop", *command, pid], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "Traceback" not in result.stderr and "not a process ID" in result.stderr
