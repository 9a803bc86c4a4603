"""``vramtop record`` end to end: real files, real subprocesses, FakeNvml as the driver."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from vramtop.cli import main
from vramtop.codec import from_dict
from vramtop.commands import record as record_command
from vramtop.errors import EXIT_FAILURE, EXIT_USAGE
from vramtop.model import Sample
from vramtop.recording import RecordingReader, read_recording
from vramtop.sinks.recording_names import default_name, program_name

ROOT = Path(__file__).resolve().parent.parent
CHILD = "import os,sys; print(os.environ['VRAMTOP_AGENT']); sys.exit(3)"


def start_recorder(*args: str, **kwargs) -> subprocess.Popen[str]:
    """``vramtop record ...`` in its own process, with FakeNvml as the driver."""
    argv = [sys.executable, "-m", "tests.fakes.run_with_fake_nvml", "record", *args]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def wait_for_samples(path: Path, count: int, proc: subprocess.Popen[str]) -> None:
    """Until ``path`` holds ``count`` samples (read the way a second process tails it)."""
    give_up = time.monotonic() + 60
    while time.monotonic() < give_up:
        if path.exists():
            reader = RecordingReader(path)
            try:
                reader.poll()
                if len(reader.samples) >= count:
                    return
            finally:
                reader.close()
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    pytest.fail(f"no {count} samples in {path}")


def test_record_for_a_duration(fake_pynvml, tmp_path, capsys):
    fake = fake_pynvml()
    path = tmp_path / "r.jsonl"
    assert main(["record", "-o", str(path), "-i", "0.05", "--duration", "0.3", "--gpu", "1"]) == 0
    rec = read_recording(path)
    assert rec.problems == () and rec.end is not None and rec.end.reason == "duration"
    assert rec.end.samples == len(rec.samples) >= 1
    assert [g.uuid for g in rec.header.gpus] == [fake.gpus[1].uuid]
    assert all([g.index for g in s.gpus] == [1] for s in rec.samples)
    assert rec.header.command is None and rec.header.interval == 0.05
    err = capsys.readouterr().err
    assert f"vramtop: recording to {path}\n" in err and f"samples in {path}\n" in err


def test_an_existing_file_is_kept_unless_forced(fake_pynvml, tmp_path, capsys):
    fake_pynvml()
    path = tmp_path / "r.jsonl"
    path.write_text("precious\n")
    assert main(["record", "-o", str(path), "--duration", "0.1"]) == EXIT_USAGE
    assert "already exists: pass --force" in capsys.readouterr().err
    assert path.read_text() == "precious\n"
    assert main(["record", "-o", str(path), "--duration", "0.1", "--force"]) == 0
    assert read_recording(path).end is not None


@pytest.mark.parametrize("args,name", [(["-o", "r.jsonl.gz"], "r.jsonl.gz"), (["-o", "r.jsonl.xz"], "r.jsonl.xz"),
                                       (["-o", "r.jsonl", "--compress"], "r.jsonl.xz")])
def test_a_compressed_name_or_compress_packs_the_file_at_the_end(fake_pynvml, tmp_path, monkeypatch, capsys,
                                                                   args, name):
    fake_pynvml()
    monkeypatch.chdir(tmp_path)
    assert main(["record", *args, "-i", "0.05", "--duration", "0.2"]) == 0
    assert f"compressed into {name} at the end" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    rec = read_recording(tmp_path / name)
    assert rec.compressed and rec.problems == () and len(rec.samples) == rec.end.samples


def test_kill_9_keeps_every_complete_sample_and_the_reader_says_the_writer_died(tmp_path):
    path = tmp_path / "killed.jsonl"
    proc = start_recorder("-o", str(path), "-i", "0.05")
    wait_for_samples(path, 5, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    raw = path.read_bytes()
    complete = [json.loads(line) for line in raw.split(b"\n")[:-1]]
    expected = tuple(from_dict(Sample, r["sample"]) for r in complete if r["type"] == "sample")
    rec = read_recording(path)
    assert len(expected) >= 5 and rec.samples == expected
    assert rec.end is None and rec.writer_died
    *torn, died = rec.problems  # at most the line the kill cut, then the missing end
    assert "the writer died" in str(died)
    assert [p.message[:25] for p in torn] in ([], ["the last line is cut off "])


@pytest.mark.parametrize(("signum", "reason"), [(signal.SIGTERM, "terminated"),
                                                (signal.SIGINT, "interrupted")])
def test_sigterm_and_ctrl_c_end_the_recording_properly(tmp_path, signum, reason):
    path = tmp_path / "stopped.jsonl"
    proc = start_recorder("-o", str(path), "-i", "0.05")
    wait_for_samples(path, 2, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    rec = read_recording(path)
    assert rec.problems == () and rec.end.reason == reason and rec.end.samples == len(rec.samples)
    assert "Traceback" not in err


def test_record_around_a_command_returns_its_exit_code(tmp_path):
    path = tmp_path / "cmd.jsonl"
    proc = start_recorder("-o", str(path), "-i", "0.05", "--", sys.executable, "-c", CHILD)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert out == "1\n"  # the command ran with VRAMTOP_AGENT=1 and its output is untouched
    rec = read_recording(path)
    assert rec.problems == () and rec.end.reason == "command exited with 3"
    assert rec.header.command == (sys.executable, "-c", CHILD)
    started, exited = rec.events
    assert (started.kind, exited.kind) == ("command.started", "command.exited")
    assert started.pid == exited.pid and exited.data == {"returncode": 3}
    assert len(rec.samples) >= 1


def test_a_command_killed_by_a_signal_exits_like_a_shell_says(fake_pynvml, tmp_path):
    fake_pynvml()
    path = tmp_path / "r.jsonl"
    kill_self = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    code = main(["record", "-o", str(path), "-i", "0.05", "--", sys.executable, "-c", kill_self])
    assert code == 137
    assert read_recording(path).end.reason == "command exited with -9"


def test_a_command_that_cannot_start(fake_pynvml, tmp_path, capsys):
    fake_pynvml()
    path = tmp_path / "r.jsonl"
    assert main(["record", "-o", str(path), "--", str(tmp_path / "no-such-program")]) == 127
    assert "cannot run" in capsys.readouterr().err
    rec = read_recording(path)
    assert rec.end.reason.startswith("command did not start") and len(rec.samples) == 1


def test_a_duration_stops_recording_but_not_the_command(fake_pynvml, tmp_path):
    fake_pynvml()
    path = tmp_path / "r.jsonl"
    done = tmp_path / "done"
    child = (f"import time, sys, pathlib; time.sleep(0.5); pathlib.Path({str(done)!r}).touch(); "
             "sys.exit(4)")
    code = main(["record", "-o", str(path), "--duration", "0.1", "--", sys.executable, "-c", child])
    assert code == 4
    assert done.exists()
    rec = read_recording(path)
    assert rec.end.reason == "duration" and [e.kind for e in rec.events] == ["command.started"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_is_one_clear_line(fake_pynvml, capsys):
    fake_pynvml()
    assert main(["record", "-o", "/dev/full", "--force", "--duration", "1"]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert err == "vramtop: disk full while writing /dev/full: 0 samples saved\n"


def test_a_hung_driver_is_recorded_as_stale_samples(fake_pynvml, tmp_path, monkeypatch):
    monkeypatch.setattr(record_command, "MIN_DEADLINE_S", 0.05)
    fake = fake_pynvml()
    real = fake.nvmlDeviceGetMemoryInfo
    reads = {"n": 0}

    def hangs_from_the_second_sample(handle, version=None):
        reads["n"] += 1
        if reads["n"] > len(fake.gpus):
            fake.hang.set()
        return real(handle, version)

    fake.nvmlDeviceGetMemoryInfo = hangs_from_the_second_sample
    path = tmp_path / "hung.jsonl"
    try:
        assert main(["record", "-o", str(path), "-i", "0.05", "--duration", "0.5"]) == 0
    finally:
        fake.release.set()
    rec = read_recording(path)
    fresh, *stale = rec.samples
    assert not fresh.stale and stale and rec.end.reason == "duration"
    assert all(s.stale_since == fresh.time and "has not answered" in s.error for s in stale)
    assert all(s.gpus == fresh.gpus for s in stale)
    times = [s.time for s in rec.samples]
    assert times == sorted(times) and len(set(times)) == len(times)  # stamped when recorded


def test_default_file_name_comes_from_the_program_and_the_local_time():
    when = time.mktime((2026, 11, 28, 15, 30, 0, 0, 0, -1))
    name = default_name(["python", "train.py", "--lr", "3e-4"], when)
    assert name == "vramtop-train-20261128-153000"
    assert program_name(["torchrun", "--nproc-per-node", "8", "scripts/pretrain.py"]) == "pretrain"
    assert program_name(["python", "-m", "pkg.finetune"]) == "finetune"
    assert program_name(["/usr/bin/my job"]) == "my job"
    assert default_name(["/usr/bin/my job"], when) == "vramtop-my_job-20261128-153000"
    host = default_name([], when)
    assert host.startswith("vramtop-") and host.endswith("-20261128-153000")


def test_default_file_is_created_in_the_current_directory(fake_pynvml, tmp_path, monkeypatch,
                                                          capfd):
    fake_pynvml()
    monkeypatch.chdir(tmp_path)
    assert main(["record", "-i", "0.05", "--", sys.executable, "-c", CHILD]) == 3
    (made,) = tmp_path.iterdir()
    assert re.fullmatch(r"vramtop-python-\d{8}-\d{6}\.jsonl", made.name)
    captured = capfd.readouterr()
    assert captured.out == "1\n" and f"recording to {made.name}" in captured.err


def test_nothing_after_the_separator_is_a_usage_error(fake_pynvml, capsys):
    fake_pynvml()
    assert main(["record", "--"]) == EXIT_USAGE
    assert "nothing to run" in capsys.readouterr().err


def test_no_driver_fails_before_creating_a_file_or_starting_the_command(tmp_path, monkeypatch):
    import pynvml

    from tests.fakes.fake_nvml import two_gpu_box

    no_driver = two_gpu_box(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    monkeypatch.setitem(sys.modules, "pynvml", no_driver)
    marker = tmp_path / "ran"
    code = main(["record", "-o", str(tmp_path / "r.jsonl"), "--", sys.executable, "-c",
                 f"open({str(marker)!r}, 'w')"])
    assert code == 3 and list(tmp_path.iterdir()) == []


# -- --pid: one running process ---------------------------------------------------------------


def test_pid_records_only_that_process_and_the_gpus_totals(fake_pynvml, tmp_path):
    from tests.fakes.fake_nvml import FakeProc

    fake = fake_pynvml()
    fake.gpus[0].compute.append(FakeProc(os.getppid(), 300 << 20))  # someone else on the same GPU
    out = tmp_path / "one.jsonl"
    assert main(["record", "--pid", str(os.getpid()), "-o", str(out), "-i", "0.05", "--duration", "0.3"]) == 0
    rec = read_recording(out)
    assert rec.header.pid == os.getpid() and rec.header.command  # this process's command line
    assert len(rec.samples) >= 2
    for sample in rec.samples:
        assert [p.pid for g in sample.gpus for p in g.processes] == [os.getpid()]
        assert sample.gpus[0].memory_used == fake.gpus[0].used  # the GPU's own figures stay


def test_pid_recording_ends_when_the_process_exits(fake_pynvml, tmp_path):
    from tests.fakes.fake_nvml import FakeProc

    fake = fake_pynvml()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    fake.gpus[1].compute.append(FakeProc(child.pid, 1 << 30))
    out = tmp_path / "child.jsonl"
    started = time.monotonic()
    try:
        assert main(["record", "--pid", str(child.pid), "-o", str(out), "-i", "0.1"]) == 0
    finally:
        child.wait()
    assert time.monotonic() - started < 20
    rec = read_recording(out)
    assert rec.end is not None and rec.end.reason == f"process {child.pid} exited"
    assert [p.pid for p in rec.samples[0].gpus[1].processes] == [child.pid]


def test_pid_errors_are_one_line(fake_pynvml, tmp_path, capsys):
    from vramtop.errors import EXIT_NO_GPU

    fake_pynvml()
    out = str(tmp_path / "x.jsonl")
    assert main(["record", "--pid", "999999999", "-o", out]) == EXIT_USAGE
    assert "no process with PID 999999999" in capsys.readouterr().err
    assert main(["record", "--pid", str(os.getppid()), "-o", out]) == EXIT_NO_GPU  # alive, no GPU
    assert f"PID {os.getppid()} ({psutil.Process(os.getppid()).name()}) uses no NVIDIA GPU" in capsys.readouterr().err
    assert main(["record", "--pid", str(os.getpid()), "-o", out, "--", "true"]) == EXIT_USAGE
    assert "give one of them" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_warnings_are_written_when_raised_when_their_level_changes_and_when_they_clear(tmp_path):
    """The warnings turned into events, with a scripted stand-in for the risk rules (named a fake)."""
    from tests.test_recording import small_sample
    from vramtop.analysis.risk import RiskWarning
    from vramtop.recording import header_record
    from vramtop.sinks.record_session import WarningEvents
    from vramtop.sinks.recorder import Recorder

    def warning(level: str) -> RiskWarning:
        return RiskWarning(level, "leak", "GPU-a", 0, 42, f"leak ({level})", {"per_step": 1.0}, "grows", "look")

    class FakeRisk:
        script = [(warning("warning"),), (warning("warning"),), (warning("critical"),), ()]

        def update(self, sample):
            return self.script.pop(0)

    recorder = Recorder(tmp_path / "w.jsonl", header_record(small_sample(0), interval=1.0, command=None))
    warnings = WarningEvents(FakeRisk())
    for i in range(4):
        for w in warnings.update(small_sample(i)):
            recorder.write_event(w.kind, w.data, pid=w.pid, time=w.time)
    recorder.close("done")
    events = [(e.kind, e.data.get("level"), e.pid) for e in read_recording(tmp_path / "w.jsonl").events]
    assert events == [("warning", "warning", 42), ("warning", "critical", 42), ("warning.cleared", None, 42)]
