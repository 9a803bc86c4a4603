"""The route for targets on Python 3.14+: ``sys.remote_exec`` (PEP 768), the interpreter's own way
to run a script in another Python process at its next safe point.

vramtop itself may run on another Python, and ``sys.remote_exec`` only talks to its own version,
so the call is made by a helper run with the target's own interpreter (``/proc/PID/exe``, held
open so that a PID reused meanwhile cannot swap the program). The script it queues is the
ptrace route's bootstrap (it only schedules the agent's start and returns), written per attach as
``<pid>.<random>.remote_exec.py`` (mode 0600) beside the agent's socket; it deletes itself when it
runs. One the target has not run yet is kept (the target still runs it at its next safe point);
one whose target is gone is removed by a later attach.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ._target import TargetPython, process_ended
from .errors import AttachError, AttachRefused, AttachTimeout, TargetExited

FIRST = (3, 14)
SCRIPT_SUFFIX = ".remote_exec.py"
HELPER_TIMEOUT_S = 10.0
# Names of interpreters (python, python3, python3.14, python3.14t, python3.14d...): only those are
# run as the helper; an embedding program (its own executable) goes the ptrace route.
_INTERPRETER = re.compile(r"python(3(\.\d+)?)?(t|d|td)?")
# CPython 3.14 honours the option spelled with hyphens and accepts, but ignores, the one with
# underscores; both say the same wish, so both are refused.
_DISABLE_OPTION = "disable-remote-debug"
_DISABLE_OPTIONS = (_DISABLE_OPTION, "disable_remote_debug")
_DISABLE_VARIABLE = "PYTHON_DISABLE_REMOTE_DEBUG"

# Run by the target's interpreter with -I -S: argv is PID, script. The first word of the last
# line on stderr says what went wrong.
HELPER = r'''
import os, sys
pid, script = int(sys.argv[1]), sys.argv[2]
if not hasattr(sys, "remote_exec") or not sys.is_remote_debug_enabled():
    sys.exit("build: this interpreter has no remote debugging support")
try:
    sys.remote_exec(pid, script)
except BaseException as err:
    causes, seen = [], err
    while seen is not None and len(causes) < 8:
        causes.append(seen)
        seen = seen.__cause__ or seen.__context__
    if not os.path.exists("/proc/%d" % pid):
        kind = "gone"
    elif any(isinstance(e, PermissionError) for e in causes):
        kind = "perm"
    elif "not enabled in the remote process" in str(err):
        kind = "disabled"
    else:
        kind = "error"
    sys.exit("%s: %s: %s" % (kind, type(err).__name__, str(err).replace("\n", " ")))
'''


@dataclass(frozen=True)
class Queued:
    script: Path
    helper_s: float  # how long the helper took (its start included)


def takes_remote_exec(pid: int, python: TargetPython) -> bool:
    """A target on 3.14+ whose executable is a Python interpreter (not an embedding program)."""
    if python.version < FIRST:
        return False
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except FileNotFoundError:
        raise TargetExited(pid) from None
    except OSError:
        return False
    return not exe.endswith(" (deleted)") and _INTERPRETER.fullmatch(os.path.basename(exe)) is not None


def check_remote_debug_allowed(pid: int, name: str) -> None:
    """The target's own switch, as its interpreter reads it at start: ``-X disable-remote-debug``
    (or its underscore spelling), or PYTHON_DISABLE_REMOTE_DEBUG set (even empty) unless -E or -I
    made it ignore the environment."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        raise TargetExited(pid) from None
    flags, xoptions = interpreter_options([a.decode(errors="replace") for a in argv if a])
    for option in xoptions:
        if option.split("=", 1)[0] in _DISABLE_OPTIONS:
            raise _disabled(pid, name, f"-X {option}")
    if "E" not in flags and "I" not in flags and any(e.startswith(_DISABLE_VARIABLE.encode() + b"=") for e in environ):
        raise _disabled(pid, name, f"{_DISABLE_VARIABLE} in its environment")


def _disabled(pid: int, name: str, why: str) -> AttachRefused:
    return AttachRefused(f"PID {pid} ({name}) was started with remote debugging disabled ({why}), which "
                         "vramtop honours: restart it without that, or with `vramtop run`")


def interpreter_options(argv: list[str]) -> tuple[set[str], list[str]]:
    """The one-letter flags and the -X options of a Python command line (up to the script,
    -c or -m)."""
    flags: set[str] = set()
    xoptions: list[str] = []
    args = iter(argv[1:])
    for arg in args:
        if arg == "--" or not arg.startswith("-") or arg == "-":
            break
        if arg.startswith("--"):
            if arg == "--check-hash-based-pycs":
                next(args, None)
            continue
        letters = arg[1:]
        for i, letter in enumerate(letters):
            if letter in "cm":
                return flags, xoptions
            if letter in "XW":
                value = letters[i + 1:] or next(args, "")
                if letter == "X":
                    xoptions.append(value)
                break
            flags.add(letter)
    return flags, xoptions


def clean_stale_scripts(directory: Path) -> None:
    """Scripts whose target is gone (it never ran them)."""
    for path in directory.glob("*" + SCRIPT_SUFFIX):
        pid = path.name.split(".", 1)[0]
        if pid.isdecimal() and process_ended(int(pid), settle=0):
            with contextlib.suppress(OSError):
                path.unlink()


def write_script(pid: int, directory: Path, code: bytes) -> Path:
    """The bootstrap as a script that deletes itself first. A script still pending for this PID
    is rewritten in place: ``sys.remote_exec`` keeps only the latest path per thread, so a new
    name would leave the old file behind for the process's life."""
    pending = sorted(directory.glob(f"{pid}.*{SCRIPT_SUFFIX}"))
    path = pending[0] if pending else directory / f"{pid}.{secrets.token_hex(8)}{SCRIPT_SUFFIX}"
    text = (f"try:\n    __import__('os').unlink({str(path)!r})\nexcept BaseException:\n    pass\n").encode() + code
    temporary = directory / f".{path.name}.{secrets.token_hex(4)}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def start_time(pid: int) -> int:
    """The process's start time in clock ticks: with the PID, it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        return int(stat.rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        raise TargetExited(pid) from None


def queue_script(pid: int, started: int, python: TargetPython, script: Path) -> Queued:
    """Have the target's interpreter call ``sys.remote_exec(pid, script)``. ``started`` is the
    start time read before the target was inspected: the executable opened here is that
    process's. On failure the script is removed, except after a timeout (the call may have
    reached the target, which would then look for it)."""
    try:
        exe = os.open(f"/proc/{pid}/exe", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        script.unlink(missing_ok=True)
        raise TargetExited(pid) from None
    try:
        if start_time(pid) != started:
            raise TargetExited(pid)
        begun = time.monotonic()
        try:
            done = subprocess.run([f"/proc/self/fd/{exe}", "-I", "-S", "-c", HELPER, str(pid), str(script)],
                                  pass_fds=(exe,), capture_output=True, text=True, timeout=HELPER_TIMEOUT_S,
                                  stdin=subprocess.DEVNULL, cwd="/")
        except subprocess.TimeoutExpired:
            raise AttachTimeout(f"sys.remote_exec into PID {pid} did not return within {HELPER_TIMEOUT_S:g} s; "
                                f"the script it may have queued, {script}, is kept and runs if it did") from None
        took = time.monotonic() - begun
    except BaseException as err:
        if not isinstance(err, AttachTimeout):
            script.unlink(missing_ok=True)
        raise
    finally:
        os.close(exe)
    if done.returncode != 0:
        script.unlink(missing_ok=True)
        raise _failure(pid, python, done.stderr)
    return Queued(script, took)


def _failure(pid: int, python: TargetPython, stderr: str) -> AttachError:
    said = stderr.strip().splitlines()[-1] if stderr.strip() else "no reason given"
    kind, _, detail = said.partition(": ")
    if kind == "gone" or process_ended(pid, settle=0.2):
        return TargetExited(pid)
    if kind == "build":
        return AttachRefused(f"PID {pid}'s Python {python.release} was built without remote debugging support "
                             "(--without-remote-debug), which sys.remote_exec needs: restart it with `vramtop run`")
    if kind == "disabled":
        return AttachRefused(f"PID {pid} has remote debugging disabled ({detail}): restart it without "
                             f"-X {_DISABLE_OPTION} and {_DISABLE_VARIABLE}, or with `vramtop run`")
    if kind == "perm":
        return AttachRefused(f"the kernel refused sys.remote_exec into PID {pid} (EPERM): it needs the same "
                             "permission as ptrace (Yama ptrace_scope, CAP_SYS_PTRACE in a container, a dumpable "
                             f"process): {detail}")
    return AttachError(f"sys.remote_exec into PID {pid} failed: {detail or said}")
