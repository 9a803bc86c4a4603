"""Why an attach did not happen, in one line each, with what to do."""

from __future__ import annotations


class AttachError(Exception):
    """The agent was not started in the target; the process is as it was."""


class AttachRefused(AttachError):
    """Refused before touching the process (or undone): the message says why and the fix."""


class TargetExited(AttachError):
    def __init__(self, pid: int) -> None:
        super().__init__(f"PID {pid} exited during the attach")
        self.pid = pid


class AttachTimeout(AttachError):
    """The process did not stop, or the call into it did not return, in time (it was released)."""


class AgentNotYet(AttachTimeout):
    """The start is queued (or the agent runs) but it serves nothing yet; it comes up by itself."""
