"""The CLI end to end: arguments, the one-shot outputs, error lines and exit codes."""

from __future__ import annotations

import ctypes.util
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pynvml
import pytest

from tests.fakes.fake_nvml import MiB, two_gpu_box
from vramtop import __version__
from vramtop.cli import main
from vramtop.errors import EXIT_NO_DRIVER, EXIT_NO_GPU, EXIT_NVML, EXIT_USAGE
from vramtop.protocol import SAMPLE_SCHEMA, SchemaError, sample_from_document

HAS_NVML = ctypes.util.find_library("nvidia-ml") is not None


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vramtop", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_once_json_is_a_versioned_document_with_exact_bytes(fake_pynvml, capsys):
    fake = fake_pynvml()
    assert main(["--once", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == SAMPLE_SCHEMA and doc["version"] == 1 and doc["vramtop"] == __version__
    gpu0 = doc["gpus"][0]
    assert gpu0["memory_used"] == fake.gpus[0].used and gpu0["memory_reserved"] == 480 * MiB
    assert gpu0["uuid"] == fake.gpus[0].uuid
    assert gpu0["processes"][0]["pid"] == os.getpid()
    assert gpu0["processes"][0]["used_memory"] == 39800 * MiB
    # The document reads back into the same sample type.
    sample = sample_from_document(doc)
    assert sample.gpus[0].memory_used == fake.gpus[0].used


def test_once_text_prints_mib_the_way_nvidia_smi_does(fake_pynvml, capsys):
    fake_pynvml()
    assert main(["--once"]) == 0
    out = capsys.readouterr().out
    # 40123 MiB + 200 KiB used: nvidia-smi rounds up to 40124 MiB.
    assert "used 40124 MiB / 81559 MiB" in out
    assert "free 40956 MiB" in out  # 81559 - 40123.2 - 480 = 40955.8 -> rounded up
    assert "reserved 480 MiB" in out
    assert "GPU 1" in out and "no processes" in out


def test_gpu_filter_applies_to_once(fake_pynvml, capsys):
    fake_pynvml()
    assert main(["--once", "--json", "--gpu", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [g["index"] for g in doc["gpus"]] == [1]


def test_unknown_gpu_is_a_clear_error(fake_pynvml, capsys):
    fake_pynvml()
    assert main(["--once", "--gpu", "5"]) == EXIT_NO_GPU
    err = capsys.readouterr().err
    assert err.startswith("vramtop: no GPU matches --gpu '5'") and err.count("\n") == 1


def test_lost_gpu_in_once_prints_what_it_can_and_fails(fake_pynvml, capsys):
    fake = fake_pynvml()
    fake.gpus[1].lost = True
    assert main(["--once"]) == EXIT_NVML
    captured = capsys.readouterr()
    assert "GPU 0" in captured.out and "lost" in captured.out
    assert "GPU 1" in captured.err and "lost" in captured.err


def test_driver_not_loaded(fake_pynvml, capsys):
    fake_pynvml(two_gpu_box(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED))
    assert main(["--once"]) == EXIT_NO_DRIVER
    assert "driver is not loaded" in capsys.readouterr().err


def test_hung_nvml_in_once_times_out_with_a_message(fake_pynvml, capsys, monkeypatch):
    from vramtop.commands import once

    monkeypatch.setattr(once, "ONCE_DEADLINE_S", 0.2)
    fake = fake_pynvml()
    fake.hang.set()
    assert main(["--once"]) == EXIT_NVML
    assert "has not answered" in capsys.readouterr().err
    fake.release.set()


@pytest.mark.skipif(HAS_NVML, reason="this machine has an NVIDIA driver")
def test_no_driver_for_real_is_one_line_and_exit_3():
    result = run_cli("--once")
    assert result.returncode == EXIT_NO_DRIVER
    assert result.stdout == ""
    assert result.stderr.startswith("vramtop: NVIDIA driver not found")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_help_and_version_do_not_import_textual_or_pynvml():
    code = (
        "import sys\nfrom vramtop.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "bad = [m for m in ('textual', 'pynvml', 'psutil', 'rich', 'torch') if m in sys.modules]\n"
        "print('IMPORTED', bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "IMPORTED []" in out
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"vramtop {__version__}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--json"], "--json needs --once"),
        (["--interval", "0"], "between 0.05 and 3600"),
        (["--interval", "fast"], "not a number"),
        (["--gpu", ","], "expected GPU indices"),
    ],
)
def test_bad_arguments_are_usage_errors(args, message):
    result = run_cli(*args)
    assert result.returncode == EXIT_USAGE and message in result.stderr


def test_monitor_without_a_terminal_says_so():
    result = subprocess.run([sys.executable, "-m", "vramtop"], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=60)
    assert result.returncode == EXIT_USAGE and "needs a terminal" in result.stderr


def test_newer_schema_is_refused_clearly():
    with pytest.raises(SchemaError, match="newer than this vramtop"):
        sample_from_document({"schema": SAMPLE_SCHEMA, "version": 2})
    with pytest.raises(SchemaError, match=r"not a vramtop\.sample"):
        sample_from_document({"schema": "other"})


def test_shared_options_work_before_and_after_the_command_name():
    from vramtop.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["-i", "2", "record"]).interval == 2.0
    assert parser.parse_args(["record", "-i", "3"]).interval == 3.0
    assert parser.parse_args(["record"]).interval == 1.0
    assert parser.parse_args(["--gpu", "1", "replay", "f"]).gpu == ["1"]
    assert parser.parse_args(["attach", "1", "--margin", "20"]).margin == 20.0


def test_the_live_monitor_imports_no_other_command():
    code = ("import sys; from vramtop.cli import build_parser; build_parser(sys.argv[1:]); "
            "print(sorted(m for m in ('vramtop.recording', 'vramtop.commands.record') if m in sys.modules))")
    alone = subprocess.run([sys.executable, "-c", code, "-i", "1"], capture_output=True, text=True, timeout=60)
    recording = subprocess.run([sys.executable, "-c", code, "record", "-o", "x"], capture_output=True, text=True,
                               timeout=60)
    assert alone.stdout.strip() == "[]"
    assert recording.stdout.strip() == "['vramtop.commands.record', 'vramtop.recording']"


# -- what a new user trips over ------------------------------------------------------------------

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vramtop", "demo",
                    "gpt2-h100.jsonl.gz")


def run_shell(command: str, cwd) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    return subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=env)


def test_a_closed_pipe_ends_the_command_quietly(tmp_path):
    # `head` closes the pipe after one byte: no traceback, the exit status SIGPIPE gives a tool.
    once = f"{sys.executable} -m tests.fakes.run_with_fake_nvml --once --json"  # FakeNvml: no GPU needed
    for command in (f"{sys.executable} -m vramtop report {DEMO} | head -c1 >/dev/null", f"{once} | true"):
        for _ in range(3):
            result = run_shell(command, tmp_path)
            assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
            assert result.returncode in (0, 141)


def test_report_never_overwrites_without_force_and_never_the_recording(tmp_path, capsys):
    recording = tmp_path / "run.jsonl"
    recording.write_bytes(gzip.decompress(Path(DEMO).read_bytes()))
    before = recording.read_bytes()
    assert main(["report", str(recording), "--html", str(recording)]) == EXIT_USAGE
    assert "is the recording being read" in capsys.readouterr().err and recording.read_bytes() == before
    page = tmp_path / "page.html"
    page.write_text("mine")
    assert main(["report", str(recording), "--html", str(page)]) == EXIT_USAGE
    assert "already exists: pass --force" in capsys.readouterr().err and page.read_text() == "mine"
    assert main(["report", str(recording), "--html", str(page), "--force"]) == 0
    assert page.read_text().startswith("<!doctype html>") or "<html" in page.read_text()
    assert main(["report", str(recording), "--html", str(recording), "--force"]) == EXIT_USAGE  # not even so
    assert recording.read_bytes() == before


def test_report_refuses_a_gpu_the_recording_does_not_have(capsys):
    assert main(["report", DEMO, "--gpu", "99"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--gpu 99 matches no GPU of this recording; it has: 0 (GPU-" in err


def test_no_driver_points_a_newcomer_at_the_demo():
    result = subprocess.run([sys.executable, "-m", "vramtop", "--once"], capture_output=True, text=True,
                            env={**os.environ, "LD_LIBRARY_PATH": "/nonexistent"}, timeout=60)
    if result.returncode != EXIT_NO_DRIVER:
        pytest.skip("an NVIDIA driver is installed here")
    assert "vramtop demo" in result.stderr and "Traceback" not in result.stderr


def test_playback_options_are_checked_alike_and_gpu_is_refused_where_it_does_not_apply(capsys):
    for command in (["demo"], ["replay", DEMO]):
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--speed", "0"])
        assert exit_.value.code == EXIT_USAGE and "must be between 0.25 and 32" in capsys.readouterr().err
        assert main(["--gpu", "0", *command]) == EXIT_USAGE
        assert "--gpu does not apply to" in capsys.readouterr().err


def test_the_demo_recording_can_be_reported(capsys):
    assert main(["demo", "--report"]) == 0
    captured = capsys.readouterr()
    assert "POST-MORTEM" in captured.out and "the recording is" in captured.err


def test_a_negative_interval_gets_the_intervals_own_message(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["-i", "-1", "--once"])
    assert exit_.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "must be between 0.05 and 3600 seconds" in err and "expected one argument" not in err


def test_commands_that_read_a_recording_offer_no_refresh_interval():
    for command in ("report", "replay", "demo"):
        help_text = subprocess.run([sys.executable, "-m", "vramtop", command, "--help"], capture_output=True,
                                   text=True, timeout=60).stdout
        assert "--interval" not in help_text, command
    assert "--interval" in subprocess.run([sys.executable, "-m", "vramtop", "record", "--help"],
                                          capture_output=True, text=True, timeout=60).stdout


def test_once_says_when_agents_cannot_be_read_and_how_to_fix_it(fake_pynvml, capsys, tmp_path, monkeypatch):
    # Another user pre-created the socket directory (possible whenever XDG_RUNTIME_DIR is unset):
    # here, a symlink in its place. The agents' figures are missing, and the user is told why.
    fake_pynvml()
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (xdg / "vramtop").symlink_to(tmp_path / "elsewhere")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    assert main(["--once", "--json"]) == 0
    captured = capsys.readouterr()
    assert "agents cannot be read" in captured.err and "XDG_RUNTIME_DIR" in captured.err
    assert any("symlink" in p for p in json.loads(captured.out)["problems"])


def test_a_driver_that_hangs_while_starting_ends_once_within_its_deadline(fake_pynvml, capsys, monkeypatch):
    # nvmlInit blocking made --once take 30 s (its deadline is 10 s) and `record --duration 1` 31 s.
    import threading
    import time

    from vramtop.sources import poller

    monkeypatch.setattr(poller, "OPEN_DEADLINE_S", 0.3)
    fake = fake_pynvml()
    release = threading.Event()
    monkeypatch.setattr(type(fake), "nvmlInit", lambda self: release.wait(30))
    started = time.monotonic()
    try:
        assert main(["--once"]) == EXIT_NVML
        assert time.monotonic() - started < 5
        assert "NVML did not answer within 0.3 s while starting (driver hung?)" in capsys.readouterr().err
    finally:
        release.set()
