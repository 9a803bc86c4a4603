"""The vramtop agent: runs inside a training process and serves its PyTorch allocator figures.

Enable it in any of three ways::

    vramtop run -- python train.py          # no code change; reaches every Python child
    VRAMTOP_AGENT=1 python train.py         # vramtop installed in the training environment
    import vramtop.agent; vramtop.agent.start()

Importing this package imports only the standard library (and vramtop's own stdlib-only data
modules); it uses the ``torch`` the program imported itself and never imports torch, textual
or pynvml.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ._runtime import DEFAULT_INTERVAL, Agent, sampling_interval

__all__ = ["Agent", "current", "start", "stop"]

_lock = threading.Lock()
_agent: Agent | None = None


def start(interval: float | None = None, directory: str | os.PathLike[str] | None = None,
          attached: bool = False) -> bool:
    """Start the agent once per process. Returns True if it is (now) running. ``attached``:
    started by ``vramtop attach`` in a program that has been running without it.

    Never raises: a failure to start is reported as False, and the program goes on.
    """
    global _agent
    try:
        with _lock:
            if _agent is not None and _agent.pid == os.getpid() and not _agent._stop.is_set():
                return True
            asked = os.environ.get("VRAMTOP_AGENT_INTERVAL", DEFAULT_INTERVAL) if interval is None else interval
            _agent = Agent(interval=sampling_interval(asked), directory=Path(directory) if directory else None,
                           attached=attached)
            _agent.start()
            return True
    except Exception:
        return False


def stop() -> None:
    """Stop sampling, remove the hooks and the socket."""
    global _agent
    with _lock:
        if _agent is not None:
            _agent.stop()
            _agent = None


def current() -> Agent | None:
    return _agent
