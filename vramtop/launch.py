"""The environment that enables the agent in a command and all its Python children."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import vramtop

BOOTSTRAP_DIR = Path(vramtop.__file__).resolve().parent / "agent" / "bootstrap"


def agent_environment(base: Mapping[str, str], interval: float | None = None) -> dict[str, str]:
    """``base`` plus what makes every Python process of the command start the agent:
    the bootstrap directory first on PYTHONPATH, VRAMTOP_AGENT=1 and where vramtop lives."""
    env = dict(base)
    env["VRAMTOP_AGENT"] = "1"
    env["VRAMTOP_HOME"] = str(BOOTSTRAP_DIR.parent.parent.parent)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(BOOTSTRAP_DIR)]
    env["PYTHONPATH"] = os.pathsep.join([str(BOOTSTRAP_DIR), *paths])
    if interval is not None:
        env["VRAMTOP_AGENT_INTERVAL"] = str(interval)
    return env
