"""The real monitor in a real terminal (tmux) on a real GPU: a training run with the agent
shows its bill; `vramtop attach` on a process without the agent says how to enable it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_tui_tmux import SESSION, Tmux

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path, monkeypatch):
    run = tmp_path / "xdg"
    run.mkdir(mode=0o700)
    values = {**os.environ, "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}", "XDG_RUNTIME_DIR": str(run)}
    return values


@pytest.fixture
def tmux():
    server = Tmux()
    try:
        yield server
    finally:
        server.kill_server()


def test_monitor_shows_the_bill_of_a_training_run(env, tmux, tmp_path):
    train = subprocess.Popen([sys.executable, "-m", "vramtop", "run", "--", sys.executable,
                              "bench/train_demo.py", "--steps", "2000", "--batch", "8"],
                             cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        tmux.start(["env", f"XDG_RUNTIME_DIR={env['XDG_RUNTIME_DIR']}", f"PYTHONPATH={env['PYTHONPATH']}",
                    sys.executable, "-m", "vramtop", "-i", "0.5"], 160, 48, tmp_path / "status")
        # tmux may keep its default 80x24 whatever -x/-y say: accept the wide or the narrow bill.
        screen = tmux.wait_for(lambda s: f"●{train.pid}" in s and "activ" in s and "optim" in s
                               and "GPT2LMHeadModel" in s, "the agent's bill", timeout=90)
        print(screen)
        assert "NVML" in screen and ("grads" in screen or "gradients" in screen)
        tmux("send-keys", "-t", SESSION, "q")
        assert tmux.wait_for_exit() == 0
    finally:
        train.kill()
        train.wait()


def test_attach_to_a_process_without_the_agent_says_how_to_enable_it(env, tmux, tmp_path):
    # A program that never heard of vramtop (its main thread wakes every 50 ms: the agent starts there).
    holder = subprocess.Popen([sys.executable, "-c", "import time, torch; x = torch.ones(1 << 28, device='cuda');"
                               "print('READY', flush=True)\nfor _ in range(2400): time.sleep(0.05)"],
                              stdout=subprocess.PIPE, text=True,
                              env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "READY"
        time.sleep(0.5)
        tmux.start(["env", f"XDG_RUNTIME_DIR={env['XDG_RUNTIME_DIR']}", f"PYTHONPATH={env['PYTHONPATH']}",
                    sys.executable, "-m", "vramtop", "attach", "--no-inject", str(holder.pid)], 160, 48,
                   tmp_path / "status")
        screen = tmux.wait_for(lambda s: f"No vramtop agent in PID {holder.pid}" in s and str(holder.pid) in s,
                               "the attach notice", timeout=30)
        print(screen)
        tmux("send-keys", "-t", SESSION, "q")
        assert tmux.wait_for_exit() == 0
        # Now with the agent started inside it: its allocator figures, and what it cannot see yet.
        tmux.kill_server()  # the first session stays on exit (remain-on-exit)
        tmux.start(["env", f"XDG_RUNTIME_DIR={env['XDG_RUNTIME_DIR']}", f"PYTHONPATH={env['PYTHONPATH']}",
                    sys.executable, "-m", "vramtop", "attach", "--yes", str(holder.pid)], 160, 48,
                   tmp_path / "status2")
        screen = tmux.wait_for(lambda s: "Attached late" in s, "the attached agent's bill", timeout=60)
        print(screen)
        tmux("send-keys", "-t", SESSION, "q")
        assert tmux.wait_for_exit() == 0
        assert holder.poll() is None, "the attach ended the program"
    finally:
        holder.kill()
        holder.wait()
    result = subprocess.run([sys.executable, "-m", "vramtop", "attach", str(os.getpid())], capture_output=True,
                            text=True, cwd=REPO, env=env, timeout=60)
    assert result.returncode == 4 and "uses no NVIDIA GPU" in result.stderr
