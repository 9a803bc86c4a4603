"""Start vramtop's agent inside a running Python process (``vramtop attach PID``).

Two routes to the same bootstrap. A Python 3.14+ interpreter gets it through ``sys.remote_exec``
(PEP 768), called by a helper run with the target's own interpreter (_remote_exec.py). Python
3.10-3.13, and programs that embed Python, get it through a pure-Python ptrace injector for
x86_64 Linux: no compiler, debugger or extension module, whatever Python vramtop itself runs on.
The jobs, one module each: the checks before touching the process (_policy.py), the target's
Python and its C API addresses (_target.py, reading ELF symbols with _elf.py), ptrace itself
(_ptrace.py), a call made by the stopped thread (_remote.py), the injection (_inject.py), and the
injected code with what it reports back (_bootstrap.py).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

from vramtop.protocol import ensure_private_dir

from ._bootstrap import agent_serving, bootstrap_code, marker_path, wait_for_agent
from ._inject import queue_bootstrap
from ._policy import check_machine, check_process, check_ptrace_scope
from ._remote_exec import (
    check_remote_debug_allowed,
    clean_stale_scripts,
    queue_script,
    start_time,
    takes_remote_exec,
    write_script,
)
from ._target import Mapping, TargetPython, find_python, process_state, read_maps
from .errors import AgentNotYet, AttachError, AttachRefused, AttachTimeout, TargetExited

__all__ = ["AttachError", "AttachRefused", "AttachTimeout", "Attached", "TargetExited", "agent_serving",
           "attach_agent", "inspect_target", "wait_for_agent"]

STOP_TIMEOUT_S = 5.0  # for the thread to stop, and for each call in it to return
NEWEST_TESTED = (3, 14)
REMOTE_EXEC = "remote_exec"
PTRACE = "ptrace"


@dataclass(frozen=True)
class Attached:
    pid: int
    name: str
    command: str
    version: tuple[int, int]  # the target's Python
    interpreter: str = ""  # its release, "3.14.2" ("3.10" where the binary does not say)
    route: str = PTRACE  # REMOTE_EXEC (sys.remote_exec) or PTRACE
    helper_s: float | None = None  # how long sys.remote_exec's helper took, on that route

    @property
    def how(self) -> str:
        """The interpreter and the route, for the CLI's message."""
        through = "sys.remote_exec" if self.route == REMOTE_EXEC else "ptrace"
        return f"Python {self.interpreter or '.'.join(map(str, self.version))}, through {through}"

    @property
    def note(self) -> str | None:
        """A word about the target's Python when it differs from vramtop's own."""
        mine = sys.version_info[:2]
        if self.version == mine:
            return None
        version = ".".join(map(str, self.version))
        untested = ", newer than vramtop has been tested with" if self.version > NEWEST_TESTED else ""
        return (f"PID {self.pid} runs Python {version}{untested}; vramtop runs on {mine[0]}.{mine[1]}: "
                "the agent runs on the target's Python (it needs only the standard library)")


def inspect_target(pid: int, directory: Path, scope_file: Path | None = None) -> Attached:
    """What attaching would start in: AttachRefused with the reason when it cannot, or when
    the agent already serves there. Touches nothing."""
    return _inspect(pid, directory, scope_file)[0]


def attach_agent(pid: int, directory: Path, *, interval: float | None = None, wait: float = 30.0,
                 timeout: float = STOP_TIMEOUT_S, scope_file: Path | None = None) -> Attached:
    """Start the agent in ``pid`` and wait (up to ``wait`` seconds) until it serves its socket
    in ``directory``. A failure to inject leaves the process as it was."""
    started = start_time(pid)
    target, python, maps = _inspect(pid, directory, scope_file)
    ensure_private_dir(directory)  # the agent's socket and the bootstrap's word go there
    home = Path(__file__).resolve().parent.parent.parent  # the directory vramtop/ is in
    marker_path(pid, directory).unlink(missing_ok=True)
    code = bootstrap_code(home, directory, interval)
    if target.route == PTRACE:
        queue_bootstrap(pid, python, maps, code, timeout)
        wait_for_agent(pid, directory, wait)
        return target
    clean_stale_scripts(directory)
    queued = queue_script(pid, started, python, write_script(pid, directory, code))
    try:
        wait_for_agent(pid, directory, wait)
    except AgentNotYet as err:
        if queued.script.exists():  # not run yet: the target runs it at its next safe point
            raise AgentNotYet(f"{err} (the script sys.remote_exec queued stays until then: {queued.script}; "
                              "an audit hook of the program may also have refused to run it)") from None
        raise
    except TargetExited:
        queued.script.unlink(missing_ok=True)
        raise
    return replace(target, helper_s=queued.helper_s)


def _inspect(pid: int, directory: Path, scope_file: Path | None) -> tuple[Attached, TargetPython, list[Mapping]]:
    check_machine()
    state = process_state(pid)
    check_process(pid, state)
    if agent_serving(pid, directory):
        raise AttachRefused(f"PID {pid} ({state.name}) already runs the vramtop agent: nothing to attach")
    check_ptrace_scope(pid, scope_file)
    maps = read_maps(pid)
    python = find_python(pid, maps, state.name)
    route = PTRACE
    if takes_remote_exec(pid, python):
        check_remote_debug_allowed(pid, state.name)
        route = REMOTE_EXEC
    return Attached(pid, state.name, state.command, python.version, python.release, route), python, maps
