"""End to end: the real ``vramtop`` command in a real terminal (a detached tmux session, 80x24),
reading FakeNvml, driven with keys, read back with ``capture-pane``."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

REPO = Path(__file__).resolve().parent.parent
SESSION = "vramtop"


class Tmux:
    """A private tmux server (its own socket), so the test never touches the user's sessions."""

    def __init__(self) -> None:
        self.socket = f"vramtop-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.socket_path: str | None = None  # known once the server runs
        self.status_file: Path | None = None

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", SESSION)

    def pane(self, fmt: str) -> str:
        return self("display-message", "-p", "-t", SESSION, fmt).strip()

    def wait_for(self, condition: Callable[[str], bool], what: str, timeout: float = 20.0) -> str:
        """Poll the screen until ``condition(screen)`` holds; fail showing the screen if not."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if condition(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen:\n{screen}")
            time.sleep(0.05)

    def start(self, command: list[str], width: int, height: int, status_file: Path) -> None:
        """Run ``command`` in a new ``width`` x ``height`` session; its exit status goes to
        ``status_file`` (a shell records it: tmux does not always reap its pane's process)."""
        script = f"{shlex.join(command)}; echo $? > {shlex.quote(str(status_file))}"
        # remain-on-exit keeps the pane, so the screen left behind can be read.
        self("new-session", "-d", "-s", SESSION, "-x", str(width), "-y", str(height),
             "-c", str(REPO), shlex.join(["sh", "-c", script]),
             ";", "set-option", "-t", SESSION, "remain-on-exit", "on")
        self.socket_path = self.pane("#{socket_path}")
        self.status_file = status_file

    def exit_status(self) -> int | None:
        assert self.status_file is not None
        text = self.status_file.read_text().strip() if self.status_file.exists() else ""
        return int(text) if text else None

    def wait_for_exit(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while (status := self.exit_status()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"vramtop did not exit; the screen:\n{self.screen()}")
            time.sleep(0.05)
        return status

    def kill_server(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)
        if self.socket_path:  # tmux may leave its socket file behind
            Path(self.socket_path).unlink(missing_ok=True)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    server = Tmux()
    try:
        yield server
    finally:
        server.kill_server()


def test_monitor_in_an_80x24_terminal_shows_nvidia_smi_numbers_and_obeys_keys(tmux, tmp_path):
    # The memory figures stay fixed (FAKE_NVML_GROW unset) so the exact numbers can be checked.
    command = ["env", "-u", "FAKE_NVML_GROW",
               sys.executable, "-m", "tests.fakes.run_with_fake_nvml", "-i", "0.2"]
    tmux.start(command, 80, 24, status_file=tmp_path / "status")

    # GPU 0 of the fake box: 40123 MiB + 200 KiB used of 81559 MiB; nvidia-smi rounds up: 40124.
    # GPU 1 is idle; the one process on GPU 0 holds 39800 MiB.
    screen = tmux.wait_for(lambda s: "40124/81559 MiB" in s and "39800 MiB" in s and "q Quit" in s,
                           "the first sample and the key bar")
    assert re.search(r" 0/81559 MiB", screen) and "H100 80GB HBM3" in screen

    tmux("send-keys", "-t", SESSION, "?")
    tmux.wait_for(lambda s: "this help (any key closes it)" in s, "the help")
    tmux("send-keys", "-t", SESSION, "q")  # closes the help, and only that
    tmux.wait_for(lambda s: "any key closes it" not in s and "40124/81559 MiB" in s,
                  "the help to close")
    tmux("send-keys", "-t", SESSION, "s")  # still running, still answering keys
    tmux.wait_for(lambda s: "sort host rss" in s, "the sort order to change")
    assert tmux.exit_status() is None

    tmux("send-keys", "-t", SESSION, "q")
    assert tmux.wait_for_exit() == 0
    # The terminal is given back: the monitor's screen is gone.
    assert "81559 MiB" not in tmux.screen()
