"""Enabling the agent without code changes: `vramtop run`, VRAMTOP_AGENT=1, and the bootstrap."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vramtop.errors import EXIT_USAGE

REPO = Path(__file__).resolve().parent.parent
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)

REPORT = textwrap.dedent("""
    import sys, os
    agent = sys.modules.get("vramtop.agent")
    print("AGENT", agent is not None and agent.current() is not None)
    print("FROM", getattr(sys.modules.get("vramtop"), "__file__", None))
""")


def vramtop(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vramtop", *args], capture_output=True, text=True,
                          timeout=60, env=env or os.environ.copy(), **kw)


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    d = tmp_path / "xdg"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(d))
    return d / "vramtop"


def test_run_starts_the_agent_in_an_environment_without_vramtop(runtime, tmp_path):
    check = subprocess.run([BASE_PYTHON, "-c", "import vramtop"], capture_output=True, cwd=tmp_path)
    if check.returncode == 0:
        pytest.skip("the base interpreter has vramtop installed")
    result = vramtop("run", "--", BASE_PYTHON, "-c", REPORT, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "AGENT True" in result.stdout
    # Loaded from vramtop's own installation, by file location.
    assert str(REPO / "vramtop") in result.stdout or "site-packages" in result.stdout
    assert "agent enabled" in result.stderr


def test_run_reaches_python_grandchildren_and_keeps_the_exit_code(runtime):
    child = f"import subprocess, sys; sys.exit(subprocess.run([sys.executable, '-c', {REPORT!r}]).returncode + 3)"
    result = vramtop("run", "--", sys.executable, "-c", child)
    assert result.returncode == 3
    assert "AGENT True" in result.stdout


def test_run_chains_to_the_programs_own_sitecustomize(runtime, tmp_path):
    own = tmp_path / "own"
    own.mkdir()
    (own / "sitecustomize.py").write_text("print('OWN SITECUSTOMIZE')\n")
    env = {**os.environ, "PYTHONPATH": str(own)}
    result = vramtop("run", "--", sys.executable, "-c", REPORT, env=env)
    assert "OWN SITECUSTOMIZE" in result.stdout and "AGENT True" in result.stdout


def test_agent_stays_passive_in_a_process_that_never_uses_cuda(runtime):
    result = vramtop("run", "--", sys.executable, "-c", "import time; time.sleep(1.2)")
    assert result.returncode == 0
    assert not runtime.exists() or not list(runtime.glob("*.sock"))


def test_vramtop_agent_env_var_starts_it_through_the_installed_pth_file(runtime):
    env = {**os.environ, "VRAMTOP_AGENT": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, "-c", REPORT], capture_output=True, text=True, env=env, timeout=60)
    assert "AGENT True" in result.stdout, result.stderr
    env["VRAMTOP_AGENT"] = "0"
    result = subprocess.run([sys.executable, "-c", REPORT], capture_output=True, text=True, env=env, timeout=60)
    assert "AGENT False" in result.stdout


def test_run_end_to_end_a_monitor_sees_the_child_once_it_uses_cuda(runtime):
    """The child fakes only CUDA (FakeCudaTorch); the launcher, agent and socket are real."""
    pytest.importorskip("torch")
    program = textwrap.dedent("""
        import sys, time, torch
        from tests.fakes.fake_cuda import FakeCudaTorch
        fake = FakeCudaTorch(torch)
        fake.allocator.set(123 << 20, 256 << 20)
        sys.modules["torch"] = fake
        fake.initialized = True  # as if the program had moved its model to the GPU
        time.sleep(30)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "vramtop", "run", "--agent-interval", "0.05", "--",
                             sys.executable, "-c", program], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    from vramtop.sources.agent import AgentSource

    source = AgentSource(runtime)
    try:
        deadline = time.monotonic() + 20
        samples = ()
        while time.monotonic() < deadline and not samples:
            samples = source.poll()
            time.sleep(0.1)
        assert samples, proc.stderr.read1().decode() if proc.poll() is not None else "no agent seen"
        (sample,) = samples
        assert sample.pid == proc.pid  # `vramtop run` becomes the program: same PID
        assert sample.devices[0].stats.allocated == 123 << 20
    finally:
        source.close()
        proc.kill()
        proc.wait()


def test_run_without_a_command_or_with_an_unknown_one():
    assert vramtop("run").returncode == EXIT_USAGE
    result = vramtop("run", "--", "no-such-program-vramtop")
    assert result.returncode == EXIT_USAGE and "command not found" in result.stderr


def test_record_around_a_command_keeps_its_agent_samples_and_oom_events(runtime, tmp_path):
    """`vramtop record -- CMD`: FakeNvml for the GPU, FakeCudaTorch in the child; the launcher,
    agent, socket, recorder and file are real."""
    pytest.importorskip("torch")
    program = textwrap.dedent("""
        import sys, time, torch
        from tests.fakes.fake_cuda import FakeCudaTorch
        import vramtop.agent as agent
        fake = FakeCudaTorch(torch)
        fake.allocator.set(123 << 20, 256 << 20)
        sys.modules["torch"] = fake
        fake.initialized = True
        deadline = time.time() + 20
        while time.time() < deadline and not (agent.current() and agent.current().active):
            time.sleep(0.05)
        time.sleep(2.5)  # the recorder finds the agent (it rescans every 2 s)
        fake.oom_observers[0](0, 1 << 30, 80 << 30, 1 << 20)  # what torch calls at an OOM
        time.sleep(1.5)
    """)
    out = tmp_path / "run.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO), "VRAMTOP_AGENT_INTERVAL": "0.05"}
    launcher = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
                "runpy.run_module('tests.fakes.run_with_fake_nvml', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", launcher, str(REPO), "record", "-o", str(out),
                             "-i", "0.1", "--", sys.executable, "-c", program], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    from vramtop.recording import read_recording

    recording = read_recording(out)
    with_agent = [s for s in recording.samples if s.agents]
    assert with_agent and with_agent[-1].agents[0].devices[0].stats.allocated == 123 << 20
    ooms = [e for e in recording.events if e.kind == "oom"]
    assert ooms and ooms[0].data["requested"] == 1 << 30
    # Where: the program's line that failed (``python -c`` code is the file "<string>").
    failing = 1 + program.splitlines().index("fake.oom_observers[0](0, 1 << 30, 80 << 30, 1 << 20)  # what torch "
                                             "calls at an OOM")
    assert ooms[0].data["frames"][0] == {"file": "<string>", "line": failing, "function": "<module>",
                                         "library": False}
    # The post-mortem: a file in the agent's private directory (none next to the program), and
    # a report that stays in its samples.
    assert with_agent[-1].agents[0].last_oom is not None
    assert with_agent[-1].agents[0].last_oom.requested == 1 << 30
    assert list(runtime.glob("oom-*.json")) and not list(tmp_path.glob("*oom*.json"))
    assert "post-mortem:" in result.stderr
    # The warning the TUI would have shown is in the file too, with its evidence and action.
    warned = [e for e in recording.events if e.kind == "warning" and e.data["kind"] == "oom"]
    assert warned and warned[0].data["level"] == "critical" and warned[0].pid == ooms[0].pid
    assert warned[0].data["action"] and warned[0].time >= ooms[0].data["time"]  # the sample after the OOM


def test_run_trace_turns_on_the_allocation_history_in_the_agent(runtime):
    pytest.importorskip("torch")
    program = textwrap.dedent("""
        import sys, threading, time, torch
        from tests.fakes.fake_cuda import FakeCudaTorch
        import vramtop.agent as agent
        fake = FakeCudaTorch(torch)
        fake.allocator.set(123 << 20, 256 << 20)
        sys.modules["torch"] = fake
        fake.initialized = True
        deadline = time.time() + 20
        while time.time() < deadline and not (agent.current() and agent.current().active):
            time.sleep(0.05)
        torch.nn.Linear(2, 2)(torch.zeros(1, 2))  # the history starts at the first model call, on this thread
        print("HISTORY", fake.history.calls)
        print("FROM THE PROGRAM'S THREAD", set(fake.history.threads) <= {threading.get_ident()})
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "VRAMTOP_AGENT_TRACE": "9"}
    result = vramtop("run", "--trace", "--trace-entries", "777", "--", sys.executable, "-c", program, env=env)
    assert result.returncode == 0, result.stderr
    assert "HISTORY [{'enabled': 'all', 'context': 'all', 'stacks': 'python', 'max_entries': 777}]" in result.stdout
    assert "FROM THE PROGRAM'S THREAD True" in result.stdout
    assert "allocation history (--trace)" in result.stderr
    # Off by default, even under an outer command's --trace.
    result = vramtop("run", "--", sys.executable, "-c", program, env=env)
    assert "HISTORY []" in result.stdout, result.stderr
    assert vramtop("run", "--trace-entries", "5", "--", sys.executable, "-c", "pass").returncode == EXIT_USAGE


@pytest.mark.parametrize("connected", [True, False], ids=["monitor-connected", "dies-before-the-monitor-connects"])
def test_an_oom_that_kills_the_command_at_once_is_in_the_recording(runtime, tmp_path, connected):
    """An uncaught OOM ends the process within milliseconds of the allocator's observer: the
    post-mortem reaches the recording through the socket (sent from the failing thread) or, when
    no connection carried it, from the file the agent left in its directory."""
    pytest.importorskip("torch")
    program = textwrap.dedent(f"""
        import os, sys, time, torch
        from tests.fakes.fake_cuda import FakeCudaTorch
        import vramtop.agent as agent
        fake = FakeCudaTorch(torch)
        fake.allocator.set(123 << 20, 256 << 20)
        sys.modules["torch"] = fake
        fake.initialized = True
        deadline = time.time() + 20
        while time.time() < deadline and not (agent.current() and agent.current().active):
            time.sleep(0.05)
        time.sleep({2.5 if connected else 0.0})
        fake.oom_observers[0](0, 1 << 30, 80 << 30, 1 << 20)
        os._exit(1)  # as an uncaught OOM: no interpreter shutdown, no last tick
    """)
    out = tmp_path / "run.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO), "VRAMTOP_AGENT_INTERVAL": "0.05"}
    launcher = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
                "runpy.run_module('tests.fakes.run_with_fake_nvml', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", launcher, str(REPO), "record", "-o", str(out),
                             "-i", "0.1", "--", sys.executable, "-c", program], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    from vramtop.recording import read_recording

    recording = read_recording(out)
    ooms = [e for e in recording.events if e.kind == "oom"]
    assert len(ooms) == 1, recording.events
    assert ooms[0].data["requested"] == 1 << 30 and ooms[0].data["allocated"] == 123 << 20
    kinds = [e.kind for e in recording.events]
    assert kinds.index("oom") < kinds.index("command.exited")


def rank_script(tmp_path: Path) -> Path:
    """A program that says, in one write, its rank and whether the agent started in it."""
    script = tmp_path / "rank.py"
    script.write_text(
        "import os, sys\n"
        "agent = sys.modules.get('vramtop.agent')\n"
        "line = f\"RANK {os.environ['RANK']} AGENT {agent is not None and agent.current() is not None}\\n\"\n"
        "os.write(1, line.encode())  # one write: the two ranks share the pipe\n"
    )
    return script


def test_run_reaches_every_torchrun_rank(runtime, tmp_path):
    pytest.importorskip("torch")
    result = vramtop("run", "--", sys.executable, "-m", "torch.distributed.run", "--standalone",
                     "--nproc_per_node", "2", str(rank_script(tmp_path)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "RANK 0 AGENT True" in result.stdout and "RANK 1 AGENT True" in result.stdout


def test_run_reaches_every_accelerate_launch_process(runtime, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("accelerate")
    # --multi_gpu starts one process per rank through torch's elastic launcher; the ranks here
    # never touch CUDA, so it runs on a machine without GPUs too.
    result = vramtop("run", "--", sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                     "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                     "--dynamo_backend", "no", "--main_process_port", str(free_port()),
                     str(rank_script(tmp_path)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "RANK 0 AGENT True" in result.stdout and "RANK 1 AGENT True" in result.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_malformed_agent_events_are_dropped_and_counted_never_raised():
    """Agent input is untrusted: `record` died on these (ValueError/TypeError, rc 1)."""
    from vramtop.model import OomReport
    from vramtop.sources.agent import oom_event, typed_events

    good = oom_event(7, OomReport(time=1.0, device=0, requested=1, device_limit=2, device_free=0, allocated=1,
                                  reserved=1, step=0, phase="forward"))
    bad = [{"type": "event", "kind": "oom", "pid": "", "data": good["data"]},
           {"type": "event", "kind": "oom", "pid": 7, "data": [1, 2]},
           {"type": "event", "kind": "oom", "pid": 7, "data": {"device": "cuda:0"}},
           {"type": "event", "kind": "oom", "pid": True, "data": good["data"]},
           {"type": "event", "kind": "nonsense", "pid": 7}]
    events, dropped = typed_events([*bad, good])
    assert dropped == len(bad) and [(e.pid, e.oom.requested) for e in events] == [(7, 1)]


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "1e9", "abc", ""])
def test_run_refuses_an_agent_interval_the_agent_could_not_keep(value):
    result = vramtop("run", f"--agent-interval={value}", "--", sys.executable, "-c", "pass")
    assert result.returncode == EXIT_USAGE
    assert "--agent-interval" in result.stderr and ("between" in result.stderr or "not a number" in result.stderr)


def test_runs_interval_range_is_the_agents():
    from vramtop.agent._runtime import MAX_INTERVAL, MIN_INTERVAL
    from vramtop.commands.run import AGENT_INTERVAL

    assert AGENT_INTERVAL(str(MIN_INTERVAL)) == MIN_INTERVAL and AGENT_INTERVAL(str(MAX_INTERVAL)) == MAX_INTERVAL


@pytest.mark.parametrize(("value", "interval"), [
    ("abc", 0.25), ("", 0.25), (" 0.5 ", 0.5), ("nan", 0.25), ("inf", 0.25), ("-inf", 0.25),
    ("-1", 0.01), ("0", 0.01), ("1e9", 3600.0), ("1_0", 10.0),
])
def test_an_odd_agent_interval_in_the_environment_still_starts_the_agent(runtime, value, interval):
    # "abc" or "" once left the program without its agent (start returned False); "inf" made
    # the sampler's first wait overflow, and it stopped once CUDA was up.
    code = ("import vramtop.agent as agent; started = agent.start(); "
            "print(started, agent.current().interval if started else None); agent.stop()")
    env = {**os.environ, "PYTHONPATH": str(REPO), "VRAMTOP_AGENT_INTERVAL": value}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.stdout.split() == ["True", str(interval)], done.stderr
