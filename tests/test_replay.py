"""`vramtop replay`: the monitor over a recording, driven by its playhead."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.test_tui_tmux import SESSION, Tmux
from tests.test_ui import line_with, screen_text
from vramtop.commands.replay import load
from vramtop.recording import read_recording
from vramtop.sources.replay import ReplaySource
from vramtop.ui.replay import ReplayApp, _peak_index, first_busy_index
from vramtop.units import mib

REPO = Path(__file__).resolve().parent.parent
REAL = REPO / "screenshots" / "data" / "gpt2-training.jsonl"  # recorded on an H200


@pytest.fixture(scope="module")
def samples():
    return list(read_recording(REAL).samples)


def replay_of(path: Path = REAL) -> ReplaySource:
    """The recording as `vramtop replay` plays it."""
    return load(str(path))[0]


def used_mib(sample) -> str:
    g = sample.gpus[0]
    return f"{mib(g.memory_used)}/{mib(g.memory_total)} MiB"


async def test_replay_steps_jumps_to_the_peak_and_to_warnings(samples):
    app = ReplayApp(replay_of(), title="t", interval=0.5, speed=1.0)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("space")  # pause at the start
        await pilot.pause()
        assert "REPLAY 1/" in line_with(app, "REPLAY") and "PAUSED" in line_with(app, "REPLAY")
        assert used_mib(samples[0]) in screen_text(app)
        await pilot.press("right", "right")
        await pilot.pause()
        assert app.position == 2 and used_mib(samples[2]) in screen_text(app)
        await pilot.press("left")
        await pilot.pause()
        assert app.position == 1
        await pilot.press("P")
        await pilot.pause()
        peak = _peak_index(samples)
        assert app.position == peak and used_mib(samples[peak]) in screen_text(app)
        assert max(s.gpus[0].memory_used for s in samples) == samples[peak].gpus[0].memory_used
        # Warnings raised in this real run: its leak, then the (caught) OOM it ends with (its
        # fragmented cache harmed nothing until then: no line for it). "w" visits them in order.
        kinds = []
        for _ in range(6):
            await pilot.press("w")
            await pilot.pause()
            kinds.append({w.kind for w in app.warnings})
            if "oom" in kinds[-1]:
                break
        assert "leak" in set().union(*kinds) and "oom" in kinds[-1]
        assert "out of memory" in screen_text(app)
        # W shows every warning whole, the action included; Esc goes back.
        await pilot.press("W")
        await pilot.pause()
        detail = app.screen.query_one("#warnings-text").render()
        oom = next(w for w in app.warnings if w.kind == "oom")
        assert oom.sentence in str(detail) and oom.action in str(detail).replace("\n", " ")
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.screen_stack[0]
        # The post-mortem's diagnosis (the 8x evaluation batch: a spike) replaces the levers,
        # which would treat the symptom.
        assert "its OOM was a spike, not a lack of capacity" in screen_text(app)
        assert "batch size / gradient accumulation" not in screen_text(app)
        await pilot.press("plus", "plus")
        await pilot.pause()
        assert "×4" in line_with(app, "REPLAY")
        await pilot.press("end")
        await pilot.pause()
        assert app.position == len(samples) - 1


async def test_replay_plays_on_by_itself(samples):
    recording = read_recording(REAL)
    app = ReplayApp(ReplaySource(replace(recording, samples=recording.samples[:6])), title="t", interval=0.05,
                    speed=4.0)
    async with app.run_test(size=(80, 24)) as pilot:
        for _ in range(100):
            await pilot.pause(0.02)
            if app.position == 5:
                break
        assert app.position == 5 and "end" in line_with(app, "REPLAY")


def vramtop(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vramtop", *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def test_replay_refuses_clearly(tmp_path):
    missing = vramtop("replay", str(tmp_path / "none.jsonl"))
    assert missing.returncode == 1 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
    newer = tmp_path / "newer.jsonl"
    newer.write_text('{"type":"header","schema":"vramtop.recording","version":99}\n')
    result = vramtop("replay", str(newer))
    assert result.returncode == 1 and "newer" in result.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(REAL.read_bytes().split(b"\n", 1)[0] + b"\n")  # the header alone
    result = vramtop("replay", str(empty))
    assert result.returncode == 1 and "no samples" in result.stderr
    assert vramtop("replay", str(REAL)).returncode == 2  # no terminal


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_a_truncated_recording_replays_up_to_the_damage_in_a_real_terminal(tmp_path):
    data = REAL.read_bytes()
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(data[: len(data) * 2 // 3])  # as if the recorder was killed mid-line
    tmux = Tmux()
    try:
        tmux.start([sys.executable, "-m", "vramtop", "replay", str(cut)], 80, 24, tmp_path / "status")
        screen = tmux.wait_for(lambda s: "REPLAY" in s and "no end record" in s, "the replay")
        assert "MiB" in screen
        tmux("send-keys", "-t", SESSION, "q")
        assert tmux.wait_for_exit() == 0
    finally:
        tmux.kill_server()


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_demo_runs_with_no_gpu_in_a_real_terminal(tmp_path):
    """`vramtop demo` is what a new user without a GPU sees first: the packaged H100 recording."""
    tmux = Tmux()
    try:
        tmux.start([sys.executable, "-m", "vramtop", "demo", "--speed", "32"], 80, 24, tmp_path / "status")
        screen = tmux.wait_for(lambda s: "REPLAY" in s and "H100" in s and "Demo:" in s, "the demo")
        # At 32x the run plays through to its end: the agent's bill and the OOM it ends with.
        screen = tmux.wait_for(lambda s: " end" in s and "out of memory" in s, "the end of the demo", timeout=30)
        assert "●" in screen  # the training process runs the agent
        tmux("send-keys", "-t", SESSION, "q")
        assert tmux.wait_for_exit() == 0
    finally:
        tmux.kill_server()


async def test_warnings_that_appear_are_drawn_across_the_whole_width(samples):
    # The list is hidden while nothing is wrong; when the first warning shows up it must be cut
    # at the terminal's edge, not at the width it had while hidden.
    app = ReplayApp(replay_of(), title="t", interval=0.5, speed=1.0)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("space")
        await pilot.pause()
        assert not app.warnings
        await pilot.press("P")  # the peak, where warnings are in force
        await pilot.pause()
        await pilot.pause()
        assert app.warnings
        (first, *_) = [line for line in screen_text(app).splitlines() if "CRITICAL" in line or "INFO" in line]
        assert len(first.rstrip()) >= 75, first


async def test_the_demo_opens_where_the_training_starts(samples):
    # The recording began seconds before the program used the GPU: the demo skips that lead-in.
    start = first_busy_index(samples)
    assert not any(g.processes for g in samples[start].gpus)
    assert any(g.processes for g in samples[start + 2].gpus)
    assert start > 5
    app = ReplayApp(replay_of(), title="demo", interval=0.5, speed=1.0, start=start)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("space")
        await pilot.pause()
        assert app.position == start and f"REPLAY {start + 1}/{len(samples)}" in line_with(app, "REPLAY")
        await pilot.press("home")  # the lead-in is still there for whoever wants it
        await pilot.pause()
        assert app.position == 0
    assert first_busy_index([samples[0]]) == 0  # nothing ever runs: from the start


@pytest.mark.parametrize("key", ["t", "k"])
async def test_a_replay_never_signals_a_process(samples, monkeypatch, key):
    # A recorded PID may be a live process here, even one with the same start time: refused.
    sent = []
    monkeypatch.setattr("vramtop.processes.send_signal", lambda *a: sent.append(a) or "sent")
    app = ReplayApp(replay_of(), title="t", interval=0.5, speed=1.0, start=len(samples) // 2)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("space")
        await pilot.pause()
        footer = line_with(app, "Quit")
        assert "Term" not in footer and "Kill" not in footer
        await pilot.press(key)
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        assert sent == [] and app.screen is app.screen_stack[0]
        assert any("this is a recording" in str(n.message) for n in app._notifications)


DEMO = REPO / "vramtop" / "demo" / "gpt2-h100.jsonl.gz"


async def test_at_80x24_the_demos_worst_moment_shows_the_failure_the_first_thing_and_the_numbers():
    # `vramtop demo` (an older agent's H100 recording) at its OOM frame, in a tmux-sized pane.
    rec = read_recording(DEMO)
    samples = rec.samples_with_events()
    last = max(i for i, s in enumerate(samples) if any(a.last_oom for a in s.agents))
    app = ReplayApp(replay_of(DEMO), title="demo", interval=60.0, speed=1.0, start=last)
    async with app.run_test(size=(80, 24)) as pilot:  # a minute a sample: the playhead stays
        await pilot.pause()
        assert app.position == last
        screen = screen_text(app)
        # Diagnosed from the recording's step figures, as `vramtop report` does: the leak first.
        for seen in ("OUT OF MEMORY", "First thing to do (leak)", "alloc ", "rsv ", "fits ≤", "params", "activ*",
                     "non-PT"):
            assert seen in screen, (seen, screen)


async def test_a_replay_before_the_agent_connects_says_so(samples):
    early = next(i for i, s in enumerate(samples) if any(g.processes for g in s.gpus) and not s.agents)
    app = ReplayApp(replay_of(), title="t", interval=0.5, speed=1.0, start=early)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("space")
        await pilot.pause()
        screen = screen_text(app)
        assert "No agent connected at this moment of the recording" in screen
        assert "No vramtop agent in this process" not in screen


async def test_at_80x24_the_oom_frame_shows_the_numbers_and_the_first_thing_to_do():
    # The worst moment of the recording: the OOM. Its headline, the first thing to do and the
    # bill's numbers are on screen; the rest of the post-mortem is a PgDn away; the recording
    # machine's file path is not shown.
    rec = read_recording(REAL)
    samples = rec.samples_with_events()
    last = max(i for i, s in enumerate(samples) if any(a.last_oom for a in s.agents))
    app = ReplayApp(replay_of(), title="t", interval=0.5, speed=1.0, start=last)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("space")  # pause there
        await pilot.pause()
        assert app.position == last
        screen = screen_text(app)
        assert "OUT OF MEMORY" in screen and "alloc 126 GiB" in screen and "activ*" in screen
        assert "First thing to do (spike)" in screen and "A spike: this request" not in screen
        for _ in range(3):
            await pilot.press("pagedown")
            await pilot.pause()
            if "A spike: this request" in screen_text(app):
                break
        assert "A spike: this request" in screen_text(app)
        assert "post-mortem: /tmp" not in screen_text(app)
        await pilot.press("pageup", "pageup", "pageup")
        await pilot.pause()
        assert "alloc 126 GiB" in screen_text(app)


async def test_the_replay_footer_keeps_its_own_keys_at_80_columns(samples):
    app = ReplayApp(replay_of(), title="t", interval=0.5, speed=1.0)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        footer = line_with(app, "Quit")
        for key in ("← Back", "→ Step", "+ Fast", "- Slow", "w Warning", "P Peak", "q Quit"):
            assert key in footer, footer


async def test_paused_and_the_sort_key_stay_on_an_80_column_status_line(samples):
    app = ReplayApp(replay_of(), title="t", interval=0.5, speed=1.0, start=len(samples) // 2)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("space")
        await pilot.pause()
        status = screen_text(app).splitlines()[0]
        assert "PAUSED" in status and "sort gpu memory" in status, status
