"""`vramtop attach PID` on a Python 3.14+ target: the agent is started through ``sys.remote_exec``
(PEP 768), called by a helper that runs on the target's own interpreter, while vramtop (and these
tests) run on another Python.

The targets are real 3.14 processes that never import vramtop; they fake only CUDA, on a bare
namespace (there is no torch for them here). Where no 3.14 interpreter is found, the tests that
need one are skipped. To run them, set VRAMTOP_TEST_PY314 to a CPython 3.14 interpreter built with
remote debugging (the default), or have python3.14 on PATH. On a Debian 12 machine without one,
this is how it was obtained: `apt-get download` python3.14, python3.14-minimal,
libpython3.14-minimal, libpython3.14-stdlib and libc6 from Debian sid (a sources list of its
own, passed to apt with -o Dir::Etc::SourceList=...), `dpkg -x` each into one directory, then
`patchelf --set-interpreter DIR/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --set-rpath
DIR/usr/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu DIR/usr/bin/python3.14` (sid's build needs
a newer glibc than bookworm's; only the ssl module stays unusable, which the agent does not need).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.attach_targets import (  # noqa: F401 - fixtures
    REPO,
    clean_env,
    finish,
    procs_fixture,
    runtime_fixture,
    start,
)
from tests.fakes.fake_cuda import bare_namespace_source
from vramtop.inject import AttachRefused, TargetExited, attach_agent, inspect_target, wait_for_agent
from vramtop.inject._remote_exec import SCRIPT_SUFFIX, _failure, interpreter_options
from vramtop.inject._target import TargetPython
from vramtop.inject.errors import AgentNotYet, AttachError

LINUX_X86 = sys.platform.startswith("linux") and platform.machine() == "x86_64"


def find_py314() -> str | None:
    for candidate in (os.environ.get("VRAMTOP_TEST_PY314"), shutil.which("python3.14"), shutil.which("python3.15")):
        if not candidate:
            continue
        try:
            probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info >= (3, 14) and "
                                    "hasattr(sys, 'remote_exec') and sys.is_remote_debug_enabled())"],
                                   capture_output=True, text=True, timeout=30, env=clean_env())
        except OSError:
            continue
        if probe.stdout.strip() == "True":
            return candidate
    return None


PY314 = find_py314() if LINUX_X86 else None
needs_314 = pytest.mark.skipif(PY314 is None, reason="no Python 3.14 interpreter with remote debugging "
                               "(set VRAMTOP_TEST_PY314)")

# A loop that has never heard of vramtop, with CUDA faked on a bare namespace. argv: rounds.
LOOP = ("import sys\nimported_before = 'vramtop' in sys.modules\n" + bare_namespace_source(77 << 20, 128 << 20)
        + textwrap.dedent("""
    print("ready", flush=True)
    total = 0
    for i in range(int(sys.argv[1])):
        total += sum(range(i))
        time.sleep(0.002)
    print("result", total, flush=True)
    print("imported_before", imported_before, flush=True)
    agent = sys.modules.get("vramtop.agent")
    print("agent", agent is not None and agent.current() is not None, flush=True)
    print("from", getattr(sys.modules.get("vramtop"), "__file__", None), flush=True)
"""))

SLEEPER = "import time\nprint('ready', flush=True)\nfor _ in range(3000): time.sleep(0.01)\n"


def expected(rounds: int) -> str:
    return str(sum(i * (i - 1) // 2 for i in range(rounds)))


def scripts(directory: Path) -> list[Path]:
    return sorted(directory.glob("*" + SCRIPT_SUFFIX)) if directory.exists() else []


@needs_314
def test_a_314_loop_gets_the_agent_through_remote_exec_and_goes_on_to_the_same_result(runtime, procs):
    from vramtop.sources.agent import AgentSource

    proc = start([PY314, "-c", LOOP, "2500"])
    procs.append(proc)
    attached = attach_agent(proc.pid, runtime, interval=0.05)
    assert attached.route == "remote_exec" and attached.version >= (3, 14)
    assert attached.interpreter.startswith("3.14.") and "through sys.remote_exec" in attached.how
    assert attached.helper_s is not None and attached.helper_s > 0
    assert attached.note and "runs Python 3.14" in attached.note and "newer than" not in attached.note
    source = AgentSource(runtime, pids={proc.pid})
    try:
        deadline = time.monotonic() + 20
        samples: tuple = ()
        while time.monotonic() < deadline and not samples:
            samples = source.poll(wait=0.2)
        assert samples, "no sample from the agent started through sys.remote_exec"
        assert samples[0].pid == proc.pid and samples[0].attached
        assert samples[0].devices[0].stats.allocated == 77 << 20
    finally:
        source.close()
    assert scripts(runtime) == [], "the script did not delete itself"

    with pytest.raises(AttachRefused, match="already runs the vramtop agent"):
        attach_agent(proc.pid, runtime)

    report = finish(proc)
    assert report["imported_before"] == "False"
    assert report["result"] == expected(2500)
    assert report["agent"] == "True"
    assert report["from"].startswith(str(REPO / "vramtop"))  # vramtop's own installation


@needs_314
def test_a_314_process_without_torch_runs_the_agent_which_waits_and_is_never_started_twice(runtime, procs):
    proc = start([PY314, "-c", SLEEPER])
    procs.append(proc)
    for _ in range(2):
        with pytest.raises(AgentNotYet, match="waits for the program to use CUDA"):
            attach_agent(proc.pid, runtime, wait=3)
        assert scripts(runtime) == []
    proc.kill()
    assert "agent not started" not in proc.communicate()[1]


@needs_314
@pytest.mark.parametrize(("argv", "env", "words"), [
    ([], {"PYTHON_DISABLE_REMOTE_DEBUG": "1"}, "PYTHON_DISABLE_REMOTE_DEBUG in its environment"),
    ([], {"PYTHON_DISABLE_REMOTE_DEBUG": ""}, "PYTHON_DISABLE_REMOTE_DEBUG in its environment"),
    (["-X", "disable-remote-debug"], {}, "-X disable-remote-debug"),
    (["-Xdisable_remote_debug=1"], {}, "-X disable_remote_debug=1"),
])
def test_remote_debugging_disabled_in_the_target_is_refused_with_the_fix(runtime, procs, argv, env, words):
    proc = subprocess.Popen([PY314, *argv, "-c", SLEEPER], env={**clean_env(), **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    assert proc.stdout is not None and proc.stdout.readline().startswith("ready")
    with pytest.raises(AttachRefused, match="restart it without that, or with `vramtop run`") as refused:
        attach_agent(proc.pid, runtime, wait=3)
    assert words in str(refused.value) and "\n" not in str(refused.value)
    assert scripts(runtime) == []


@needs_314
def test_the_helper_itself_reports_a_refusal_the_checks_did_not_foresee(runtime, procs):
    """Past the command-line and environment checks, the target's own refusal comes back as one
    line, and the script is removed."""
    from vramtop.inject._remote_exec import queue_script, start_time, write_script
    from vramtop.inject._target import find_python, read_maps

    proc = subprocess.Popen([PY314, "-c", SLEEPER], env={**clean_env(), "PYTHON_DISABLE_REMOTE_DEBUG": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    assert proc.stdout is not None and proc.stdout.readline().startswith("ready")
    runtime.mkdir(mode=0o700, parents=True)
    python = find_python(proc.pid, read_maps(proc.pid), "python3.14")
    script = write_script(proc.pid, runtime, b"pass\n")
    with pytest.raises(AttachRefused, match=f"PID {proc.pid} has remote debugging disabled"):
        queue_script(proc.pid, start_time(proc.pid), python, script)
    assert scripts(runtime) == []


@needs_314
def test_the_variable_is_not_honoured_under_minus_E_so_nothing_refuses(runtime, procs):
    proc = subprocess.Popen([PY314, "-E", "-c", LOOP, "2500"], env={**clean_env(), "PYTHON_DISABLE_REMOTE_DEBUG": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("ready"):
            break
    assert attach_agent(proc.pid, runtime, interval=0.05).route == "remote_exec"
    assert finish(proc)["agent"] == "True"


@needs_314
def test_a_script_not_run_yet_is_kept_and_said_so_and_runs_later(runtime, procs):
    program = LOOP.replace('print("ready", flush=True)',
                           'print("ready", flush=True)\nt = time.monotonic(); time.sleep(4); '
                           'print("slept", round(time.monotonic() - t, 1), flush=True)')
    proc = start([PY314, "-c", program, "300"])
    procs.append(proc)
    with pytest.raises(AgentNotYet, match=r"the script sys\.remote_exec queued stays until then"):
        attach_agent(proc.pid, runtime, wait=1.5)
    (script,) = scripts(runtime)
    assert script.name.startswith(f"{proc.pid}.") and script.stat().st_mode & 0o777 == 0o600
    # Attaching again meanwhile rewrites the same script rather than leaving a second one behind.
    with pytest.raises(AgentNotYet):
        attach_agent(proc.pid, runtime, wait=0.5)
    assert scripts(runtime) == [script]
    wait_for_agent(proc.pid, runtime, 20)  # it comes up once the sleep returns
    report = finish(proc)
    assert float(report["slept"]) >= 3.9
    assert report["agent"] == "True" and report["result"] == expected(300)
    assert scripts(runtime) == []


@needs_314
def test_an_audit_hook_that_refuses_the_script_leaves_the_program_alone(runtime, procs):
    """CPython raises the audit event cpython.remote_debugger_script before it runs the script: a
    hook that refuses it keeps the agent out. The attach says the script waits (it cannot tell),
    the program goes on, and the script is removed once the process is gone."""
    program = textwrap.dedent("""
        import sys, time
        def hook(event, args):
            if event == "cpython.remote_debugger_script":
                raise RuntimeError("no remote scripts here")
        sys.addaudithook(hook)
        print("ready", flush=True)
        for _ in range(200): time.sleep(0.01)
        print("result", "done", flush=True)
    """)
    proc = start([PY314, "-c", program])
    procs.append(proc)
    with pytest.raises(AgentNotYet, match="an audit hook of the program may also have refused"):
        attach_agent(proc.pid, runtime, wait=1)
    assert len(scripts(runtime)) == 1
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "result done" in out and "no remote scripts here" in err
    from vramtop.inject._remote_exec import clean_stale_scripts

    clean_stale_scripts(runtime)
    assert scripts(runtime) == []


@needs_314
def test_stale_scripts_of_dead_processes_are_cleaned_by_a_later_attach(runtime, procs):
    dead = subprocess.Popen(["true"])
    dead.wait()
    runtime.mkdir(mode=0o700, parents=True)
    stale = runtime / f"{dead.pid}.0123456789abcdef{SCRIPT_SUFFIX}"
    stale.write_text("raise SystemExit\n")
    alive = runtime / f"{os.getpid()}.0123456789abcdef{SCRIPT_SUFFIX}"  # pending for a live process: kept
    alive.write_text("pass\n")
    proc = start([PY314, "-c", LOOP, "1500"])
    procs.append(proc)
    attach_agent(proc.pid, runtime, interval=0.05)
    assert not stale.exists() and alive.exists()
    assert finish(proc)["agent"] == "True"


@needs_314
def test_a_314_target_exiting_during_the_attach(runtime, procs):
    proc = start([PY314, "-c", "import time\nprint('ready', flush=True)\ntime.sleep(1.0)\n"])
    procs.append(proc)
    with pytest.raises(TargetExited, match=f"PID {proc.pid} exited during the attach"):
        attach_agent(proc.pid, runtime, wait=10)
    assert scripts(runtime) == []


@needs_314
def test_inspect_names_the_route_and_touches_nothing(runtime, procs):
    proc = start([PY314, "-c", SLEEPER])
    procs.append(proc)
    target = inspect_target(proc.pid, runtime)
    assert target.route == "remote_exec" and target.interpreter.startswith("3.14.")
    assert not runtime.exists()


@needs_314
def test_record_inject_says_which_python_and_route_and_records_the_bill(runtime, procs, tmp_path):
    from tests.test_attach_cli import fake_nvml_env
    from vramtop.recording.reader import read_recording

    proc = start([PY314, "-c", LOOP, "2500"])
    procs.append(proc)
    out = tmp_path / "run.jsonl"
    result = subprocess.run([sys.executable, "-m", "tests.fakes.run_with_fake_nvml", "record", "--pid",
                             str(proc.pid), "--inject", "-i", "0.2", "--duration", "3", "-o", str(out)],
                            env=fake_nvml_env(proc.pid, runtime), capture_output=True, text=True, timeout=90,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert f"starting the agent in PID {proc.pid} (Python 3.14." in result.stderr
    assert "through sys.remote_exec)" in result.stderr
    samples = [s for s in read_recording(out).samples if s.agents]
    assert samples and samples[-1].agents[0].devices[0].stats.allocated == 77 << 20
    assert finish(proc)["result"] == expected(2500)


AS_ANOTHER_USER = textwrap.dedent("""
    import sys, tempfile
    from pathlib import Path
    from vramtop.inject import AttachRefused, attach_agent
    try:
        attach_agent(int(sys.argv[1]), Path(tempfile.mkdtemp()) / "vramtop", wait=3)
        print("allowed")
    except AttachRefused as err:
        print(err)
""")


@needs_314
def test_another_users_314_process_is_refused(procs):
    from tests.test_attach_inject import second_user

    nobody, python = second_user()
    target = start([PY314, "-c", SLEEPER])
    procs.append(target)
    result = subprocess.run([python, "-c", AS_ANOTHER_USER, str(target.pid)], user=nobody, cwd="/",
                            env={**clean_env(), "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "belongs to root, not to you" in result.stdout


@needs_314
def test_a_program_embedding_python_314_takes_the_ptrace_route_which_works_there(runtime, procs, tmp_path):
    """An executable not named like an interpreter is never run as the helper: the 3.14 interpreter
    copied under another name (its standard library found through PYTHONHOME) stands for one."""
    assert PY314 is not None
    home = subprocess.run([PY314, "-c", "import sys; print(sys.base_prefix)"], capture_output=True, text=True,
                          env=clean_env()).stdout.strip()
    trainer = tmp_path / "trainer"
    shutil.copy2(os.path.realpath(PY314), trainer)
    proc = subprocess.Popen([str(trainer), "-c", LOOP, "1500"], env={**clean_env(), "PYTHONHOME": home},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    procs.append(proc)
    assert proc.stdout is not None
    if not proc.stdout.readline().startswith("ready"):
        pytest.skip("this 3.14 interpreter does not run under another name")
    attached = attach_agent(proc.pid, runtime, interval=0.05)
    assert attached.route == "ptrace" and attached.version >= (3, 14)
    report = finish(proc)
    assert report["result"] == expected(1500) and report["agent"] == "True"


@pytest.mark.skipif(not LINUX_X86, reason="the injector is for Linux on x86_64")
def test_an_older_python_keeps_the_ptrace_route(runtime, procs):
    proc = start([sys.executable, "-c", SLEEPER])
    procs.append(proc)
    target = inspect_target(proc.pid, runtime)
    assert target.route == "ptrace" and target.version == sys.version_info[:2]
    assert target.interpreter == "{}.{}.{}".format(*sys.version_info[:3])
    assert target.how == f"Python {target.interpreter}, through ptrace"


@pytest.mark.parametrize(("argv", "flags", "xoptions"), [
    (["python3", "-X", "disable-remote-debug", "t.py", "-X", "other"], set(), ["disable-remote-debug"]),
    (["python3", "-EsXdisable-remote-debug=1", "-c", "-X x"], {"E", "s"}, ["disable-remote-debug=1"]),
    (["python3", "-I", "-m", "train", "-X", "y"], {"I"}, []),
    (["python3", "-W", "ignore", "--check-hash-based-pycs", "always", "-X", "z", "-"], set(), ["z"]),
    (["python3", "-cX", "print(1)"], set(), []),
])
def test_the_interpreter_options_of_a_command_line(argv, flags, xoptions):
    assert interpreter_options(argv) == (flags, xoptions)


@pytest.mark.parametrize(("stderr", "kind", "words"), [
    ("build: this interpreter has no remote debugging support", AttachRefused, "built without remote debugging"),
    ("disabled: RuntimeError: Remote debugging is not enabled in the remote process", AttachRefused,
     "has remote debugging disabled"),
    ("perm: RuntimeError: x", AttachRefused, "refused sys.remote_exec into PID"),
    ("error: OSError: something else", AttachError, "failed: OSError: something else"),
    ("", AttachError, "no reason given"),
])
def test_what_the_helper_says_becomes_one_line_with_the_fix(stderr, kind, words):
    python = TargetPython("/usr/bin/python3.14", 0, 0, (3, 14), "3.14.0")
    failure = _failure(os.getpid(), python, "Traceback...\n" + stderr if stderr else "")
    assert type(failure) is kind and words in str(failure) and "\n" not in str(failure)


@needs_314
def test_bench_attach_remote_exec_runs(runtime):
    import json

    result = subprocess.run([sys.executable, "bench/attach_remote_exec.py", "--python", str(PY314), "--rounds", "1"],
                            capture_output=True, text=True, timeout=120, cwd=REPO,
                            env={**os.environ, "XDG_RUNTIME_DIR": str(runtime.parent)})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["target_python"].startswith("3.14.") and report["remote_exec"]["helper"]["median_ms"] > 0
    assert report["ptrace"]["attach_to_serving"]["median_ms"] > 0
