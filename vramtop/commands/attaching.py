"""Starting the agent in a running process for ``vramtop attach`` and ``record --pid --inject``:
the question, the injection (vramtop/inject/) and its outcome in the CLI's words."""

from __future__ import annotations

import sys

from vramtop.errors import EXIT_FAILURE, VramtopError

# How long the CLI waits for the agent's socket once the start is queued. Past it the agent still
# comes up by itself (once the main thread runs Python again) and the monitor finds it then.
AGENT_WAIT_S = 15.0


def start_agent_in(pid: int, ask: bool, instead: str, interval: float | None = None) -> str | None:
    """Start the agent in ``pid`` (asking first when ``ask``). Returns a standing notice for the
    monitor (None when there is nothing to say); VramtopError with the reason and ``instead``
    (what works without the agent) when it was not started. A declined question raises ``Declined``."""
    from vramtop.inject import AttachError, AttachRefused, AttachTimeout, attach_agent, inspect_target
    from vramtop.inject.errors import AgentNotYet
    from vramtop.protocol import runtime_dir

    directory = runtime_dir()
    try:
        target = inspect_target(pid, directory)
        if ask and not _confirm(f"start the vramtop agent inside PID {pid} ({_short(target.command)})? [y/N] "):
            raise Declined
        print(f"vramtop: starting the agent in PID {pid} ({target.how})…", file=sys.stderr)
        attach_agent(pid, directory, interval=interval, wait=AGENT_WAIT_S)
    except AgentNotYet as err:
        return f"{err}; its bill appears here then"
    except AttachRefused as err:
        raise VramtopError(f"{err} ({instead})", EXIT_FAILURE) from None
    except (AttachTimeout, AttachError) as err:
        raise VramtopError(f"attach failed: {err}", EXIT_FAILURE) from None
    return target.note


class Declined(Exception):
    """The user answered no."""


def _confirm(question: str) -> bool:
    try:
        answer = input(question)
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def _short(command: str, limit: int = 60) -> str:
    return command if len(command) <= limit else command[: limit - 1] + "…"
