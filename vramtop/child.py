"""A command that ``vramtop record`` runs and watches: started with the agent enabled, the
signals vramtop receives turned into a stop reason or passed on to it, its exit status told as
a shell tells it."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from types import FrameType
from typing import Any


def start_with_agent(command: Sequence[str]) -> subprocess.Popen[bytes]:
    """Start ``command`` with the agent enabled in it and its Python children (as ``vramtop run``
    does); OSError when it cannot start."""
    from vramtop.launch import agent_environment

    return subprocess.Popen(list(command), env=agent_environment(os.environ))


def start_failure_code(err: OSError) -> int:
    """The exit code a shell gives a command that did not start: 127 not found, 126 otherwise."""
    return 127 if isinstance(err, FileNotFoundError) else 126


def exit_code(returncode: int) -> int:
    """A child's exit status the way a shell reports it: 128 + N when signal N killed it."""
    return 128 - returncode if returncode < 0 else returncode


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie does not)."""
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


class Signals:
    """Turns SIGINT/SIGTERM/SIGHUP into a stop reason (or a signal for the command).

    The handlers only set attributes: a lock taken in a signal handler can deadlock the thread
    it interrupted.
    """

    NAMES: dict[int, str] = {
        signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", signal.SIGHUP: "hangup"}

    def __init__(self) -> None:
        self.reason: str | None = None
        self.child: subprocess.Popen[bytes] | None = None  # gets SIGTERM/SIGHUP instead of us
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Signals:
        for signum in self.NAMES:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                break
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def watch(self, child: subprocess.Popen[bytes]) -> None:
        """From now on pass SIGTERM and SIGHUP on to ``child``, and pass on one that came while
        it was starting."""
        self.child = child
        if self.reason is not None:
            child.send_signal(signal.SIGTERM if self.reason != "hangup" else signal.SIGHUP)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.child is None:
            self.reason = self.NAMES.get(signum, f"signal {signum}")
        elif signum != signal.SIGINT and self.child.returncode is None:
            # The terminal delivers Ctrl-C to the whole foreground group, the command included.
            self.child.send_signal(signum)
