"""OOMs that kill the program, on a real GPU: the post-mortem survives, says what kind of OOM it
was and where (the module and the program's line; with --trace, an allocation history that
PyTorch's memory_viz reads), and a process's memory cap is the limit it is measured against.

The programs are bench/oom_scenarios.py: a batch that doubles until a forward pass fails, a
loss kept with its graph every step, a leak under set_per_process_memory_fraction, a known
layer that asks for too much in its forward or its backward. None catches
its OOM: the process ends within milliseconds, as training jobs do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_tui_tmux import SESSION, Tmux
from vramtop.analysis.risk import RiskTracker
from vramtop.sources.agent import AgentSource
from vramtop.sources.monitor import MonitorSource
from vramtop.sources.nvml import NvmlSource

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "bench" / "oom_scenarios.py"


@pytest.fixture
def env(tmp_path):
    run = tmp_path / "xdg"
    run.mkdir(mode=0o700)
    return {**os.environ, "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}", "XDG_RUNTIME_DIR": str(run)}


def record(env, out: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vramtop", "record", "-o", str(out), "-i", "0.5", "--",
                           sys.executable, str(SCENARIOS), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def report(env, path: Path) -> dict:
    result = subprocess.run([sys.executable, "-m", "vramtop", "report", str(path), "--json"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_an_oom_that_kills_the_program_in_forward_is_in_the_recording_and_the_tui(env, tmp_path):
    tmux = Tmux()
    try:
        tmux.start(["env", f"XDG_RUNTIME_DIR={env['XDG_RUNTIME_DIR']}", f"PYTHONPATH={env['PYTHONPATH']}",
                    sys.executable, "-m", "vramtop", "-i", "0.5"], 160, 48, tmp_path / "status")
        out = tmp_path / "doubling.jsonl"
        result = record(env, out, "doubling")
        assert result.returncode == 1 and "OutOfMemoryError" in result.stderr, result.stderr[-2000:]
        pid = int(next(line for line in result.stderr.splitlines() if "post-mortem:" in line)
                  .split("PID ")[1].split(";")[0])
        screen = tmux.wait_for(lambda s: f"out of memory in PID {pid}" in s, "the OOM warning", timeout=30)
        print(screen)
        tmux("send-keys", "-t", SESSION, "W")
        detail = tmux.wait_for(lambda s: "A spike" in s, "the diagnosis in the warning's details", timeout=10)
        print(detail)
        tmux("send-keys", "-t", SESSION, "Escape")
        tmux.wait_for(lambda s: "Esc closes" not in s, "the details to close", timeout=10)
        tmux("send-keys", "-t", SESSION, "q")
        assert tmux.wait_for_exit() == 0
    finally:
        tmux.kill_server()
    data = report(env, out)
    (pm,) = data["postmortems"]
    print("\n".join(pm["lines"]))
    assert pm["pid"] == pid and pm["oom"]["phase"] in ("forward", "loss", "backward")
    # Where: a GPT-2 module (Transformers' names) and the scenario's line that called the model.
    assert pm["oom"]["module"] and pm["where"] and "oom_scenarios.py:" in pm["where"], pm["where"]
    # The batch doubled: the failing step needed about twice the peak of the steps before it.
    assert any(line.startswith("A spike") for line in pm["lines"]), pm["lines"]
    assert pm["oom"]["path"] and Path(pm["oom"]["path"]).parent == Path(env["XDG_RUNTIME_DIR"]) / "vramtop"


def test_a_leak_that_runs_out_of_memory_is_diagnosed_as_a_leak_first(env, tmp_path):
    out = tmp_path / "leak.jsonl"
    result = record(env, out, "leak")
    assert result.returncode == 1 and "OutOfMemoryError" in result.stderr, result.stderr[-2000:]
    data = report(env, out)
    (pm,) = data["postmortems"]
    print("\n".join(pm["lines"]))
    assert pm["lines"][1].startswith("A leak: memory still allocated after each step grew by"), pm["lines"]
    assert any(line.startswith("First thing to do (leak)") for line in pm["lines"])
    assert not any(line.startswith("First thing to try") for line in pm["lines"])
    # The leak grew too fast for the leak rule's 10 s window; the post-mortem names it anyway.
    assert "oom" in {w["kind"] for w in data["warnings"]}


def test_a_capped_process_is_measured_against_its_cap_and_its_leak_warned_in_time(env, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "vramtop", "run", "--", sys.executable, str(SCENARIOS),
                             "capped-leak", "--fraction", "0.1", "--leak-mib", "32", "--pause", "0.1"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    os.environ["XDG_RUNTIME_DIR"] = env["XDG_RUNTIME_DIR"]
    source = MonitorSource(NvmlSource(), AgentSource())
    source.open()
    tracker = RiskTracker()
    first_warned: dict[str, tuple[float, object]] = {}
    oom_warning = None
    limits = set()
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            sample = source.read()
            for agent in sample.agents:
                limits.update(d.memory_limit for d in agent.devices)
            for w in tracker.update(sample):
                if w.level != "info" and w.kind in ("leak", "headroom"):
                    first_warned.setdefault(w.kind, (time.monotonic(), w))
                if w.kind == "oom":
                    oom_warning = w
            if proc.poll() is not None and oom_warning is not None:
                break
            time.sleep(0.5)
        died = time.monotonic()
    finally:
        source.close()
        proc.kill()
    assert proc.returncode == 1
    total = NvmlSource()
    total.open()
    card = total.read().gpus[0].memory_total
    total.close()
    (cap,) = {v for v in limits if v}
    assert cap == pytest.approx(0.1 * card, rel=0.02)  # the cap, not the card
    assert "leak" in first_warned, first_warned
    when, leak = first_warned["leak"]
    print(f"leak warned {died - when:.0f} s before the OOM: {leak.title} | {leak.sentence}")
    assert died - when >= 10
    assert "its cap" in leak.sentence
    # The time to OOM is against the cap: minutes at most, not the hours the whole card would give.
    assert leak.evidence["seconds_to_oom"] < 300
    assert oom_warning is not None and "cap" in oom_warning.sentence, oom_warning


# -- where it happened ----------------------------------------------------------------------


def scenario_line(marker: str) -> int:
    """The line of bench/oom_scenarios.py that holds ``marker``."""
    return next(i for i, line in enumerate(SCENARIOS.read_text().splitlines(), 1) if marker in line)


def run_to_oom(env, mode: str, *options: str) -> dict:
    """``vramtop run [options] -- oom_scenarios.py mode`` until its OOM; the post-mortem file."""
    result = subprocess.run([sys.executable, "-m", "vramtop", "run", *options, "--", sys.executable, str(SCENARIOS),
                             mode], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1 and "OutOfMemoryError" in result.stderr, result.stderr[-2000:]
    (path,) = sorted((Path(env["XDG_RUNTIME_DIR"]) / "vramtop").glob("oom-*.json"))
    document = json.loads(path.read_text())
    print("\n".join(document["summary"]))
    return document


def test_an_oom_in_a_known_layers_forward_names_that_module_and_the_line(env):
    doc = run_to_oom(env, "layer")
    oom = doc["report"]
    assert (oom["module"], oom["module_class"], oom["phase"]) == ("model.layers.2.mlp", "MLP", "forward")
    innermost = oom["frames"][0]
    line = scenario_line("# OOM IN FORWARD")
    assert (Path(innermost["file"]).name, innermost["line"], innermost["function"]) == ("oom_scenarios.py", line,
                                                                                          "forward")
    assert f"in model.layers.2.mlp (MLP, forward) at oom_scenarios.py:{line} in forward()" in doc["summary"][0]


def test_an_oom_in_a_known_layers_backward_names_the_node_and_the_programs_backward_call(env):
    # The autograd engine runs a GPU's backward on a thread of its own: the custom Function's
    # backward is that thread's Python; the program waits in loss.backward() on its own thread.
    doc = run_to_oom(env, "layer-backward")
    oom = doc["report"]
    assert oom["phase"] == "backward" and oom["autograd_node"] == "TooMuchBackward"
    lines = [(Path(f["file"]).name, f["line"]) for f in oom["frames"]]
    assert lines[0] == ("oom_scenarios.py", scenario_line("# OOM IN BACKWARD"))
    assert ("oom_scenarios.py", scenario_line("# THE PROGRAM'S BACKWARD")) in lines
    if oom["module"] is None:
        # Seen on an H200 (torch 2.11) before the walk kept its node wrappers alive: "no parameter
        # reached from the node (7 nodes walked)". Fixed and tested on the CPU
        # (test_the_walk_to_the_nearest_parameter_survives_wrappers_that_reuse_a_freed_id), not yet
        # re-run here: when the module is found, the assertion below holds it to the right one.
        pytest.xfail(f"the module of a CUDA backward is not found yet: {oom.get('place_note')}")
    assert oom["module_near"] and oom["module"] == "model.layers.2.mlp.up", oom


def test_trace_saves_an_allocation_history_that_pytorchs_memory_viz_reads(env):
    import pickle

    import torch.cuda._memory_viz as memory_viz

    doc = run_to_oom(env, "layer", "--trace")
    oom = doc["report"]
    assert oom["trace_note"] is None and oom["trace_path"], oom
    with open(oom["trace_path"], "rb") as f:
        snapshot = pickle.load(f)
    assert {"segments", "device_traces"} <= set(snapshot)
    assert "<html" in memory_viz.trace_plot(snapshot).lower()  # what `_memory_viz trace_plot FILE` writes
    assert memory_viz.segsum(snapshot)
    # The largest live blocks are named by the program's lines that allocated them (AdamW's
    # state, allocated in oom_scenarios.py's optimizer.step(): the history is turned on on the
    # training thread at the model's first call, after its parameters were allocated).
    assert oom["largest_allocations"] and any(
        Path(f["file"]).name == "oom_scenarios.py" for a in oom["largest_allocations"] for f in a["frames"])
    assert any(line.startswith(f"Allocation history saved: {oom['trace_path']}") for line in doc["summary"])
