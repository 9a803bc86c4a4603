"""Started at interpreter start-up (by vramtop's .pth file or the `vramtop run` bootstrap):
starts the agent when VRAMTOP_AGENT asks for it. Must be cheap and silent otherwise."""

from __future__ import annotations

import os


def enabled() -> bool:
    return os.environ.get("VRAMTOP_AGENT", "").strip().lower() not in ("", "0", "false", "no", "off")


if enabled():
    from vramtop import agent

    agent.start()
