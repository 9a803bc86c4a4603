"""`vramtop attach PID` starting the agent inside a running Python process (vramtop.inject).

Real ptrace on real processes: each target is a Python child started with a clean environment
(no VRAMTOP_*, no PYTHONPATH), which fakes only CUDA (FakeCudaTorch, loaded by file location, so
vramtop is not imported) and runs a CPU torch loop. The injector, the bootstrap, the agent and
its socket are the real ones.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.attach_targets import (  # noqa: F401 - fixtures
    REPO,
    TRAIN,
    clean_env,
    exec_done,
    finish,
    procs_fixture,
    runtime_fixture,
    start,
)
from tests.fakes.fake_cuda import bare_namespace_source
from vramtop.inject import AttachRefused, TargetExited, attach_agent, inspect_target
from vramtop.inject.errors import AgentNotYet

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.machine() != "x86_64",
                                reason="the injector is for Linux on x86_64")

def test_attach_starts_the_agent_in_a_training_loop_that_goes_on_to_the_same_result(runtime, procs):
    """GIVEN a CPU torch loop started without vramtop WHEN attached THEN a monitor gets its
    samples and steps, the loop ends with the result it computes alone, a second attach is refused."""
    pytest.importorskip("torch")
    from vramtop.sources.agent import AgentSource

    alone = start([sys.executable, "-c", TRAIN, "400", "0"])
    expected = finish(alone)["result"]

    proc = start([sys.executable, "-c", TRAIN, "400", "0.02"])
    procs.append(proc)
    attached = attach_agent(proc.pid, runtime, interval=0.05)
    assert attached.version == sys.version_info[:2] and attached.note is None and attached.route == "ptrace"

    source = AgentSource(runtime)
    try:
        deadline = time.monotonic() + 20
        seen = []
        while time.monotonic() < deadline and not any(s.step > 0 for s in seen):
            seen.extend(source.poll(wait=0.2))
        assert seen, "no sample from the attached agent"
        latest = seen[-1]
        assert latest.pid == proc.pid and latest.attached
        assert latest.devices[0].stats.allocated == 123 << 20
        assert latest.step > 0, "no optimizer step reported after the attach"
        # (The census counts CUDA tensors: this loop's are on the CPU, so none are billed here.)
    finally:
        source.close()

    with pytest.raises(AttachRefused, match="already runs the vramtop agent"):
        attach_agent(proc.pid, runtime)

    report = finish(proc)
    assert report["result"] == expected
    assert report["agent"] == "True"
    assert report["from"].startswith(str(REPO / "vramtop"))  # vramtop's own installation


def test_a_second_injection_while_the_first_agent_waits_starts_nothing_twice(runtime, procs):
    """The agent waits for CUDA (no socket yet): attaching again queues the bootstrap, which sees
    the running agent and says so; the caller is told the agent waits."""
    program = "import time\nprint('ready', flush=True)\nfor _ in range(600): time.sleep(0.01)\n"
    proc = start([sys.executable, "-c", program])
    procs.append(proc)
    for _ in range(2):
        with pytest.raises(AgentNotYet, match="waits for the program to use CUDA"):
            attach_agent(proc.pid, runtime, wait=3)
    proc.kill()
    assert "agent not started" not in proc.communicate()[1]


def test_a_main_thread_in_a_long_sleep_delays_the_start_and_its_sleep_is_not_cut_short(runtime, procs):
    program = TRAIN.replace('print("ready", flush=True)',
                            'print("ready", flush=True)\nt = time.monotonic(); time.sleep(4); '
                            'print("slept", round(time.monotonic() - t, 1), flush=True)')
    proc = start([sys.executable, "-c", program, "150", "0.02"])
    procs.append(proc)
    with pytest.raises(AgentNotYet, match="main thread has not returned to Python"):
        attach_agent(proc.pid, runtime, wait=1.5)
    from vramtop.inject import wait_for_agent

    wait_for_agent(proc.pid, runtime, 20)  # it comes up by itself once the sleep returns
    report = finish(proc)
    assert float(report["slept"]) >= 3.9
    assert report["agent"] == "True"


def test_a_process_that_exits_during_the_attach(runtime, procs):
    program = "import time\nprint('ready', flush=True)\ntime.sleep(1.0)\n"
    proc = start([sys.executable, "-c", program])
    procs.append(proc)
    with pytest.raises(TargetExited, match=f"PID {proc.pid} exited during the attach"):
        attach_agent(proc.pid, runtime, wait=10)


def test_a_process_killed_while_it_is_stopped_for_the_injection(procs):
    from vramtop.inject._remote import Tracee

    proc = start([sys.executable, "-c", "import time\nprint('ready', flush=True)\ntime.sleep(30)\n"])
    procs.append(proc)
    with pytest.raises(TargetExited), Tracee(proc.pid, timeout=5) as tracee:
        os.kill(proc.pid, signal.SIGKILL)
        tracee.call(0x1000)


def test_a_process_that_is_not_python_is_refused(runtime, procs):
    sleep = subprocess.Popen(["sleep", "30"])
    exec_done(sleep, "sleep")
    try:
        with pytest.raises(AttachRefused, match=r"\(sleep\) is not a Python process"):
            attach_agent(sleep.pid, runtime)
    finally:
        sleep.kill()
        sleep.wait()


def test_a_stopped_process_is_refused_and_left_stopped(runtime, procs):
    proc = start([sys.executable, "-c", "import time\nprint('ready', flush=True)\ntime.sleep(30)\n"])
    procs.append(proc)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        time.sleep(0.1)
        with pytest.raises(AttachRefused, match=f"kill -CONT {proc.pid}"):
            attach_agent(proc.pid, runtime)
    finally:
        os.kill(proc.pid, signal.SIGCONT)


@pytest.mark.parametrize("scope", ["3"])
def test_ptrace_disabled_by_yama_is_refused(runtime, procs, tmp_path, scope):
    scope_file = tmp_path / "ptrace_scope"
    scope_file.write_text(scope + "\n")
    proc = start([sys.executable, "-c", "import time\nprint('ready', flush=True)\ntime.sleep(30)\n"])
    procs.append(proc)
    with pytest.raises(AttachRefused, match="disabled on this machine until it reboots"):
        attach_agent(proc.pid, runtime, scope_file=scope_file)
    for allowed in ("0", "garbage"):
        scope_file.write_text(allowed)
        inspect_target(proc.pid, runtime, scope_file=scope_file)  # no refusal


def test_the_real_yama_setting_where_the_machine_has_one(runtime, procs):
    real = Path("/proc/sys/kernel/yama/ptrace_scope")
    if not real.exists():
        pytest.skip("this kernel has no Yama")
    proc = start([sys.executable, "-c", "import time\nprint('ready', flush=True)\ntime.sleep(30)\n"])
    procs.append(proc)
    if real.read_text().strip() == "3":
        with pytest.raises(AttachRefused, match="ptrace_scope=3"):
            inspect_target(proc.pid, runtime)
    else:
        inspect_target(proc.pid, runtime)  # our own child: allowed under 0, 1 and (as root) 2


AS_ANOTHER_USER = textwrap.dedent("""
    import os, subprocess, sys, tempfile
    from pathlib import Path
    from vramtop.inject import AttachRefused, inspect_target
    from vramtop.inject._remote import Tracee
    directory = Path(tempfile.mkdtemp()) / "vramtop"

    def outcome(action):
        try:
            action()
            return "allowed"
        except AttachRefused as err:
            return str(err)

    root_pid = int(sys.argv[1])
    print("OWNER:", outcome(lambda: inspect_target(root_pid, directory)))
    print("KERNEL:", outcome(lambda: Tracee(root_pid, 5).__enter__()))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    # A process of ours that is not our descendant (its parent exited): what ptrace_scope=1 forbids.
    spawn = ("import subprocess, sys; print(subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'], "
             "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)")
    orphan = int(subprocess.run([sys.executable, "-c", spawn], capture_output=True, text=True).stdout)
    for scope in "0123":
        path = directory.parent / ("scope" + scope)
        path.write_text(scope)
        print("SCOPE" + scope + ":", outcome(lambda: inspect_target(orphan, directory, scope_file=path)))
        print("CHILD" + scope + ":", outcome(lambda: inspect_target(child.pid, directory, scope_file=path)))
    child.kill()
    os.kill(orphan, 9)
""")


def python_for(uid: int) -> str | None:
    """An interpreter that ``uid`` may run with vramtop importable (this one may live in a
    directory only root can read)."""
    for candidate in (sys.executable, shutil.which("python3", path=os.defpath) or ""):
        try:
            probe = subprocess.run([candidate, "-c", "import vramtop.inject"], user=uid, cwd="/",
                                   env={**clean_env(), "PYTHONPATH": str(REPO)}, capture_output=True, timeout=60)
        except OSError:
            continue
        if probe.returncode == 0:
            return candidate
    return None


def second_user() -> tuple[int, str]:
    """A real second user (``nobody``) and an interpreter it may run vramtop with; skips the
    test where there is none (not root, no such user, no such interpreter)."""
    if os.geteuid() != 0:
        pytest.skip("creating a second user's process needs root")
    try:
        import pwd

        nobody = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        pytest.skip("no user 'nobody' here")
    python = python_for(nobody)
    if python is None:
        pytest.skip("no Python that user 'nobody' may run with vramtop importable")
    return nobody, python


def test_another_users_process_and_ptrace_scope_for_an_unprivileged_user(procs):
    """Run as ``nobody`` (a real second user, without CAP_SYS_PTRACE) against root's process."""
    nobody, python = second_user()
    target = start([sys.executable, "-c", "import time\nprint('ready', flush=True)\ntime.sleep(30)\n"])
    procs.append(target)
    result = subprocess.run([python, "-c", AS_ANOTHER_USER, str(target.pid)], user=nobody, cwd="/",
                            env={**clean_env(), "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    said = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert said["OWNER"].startswith(f"PID {target.pid} (python") and "belongs to root, not to you" in said["OWNER"]
    assert "sudo -u root vramtop attach" in said["OWNER"]
    assert said["KERNEL"].startswith(f"the kernel refused to trace PID {target.pid} (EPERM)")
    assert said["SCOPE0"] == "allowed"
    assert "only a parent may trace" in said["SCOPE1"] and "ptrace_scope=0" in said["SCOPE1"]
    assert said["CHILD0"] == said["CHILD1"] == "allowed"  # under 1, a descendant may be traced
    assert "needs CAP_SYS_PTRACE" in said["SCOPE2"]
    assert "needs CAP_SYS_PTRACE" in said["CHILD2"]
    assert "until it reboots" in said["SCOPE3"] and "until it reboots" in said["CHILD3"]


# A target without torch (other interpreters here have none): a fake CUDA allocator on a bare
# namespace is all the agent needs to serve.
BARE = bare_namespace_source(77 << 20, 128 << 20) + textwrap.dedent("""
    print("ready", flush=True)
    total = 0
    for i in range(1500):
        total += sum(range(i))
        time.sleep(0.002)
    print("result", total, flush=True)
    print("agent", sys.modules.get("vramtop.agent") is not None, flush=True)
""")


def other_interpreters() -> list[tuple[str, tuple[int, int]]]:
    """Python 3.10+ interpreters on PATH (and pyenv's) other than this one: another minor version,
    or another build such as a distribution's statically linked python3."""
    mine = os.path.realpath(sys.executable)
    found: dict[str, tuple[int, int]] = {}
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    directories = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin", *map(str, pyenv.glob("3.*/bin"))]
    for name in ("python3.10", "python3.11", "python3.12", "python3.13", "python3"):
        for directory in directories:
            path = shutil.which(name, path=directory)
            if not path:
                continue
            try:
                probe = subprocess.run([path, "-c", "import sys, os; print(os.path.realpath(sys.executable)); "
                                        "print(*sys.version_info[:2])"], capture_output=True, text=True,
                                       timeout=30, env=clean_env())
            except OSError:
                continue
            lines = probe.stdout.split("\n")
            if probe.returncode != 0 or len(lines) < 2 or lines[0] == mine:
                continue
            major, minor = map(int, lines[1].split())
            if (major, minor) >= (3, 10):
                found.setdefault(lines[0], (major, minor))
    return sorted(found.items())


def test_targets_on_other_pythons(runtime, procs):
    from vramtop.sources.agent import AgentSource

    interpreters = other_interpreters()
    if not interpreters:
        pytest.skip("no other Python 3.10+ interpreter on this machine")
    for python, version in interpreters:
        proc = start([python, "-c", BARE])
        procs.append(proc)
        attached = attach_agent(proc.pid, runtime, interval=0.05)
        assert attached.version == version, python
        if version != sys.version_info[:2]:
            assert attached.note and f"runs Python {version[0]}.{version[1]}" in attached.note
        source = AgentSource(runtime, pids={proc.pid})
        try:
            deadline = time.monotonic() + 20
            samples: tuple = ()
            while time.monotonic() < deadline and not samples:
                samples = source.poll(wait=0.2)
            assert samples and samples[0].devices[0].stats.allocated == 77 << 20, python
        finally:
            source.close()
        report = finish(proc)
        assert int(report["result"]) == sum(i * (i - 1) // 2 for i in range(1500)), python
        assert report["agent"] == "True", python


def test_a_python_without_the_needed_symbols_is_refused(runtime, tmp_path):
    """A program named like Python that exports no C API (as a static, stripped build would)."""
    fake_python = tmp_path / "python3"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", fake_python)
    proc = subprocess.Popen([str(fake_python), "30"])
    exec_done(proc, "python3")
    try:
        with pytest.raises(AttachRefused, match="does not export Py_AddPendingCall and PyRun_SimpleString"):
            attach_agent(proc.pid, runtime)
    finally:
        proc.kill()
        proc.wait()


def test_another_architecture_is_refused_before_anything_is_read(runtime, monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    with pytest.raises(AttachRefused, match=r"needs Linux on x86_64 \(this is linux on aarch64\)"):
        attach_agent(os.getpid(), runtime)
