"""Risk rules, the post-mortem and recordings on real training runs on a real GPU.

Each scenario runs a real program under `vramtop run` and watches it the way the monitor does
(NVML + the agent's socket, the same RiskTracker the TUI uses).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vramtop.analysis.risk import RiskTracker, batch_fit_for
from vramtop.sources.agent import AgentSource
from vramtop.sources.monitor import MonitorSource
from vramtop.sources.nvml import NvmlSource

REPO = Path(__file__).resolve().parents[2]
GiB, MiB = 1 << 30, 1 << 20


@pytest.fixture
def env(tmp_path):
    run = tmp_path / "xdg"
    run.mkdir(mode=0o700)
    return {**os.environ, "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}", "XDG_RUNTIME_DIR": str(run)}


def start(env, *args: str, cwd: Path = REPO, script: str = "train_demo.py") -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "vramtop", "run", "--", sys.executable,
                             str(REPO / "bench" / script), *args],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def watch(env, proc, seconds: float, until=None):
    """Samples and warnings every 0.5 s while ``proc`` runs (at most ``seconds``)."""
    os.environ["XDG_RUNTIME_DIR"] = env["XDG_RUNTIME_DIR"]
    source = MonitorSource(NvmlSource(), AgentSource())
    source.open()
    tracker = RiskTracker()
    seen = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            sample = source.read()
            warnings = tracker.update(sample)
            seen.append((sample, warnings))
            if until is not None and until(sample, warnings):
                break
            time.sleep(0.5)
    finally:
        source.close()
    return seen


def test_a_healthy_run_raises_no_warning(env):
    proc = start(env, "--steps", "400", "--batch", "8")
    try:
        seen = watch(env, proc, 60)
    finally:
        proc.kill()
    assert any(s.agents for s, _ in seen), "the agent was never seen"
    # Silent: not even information (its fragmented cache between steps harms nothing).
    said = {(w.kind, w.level) for _, ws in seen for w in ws}
    assert not said, said


def test_a_leak_is_flagged_with_a_time_to_oom_well_before_the_oom(env):
    proc = start(env, "--steps", "100000", "--batch", "4", "--leak-mib", "96")
    try:
        seen = watch(env, proc, 240, until=lambda s, ws: any(w.kind == "leak" for w in ws))
        flagged = [(s, w) for s, ws in seen for w in ws if w.kind == "leak"]
        assert flagged, "no leak warning before the program ended"
        _, warning = flagged[0]
        assert proc.poll() is None  # flagged while the program still ran, before its OOM
        assert warning.evidence["per_step"] == pytest.approx(96 << 20, rel=0.2)
        assert warning.evidence["seconds_to_oom"] > 10
        print(warning.title, "|", warning.sentence)
    finally:
        proc.kill()


def test_a_real_oom_leaves_a_post_mortem_that_matches_the_state_at_failure(env, tmp_path):
    code = (
        "import json, torch\n"
        "torch.cuda.set_per_process_memory_fraction(0.25)\n"
        "keep = [torch.empty(2 << 30, dtype=torch.uint8, device='cuda') for _ in range(4)]\n"
        "try:\n"
        "    torch.empty(40 << 30, dtype=torch.uint8, device='cuda')\n"
        "except torch.cuda.OutOfMemoryError:\n"
        "    print('STATE', json.dumps({'allocated': torch.cuda.memory_allocated(),\n"
        "                               'reserved': torch.cuda.memory_reserved()}))\n"
    )
    result = subprocess.run([sys.executable, "-m", "vramtop", "run", "--", sys.executable, "-c", code],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout.split("STATE ", 1)[1])
    assert not list(tmp_path.glob("*oom*"))  # nothing in the program's working directory
    (path,) = (Path(env["XDG_RUNTIME_DIR"]) / "vramtop").glob("oom-*.json")
    report = json.loads(path.read_text())["report"]
    assert report["requested"] == 40 << 30 and report["allocated"] == state["allocated"]
    assert report["reserved"] == state["reserved"]
    assert sorted(report["largest_live_blocks"])[-4:] == [2 << 30] * 4
    assert f"post-mortem: {path}" in result.stderr
    # Measured against the process's cap, not the card: the post-mortem says so.
    assert report["device_limit"] < report["device_total"]
    summary = json.loads(path.read_text())["summary"]
    assert "cap (set_per_process_memory_fraction)" in summary[0], summary


def test_a_neighbour_on_the_same_gpu_is_named(env):
    cupy = pytest.importorskip("cupy")
    del cupy
    neighbour = subprocess.Popen([sys.executable, "-c", "import cupy, time; x = cupy.zeros(6 << 30, dtype=cupy.uint8);"
                                  "print('READY', flush=True); time.sleep(300)"], stdout=subprocess.PIPE, text=True)
    proc = start(env, "--steps", "100000", "--batch", "4")
    try:
        assert neighbour.stdout is not None and neighbour.stdout.readline().strip() == "READY"
        seen = watch(env, proc, 60, until=lambda s, ws: any(w.kind == "neighbour" for w in ws))
        named = [w for _, ws in seen for w in ws if w.kind == "neighbour"]
        assert named and named[0].pid == neighbour.pid
    finally:
        proc.kill()
        neighbour.kill()


def test_a_recording_agrees_with_nvidia_smi_sampled_alongside(env, tmp_path):
    out = tmp_path / "run.jsonl"
    rec = subprocess.Popen([sys.executable, "-m", "vramtop", "record", "-o", str(out), "-i", "0.5", "--",
                            sys.executable, str(REPO / "bench" / "train_demo.py"), "--steps", "150", "--batch", "8",
                            "--pause", "0.05"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    smi = []
    while rec.poll() is None:
        row = subprocess.run(["nvidia-smi", "--query-gpu=timestamp,memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True).stdout.splitlines()[0]
        smi.append((time.time(), int(row.split(",")[1])))
        time.sleep(0.5)
    assert rec.returncode == 0
    from vramtop.recording import read_recording
    from vramtop.units import mib

    samples = read_recording(out).samples
    assert any(s.agents for s in samples)
    # Pair each nvidia-smi reading with the recorded sample nearest in time; memory moves during
    # steps, so compare where both saw a steady value (the same MiB twice in a row).
    matched = 0
    for when, used in smi:
        nearest = min(samples, key=lambda s: abs(s.time - when))
        if abs(nearest.time - when) < 0.1:
            matched += mib(nearest.gpus[0].memory_used) == used
    assert matched >= 3, "too few readings at the same moment to compare"


@pytest.mark.parametrize("expandable", [False, True], ids=["default", "expandable_segments"])
def test_fragmentation_is_flagged_and_expandable_segments_remove_it(env, tmp_path, expandable):
    """bench/fragment_demo.py leaves 8 GiB cached in 500 MiB holes under a cap, then asks for 1 GiB."""
    if expandable:
        env = {**env, "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    proc = start(env, cwd=tmp_path, script="fragment_demo.py")
    try:
        seen = watch(env, proc, 90)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    result, state = out.split("RESULT ", 1)[1].split(" ", 1)
    state = json.loads(state)
    assert state["reserved"] - state["allocated"] >= 8 * GiB  # enough in total, in pieces
    frag = [w for _, ws in seen for w in ws if w.kind == "fragmentation"]
    agents = [a for s, _ in seen for a in s.agents]
    assert agents, "the agent was never seen"
    print(f"expandable={expandable}: {result} {state}; fragmentation warnings {len(frag)}")
    if not expandable:
        assert result == "oom"
        assert frag, "no fragmentation warning"
        w = frag[0]
        assert "expandable_segments:True" in w.action
        assert w.evidence["largest_free_block"] == 500 * MiB and w.evidence["fragmentation"] > 0.9
        (path,) = (Path(env["XDG_RUNTIME_DIR"]) / "vramtop").glob("oom-*.json")
        document = json.loads(path.read_text())
        report = document["report"]
        assert report["requested"] == GiB and report["largest_free_block"] == 500 * MiB
        assert document["summary"][1].startswith("Fragmentation:"), document["summary"]
        print(w.title, "|", w.sentence)
    else:
        assert result == "ok"
        assert all(a.expandable_segments is True for a in agents if a.expandable_segments is not None)
        assert any(a.expandable_segments is True for a in agents)
        assert not frag, frag[0].sentence


def test_the_batch_size_estimate_matches_the_largest_batch_that_fits(env):
    """The batch advice's figure (at margin 0) against the real largest batch, found by bisection."""
    batch = 8
    proc = start(env, "--steps", "100000", "--batch", str(batch))

    def settled(sample, _):
        return any(d.census and d.last_step and d.last_step.step >= 20 for a in sample.agents for d in a.devices)

    try:
        seen = watch(env, proc, 120, until=settled)
    finally:
        proc.kill()
        proc.wait()
    sample = seen[-1][0]
    (agent,) = sample.agents
    fit = batch_fit_for(sample, agent, agent.devices[0], margin=0.0)
    assert fit is not None
    predicted = int(batch * fit)
    search = subprocess.run([sys.executable, str(REPO / "bench" / "largest_batch.py"), "--low", str(batch),
                             "--high", "160"], env=env, capture_output=True, text=True, timeout=900)
    assert search.returncode == 0, search.stderr
    real = int(search.stdout.split("LARGEST ")[1])
    print(f"batch {batch}: estimated largest batch {predicted} ({fit:.2f}x), real {real}")
    assert abs(predicted - real) <= 0.15 * real
