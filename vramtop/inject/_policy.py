"""Whether this vramtop may attach to a process, checked before touching it: the machine, the
kernel's ptrace policy (Yama), the owner and the state of the process. Each refusal is one line
with what to do."""

from __future__ import annotations

import errno
import os
import platform
import sys
from pathlib import Path

from ._target import ProcessState
from .errors import AttachRefused

# Yama's setting; a path that tests point elsewhere to play each value.
PTRACE_SCOPE = Path("/proc/sys/kernel/yama/ptrace_scope")
CAP_SYS_PTRACE = 19
SUPPORTED_MACHINES = ("x86_64", "amd64")
RESTART = "restart it with `vramtop run` instead"


def check_machine() -> None:
    if not sys.platform.startswith("linux") or platform.machine().lower() not in SUPPORTED_MACHINES:
        raise AttachRefused(f"attaching to a running process needs Linux on x86_64 (this is "
                            f"{sys.platform} on {platform.machine()}): {RESTART}")


def check_ptrace_scope(pid: int, scope_file: Path | None = None) -> None:
    """Yama's ptrace_scope: 0 lets a user trace their own processes; 1 only descendants,
    2 only with CAP_SYS_PTRACE, 3 nobody. No file: no Yama, ordinary rules."""
    try:
        scope = int((scope_file or PTRACE_SCOPE).read_text().strip())
    except (OSError, ValueError):
        return
    privileged = has_cap_sys_ptrace()
    if scope == 3:
        raise AttachRefused("ptrace is disabled on this machine until it reboots (kernel.yama.ptrace_scope=3): "
                            + RESTART)
    if scope == 2 and not privileged:
        raise AttachRefused("ptrace needs CAP_SYS_PTRACE here (kernel.yama.ptrace_scope=2): run "
                            "`sudo vramtop attach PID`, or " + RESTART)
    if scope == 1 and not privileged and not _descends_from_me(pid):
        raise AttachRefused("only a parent may trace a process here (kernel.yama.ptrace_scope=1): run as root "
                            "or `sudo sysctl kernel.yama.ptrace_scope=0`")


def _descends_from_me(pid: int) -> bool:
    me = os.getpid()
    for _ in range(1024):  # a bound, should /proc change under us
        if pid == me:
            return True
        if pid <= 1:
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
            pid = int(stat.rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


def has_cap_sys_ptrace() -> bool:
    try:
        for line in Path("/proc/self/status").read_bytes().splitlines():  # its Name may not be UTF-8
            if line.startswith(b"CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_PTRACE & 1)
    except (OSError, ValueError):
        pass
    return False


def check_process(pid: int, state: ProcessState) -> None:
    """Another user's process, or one that is stopped or exiting: refused."""
    me = os.geteuid()
    if state.uid != me:
        owner = _user_name(state.uid)
        raise AttachRefused(f"PID {pid} ({state.name}) belongs to {owner}, not to you: attach as that user "
                            f"(`sudo -u {owner} vramtop attach {pid}`), whose monitors can read its agent")
    if state.state in ("T", "t"):
        raise AttachRefused(f"PID {pid} ({state.name}) is stopped: continue it first (`kill -CONT {pid}`)")
    if state.state in ("Z", "X"):
        raise AttachRefused(f"PID {pid} ({state.name}) is exiting")


def refusal_for_errno(pid: int, err: OSError) -> AttachRefused:
    """Why PTRACE_SEIZE failed, when the checks above did not foresee it."""
    if err.errno == errno.EPERM:
        return AttachRefused(
            f"the kernel refused to trace PID {pid} (EPERM): in a container, give it CAP_SYS_PTRACE "
            "(`docker run --cap-add=SYS_PTRACE`) and a seccomp profile that allows ptrace; a process that "
            "made itself undumpable (prctl PR_SET_DUMPABLE) or is already traced (a debugger) cannot be attached")
    return AttachRefused(f"cannot trace PID {pid}: {err.strerror}")


def _user_name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return f"uid {uid}"
