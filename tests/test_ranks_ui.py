"""The rank view of a distributed job in the TUI (ui/widgets/ranks.py): fed synthetic samples
through the message boundary, and end to end with eight fake ranks serving through the agent's
real sockets and FakeNvml, in a real terminal (tmux)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.fakes.fake_ranks import fake_job
from tests.test_jobs import GiB, job_sample
from tests.test_tui_tmux import SESSION, Tmux
from tests.test_ui import NARROW_SIZE, WIDE_SIZE, feed, monitor, screen_text, toasts

SKEWED = [60 * GiB, 60 * GiB, 60 * GiB, 70 * GiB, 60 * GiB, 62 * GiB, 60 * GiB, 60 * GiB]


def rank_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.lstrip().startswith("rank ") and " GPU " in line]


@pytest.mark.parametrize("size", [NARROW_SIZE, WIDE_SIZE], ids=["80x24", "160x48"])
async def test_r_shows_a_line_per_rank_with_the_nearest_to_oom_marked_and_folds_back(size):
    app = monitor()
    async with app.run_test(size=size) as pilot:
        await feed(pilot, job_sample(SKEWED))
        text = screen_text(app)
        # Folded: the job's header only, below the GPU list, saying which key opens it.
        assert "8 ranks" in text and "rank 3 9.0 GiB left" in text and "r: ranks" in text
        assert "10.0 GiB ×1.17" in text and rank_lines(text) == []
        await pilot.press("r")
        text = screen_text(app)
        lines = rank_lines(text)
        assert [int(line.split()[1]) for line in lines] == list(range(8))
        (nearest,) = [line for line in lines if "◀" in line]
        assert nearest.split()[1] == "3" and "70.5 GiB" in nearest and "9.0 GiB left" in nearest
        assert "step 120" in nearest and "GPU  3" in nearest
        assert not any("▲" in line for line in lines)  # the highest peak is the nearest OOM's own
        assert "60928/81920 MiB" not in text  # the GPU list gave way
        assert all(len(line) <= size[0] for line in text.splitlines())
        if size == WIDE_SIZE:
            assert "master 127.0.0.1:29500" in text and "PID    5003" in nearest and "of 80.0 GiB" in nearest
        await pilot.press("r")
        text = screen_text(app)
        assert rank_lines(text) == [] and "60928/81920 MiB" in text and "r: ranks" in text


async def test_a_single_process_gets_no_rank_view_and_r_says_why():
    app = monitor()
    async with app.run_test(size=NARROW_SIZE, notifications=True) as pilot:
        await feed(pilot, job_sample([40 * GiB], launch=False))
        assert "ranks" not in screen_text(app).split("\n", 1)[1]
        await pilot.press("r")
        await pilot.pause()
        assert "no distributed job here" in toasts(app)


async def test_two_jobs_are_two_groups():
    from tests.test_jobs import merged, torchrun_env

    second = job_sample([50 * GiB, 52 * GiB], parent=4100, first_pid=6000,
                        envs=[torchrun_env(i, 2, port=29501) for i in range(2)])
    app = monitor()
    async with app.run_test(size=WIDE_SIZE) as pilot:
        await feed(pilot, merged(job_sample([40 * GiB, 41 * GiB]), second))
        await pilot.press("r")
        text = screen_text(app)
        assert "127.0.0.1:29500" in text and "127.0.0.1:29501" in text and len(rank_lines(text)) == 4


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_eight_fake_ranks_on_eight_fake_gpus_in_a_real_terminal(tmp_path, size):
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    tmux = Tmux()
    with fake_job(runtime, [62, 62, 62, 68, 62, 63, 62, 62]) as ranks:
        pids = ",".join(str(p.pid) for p in ranks)
        command = ["env", "-u", "FAKE_NVML_GROW", f"XDG_RUNTIME_DIR={runtime}", f"FAKE_NVML_SCALE={pids}",
                   "FAKE_NVML_PER_GPU=1", f"PYTHONPATH={os.environ.get('PYTHONPATH', '')}",
                   sys.executable, "-m", "tests.fakes.run_with_fake_nvml", "-i", "0.5"]
        try:
            tmux.start(command, *size, tmp_path / "status")
            tmux.wait_for(lambda s: "8 ranks" in s and "r: ranks" in s, "the job's header")
            tmux("send-keys", "-t", SESSION, "r")
            screen = tmux.wait_for(lambda s: len(rank_lines(s)) == 8, "a line per rank")
            (nearest,) = [line for line in rank_lines(screen) if "◀" in line]
            assert nearest.split()[1] == "3" and "68.5 GiB" in nearest
            assert "closest" in screen and "rank 3" in screen and "6.0 GiB" in screen
            tmux("send-keys", "-t", SESSION, "q")
            assert tmux.wait_for_exit() == 0
        finally:
            tmux.kill_server()


def test_once_json_with_eight_fake_ranks_shows_one_job(tmp_path):
    import json
    import subprocess

    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    with fake_job(runtime, [62, 62, 62, 68, 62, 63, 62, 62]) as ranks:
        env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "FAKE_NVML_PER_GPU": "1",
               "FAKE_NVML_SCALE": ",".join(str(p.pid) for p in ranks)}
        out = subprocess.run([sys.executable, "-m", "tests.fakes.run_with_fake_nvml", "--once", "--json"],
                             env=env, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True,
                             timeout=60)
    (job,) = json.loads(out.stdout)["jobs"]
    assert job["world_size"] == 8 and [r["rank"] for r in job["ranks"]] == list(range(8))
    assert job["closest_rank"] == 3 and job["peak_spread"]["gap"] == 6 * GiB
    assert [r["pid"] for r in job["ranks"]] == [p.pid for p in ranks]
