"""`vramtop replay --follow`: a recording shown while its recorder is still writing it, and the
replay's warnings and advice coming from the monitor's own path."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_tui_tmux import SESSION, Tmux
from tests.test_ui import line_with, screen_text
from vramtop.analysis.risk import RiskTracker
from vramtop.commands.replay import load
from vramtop.recording import header_record, read_recording
from vramtop.sinks.recorder import Recorder
from vramtop.sources.replay import ReplaySource
from vramtop.ui import replay as replay_ui
from vramtop.ui.app import SampleArrived, VramtopApp
from vramtop.ui.replay import ReplayApp
from vramtop.units import clock, mib

REPO = Path(__file__).resolve().parent.parent
REAL = REPO / "screenshots" / "data" / "gpt2-training.jsonl"  # recorded on an H200
DEMO = REPO / "vramtop" / "demo" / "gpt2-h100.jsonl.gz"
SAMPLES = read_recording(REAL).samples


def start_recording(path: Path, first: int) -> Recorder:
    """A recorder that has written the first ``first`` samples of the real recording."""
    recorder = Recorder(path, header_record(SAMPLES[0], interval=0.5, command=["python", "train.py"]))
    for sample in SAMPLES[:first]:
        recorder.write_sample(sample)
    return recorder


def used_mib(index: int) -> str:
    g = SAMPLES[index].gpus[0]
    return f"{mib(g.memory_used)}/{mib(g.memory_total)} MiB"


async def wait_until(pilot, condition: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError("timed out")


async def test_following_shows_each_new_sample_stops_on_pause_and_back_and_resumes_at_end(tmp_path):
    path = tmp_path / "run.jsonl"
    recorder = start_recording(path, 30)
    source, _ = load(str(path), follow=True)
    app = ReplayApp(source, title="run.jsonl", interval=0.1, follow=True)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        # It opens at the newest sample, following.
        assert app.position == 29 and "FOLLOWING" in line_with(app, "REPLAY")
        assert "Following the recording as it is written" in screen_text(app)
        recorder.write_sample(SAMPLES[30])
        recorder.write_sample(SAMPLES[31])
        await wait_until(pilot, lambda: app.position == 31)
        assert used_mib(31) in screen_text(app) and "REPLAY 32/32" in line_with(app, "REPLAY")
        # A pause stops following: new samples are counted, not shown.
        await pilot.press("space")
        await pilot.pause()
        assert "PAUSED" in line_with(app, "REPLAY") and " end" not in line_with(app, "REPLAY")  # more may come
        recorder.write_sample(SAMPLES[32])
        await wait_until(pilot, lambda: "REPLAY 32/33" in line_with(app, "REPLAY"))
        assert app.position == 31 and "FOLLOWING" not in line_with(app, "REPLAY")
        # End follows again, from the newest sample.
        await pilot.press("end")
        await pilot.pause()
        assert app.position == 32 and "FOLLOWING" in line_with(app, "REPLAY") and not app.paused
        # So does playing on from a pause at the newest sample.
        await pilot.press("space", "space")
        recorder.write_sample(SAMPLES[33])
        await wait_until(pilot, lambda: app.position == 33)
        # A step back stops following too.
        await pilot.press("left")
        recorder.write_sample(SAMPLES[34])
        await wait_until(pilot, lambda: "REPLAY 33/35" in line_with(app, "REPLAY"))
        assert app.position == 32 and "FOLLOWING" not in line_with(app, "REPLAY")
        await pilot.press("end")
        await pilot.pause()
        assert app.position == 34 and "FOLLOWING" in line_with(app, "REPLAY")
        # The recorder closes the file: the screen says the recording ended.
        recorder.write_sample(SAMPLES[35])
        recorder.close("interrupted")
        await wait_until(pilot, lambda: "The recording ended" in screen_text(app))
        assert app.position == 35 and "36 samples (interrupted)" in screen_text(app)
        status = line_with(app, "REPLAY")
        assert "FOLLOWING" not in status and " end" in status


async def test_a_recorder_that_stops_writing_without_an_end_record_seems_to_have_died(tmp_path):
    path = tmp_path / "run.jsonl"
    recorder = start_recording(path, 5)
    source, _ = load(str(path), follow=True)
    app = ReplayApp(source, title="run.jsonl", interval=0.1, follow=True, stall_after=1.0)
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            # A sample written once the app runs: however slowly the app started, the recorder
            # has just written, so it is not said to have died.
            recorder.write_sample(SAMPLES[5])
            await wait_until(pilot, lambda: app.position == 5)
            assert "seems to have died" not in screen_text(app)
            await wait_until(pilot, lambda: "the recorder seems to have died" in screen_text(app))
            recorder.write_sample(SAMPLES[6])  # it was only slow: following goes on
            await wait_until(pilot, lambda: app.position == 6)
            assert "seems to have died" not in screen_text(app) and "FOLLOWING" in line_with(app, "REPLAY")
    finally:
        recorder.close()


async def test_a_recording_whose_writer_died_before_it_was_opened_says_so_at_once(tmp_path):
    path = tmp_path / "run.jsonl"
    start_recording(path, 5)  # never closed: no end record
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))
    source, _ = load(str(path), follow=True)
    app = ReplayApp(source, title="run.jsonl", interval=0.1, follow=True)  # stalled after 10 s
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        said = f"No sample since {clock(an_hour_ago)} and no end record: the recorder seems to have died"
        assert said in screen_text(app)


def vramtop(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vramtop", *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def test_a_compressed_recording_cannot_be_followed():
    result = vramtop("replay", "--follow", str(DEMO))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "compressed" in result.stderr and "without --follow" in result.stderr
    assert "--follow" in vramtop("replay", "--help").stdout


def test_follow_end_to_end_in_a_real_terminal(tmp_path):
    """`vramtop replay --follow` in tmux while this test is the recorder appending to the file."""
    path = tmp_path / "run.jsonl"
    recorder = start_recording(path, 20)
    tmux = Tmux()
    try:
        tmux.start([sys.executable, "-m", "vramtop", "replay", "--follow", str(path)], 80, 24,
                   tmp_path / "status")
        tmux.wait_for(lambda s: "REPLAY 20/20" in s and "FOLLOWING" in s, "the newest sample, following")
        for sample in SAMPLES[20:23]:
            recorder.write_sample(sample)
        tmux.wait_for(lambda s: "REPLAY 23/23" in s and used_mib(22) in s, "the appended samples")
        tmux("send-keys", "-t", SESSION, "space")
        tmux.wait_for(lambda s: "PAUSED" in s and "FOLLOWING" not in s, "the pause")
        recorder.write_sample(SAMPLES[23])
        tmux.wait_for(lambda s: "REPLAY 23/24" in s, "a new sample counted while paused")
        tmux("send-keys", "-t", SESSION, "End")
        tmux.wait_for(lambda s: "REPLAY 24/24" in s and "FOLLOWING" in s, "following again")
        recorder.close("done")
        tmux.wait_for(lambda s: "The recording ended" in s, "the end of the recording")
        tmux("send-keys", "-t", SESSION, "q")
        assert tmux.wait_for_exit() == 0
    finally:
        tmux.kill_server()
        recorder.close()


# -- one way to warnings and advice ---------------------------------------------------------------


async def test_after_any_jump_warnings_and_advice_are_the_live_monitors(monkeypatch):
    """The replay takes each sample as the live monitor does; after a jump (rebuilt from a copy of
    the rules' state, here one every 8 samples) it shows what a monitor fed the recording in order
    would show at that sample."""
    monkeypatch.setattr(replay_ui, "CHECKPOINT_EVERY", 8)
    source = load(str(REAL))[0]
    samples = source.samples
    expected = []
    tracker = RiskTracker()
    for sample in samples:
        expected.append(tracker.update(sample))
    app = ReplayApp(source, title="t", interval=60.0)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("space")
        visited = set()
        for keys in (["P"], ["w"], ["w"], ["left"], ["home"], ["end"], ["left", "left", "left"], ["w"]):
            await pilot.press(*keys)
            await pilot.pause()
            visited.add(app.position)
            assert app.warnings == expected[app.position], keys
        assert len(visited) >= 5 and any(expected[i] for i in visited)
        oom = max(i for i, s in enumerate(samples) if any(a.last_oom for a in s.agents))
        app.action_jump(oom)
        shown_advice = app.advice(samples[oom], *pid_and_gpu(samples[oom]))
    live = VramtopApp(source, poll=False)
    async with live.run_test(size=(160, 48)) as pilot:
        for sample in samples[: oom + 1]:
            live.post_message(SampleArrived(sample))
            await pilot.pause()
        assert live.warnings == expected[oom]
        assert shown_advice and live.advice(samples[oom], *pid_and_gpu(samples[oom])) == shown_advice


def pid_and_gpu(sample) -> tuple[int, str]:
    gpu = next(g for g in sample.gpus if g.processes)
    return gpu.processes[0].pid, gpu.uuid


@pytest.mark.parametrize("path", [REAL, DEMO])
def test_the_source_gives_each_oom_inside_the_sample_after_it(path):
    recording = read_recording(path)
    source = ReplaySource(recording)
    assert list(source.samples) == recording.samples_with_events()
    assert any(s.events for s in source.samples)
