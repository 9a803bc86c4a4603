"""The environment that enables the agent in a command and all its Python children."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import vramtop
from vramtop.protocol import AGENT_TRACE_ENV

BOOTSTRAP_DIR = Path(vramtop.__file__).resolve().parent / "agent" / "bootstrap"


DEFAULT_TRACE_ENTRIES = 100_000  # alloc/free events the history keeps (a ring buffer): PyTorch's own example


def agent_environment(base: Mapping[str, str], interval: float | None = None,
                      trace_entries: int | None = None) -> dict[str, str]:
    """``base`` plus what makes every Python process of the command start the agent:
    the bootstrap directory first on PYTHONPATH, VRAMTOP_AGENT=1 and where vramtop lives;
    with ``trace_entries``, PyTorch's allocation history of that many entries (``--trace``)."""
    env = dict(base)
    env.pop(AGENT_TRACE_ENV, None)  # only this command's own --trace turns it on
    if trace_entries is not None:
        env[AGENT_TRACE_ENV] = str(trace_entries)
    env["VRAMTOP_AGENT"] = "1"
    env["VRAMTOP_HOME"] = str(BOOTSTRAP_DIR.parent.parent.parent)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(BOOTSTRAP_DIR)]
    env["PYTHONPATH"] = os.pathsep.join([str(BOOTSTRAP_DIR), *paths])
    if interval is not None:
        env["VRAMTOP_AGENT_INTERVAL"] = str(interval)
    return env
