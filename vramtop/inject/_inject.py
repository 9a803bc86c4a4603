"""The injection itself: inside the stopped main thread, map a page, write the bootstrap there and
queue it with ``Py_AddPendingCall(PyRun_SimpleString, page)``; then restore and release.

No code of the target's libraries runs but ``Py_AddPendingCall``, which Python documents as safe
to call from any thread without the GIL (it takes only the lock of the pending-call queue). The
page comes from an mmap system call made by the thread itself, never from malloc, whose lock the
interrupted thread may hold. The page stays mapped for the program's life (it is tiny, and the
pending call reads it later).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

from ._remote import MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE, SYS_MMAP, SYSCALL, Tracee
from ._target import Mapping, TargetPython
from .errors import AttachError, AttachTimeout

SYS_MUNMAP = 11
PAGE = 4096
SCAN_LIMIT = 4 << 20  # bytes of one executable mapping searched for a syscall instruction

T = TypeVar("T")


def queue_bootstrap(pid: int, python: TargetPython, maps: list[Mapping], code: bytes, timeout: float) -> None:
    """Queue ``code`` to run in ``pid``'s main thread. The tracing is done by a thread of its own:
    should the target never stop, that thread's end is what releases it (the kernel detaches a
    tracer's tracees when it exits)."""
    _in_own_thread(lambda: _queue(pid, python, maps, code, timeout), timeout * 3 + 1,
                   f"PID {pid} did not stop within {timeout * 3 + 1:g} s (an uninterruptible system call?); "
                   "nothing was changed, and it is released as soon as it stops")


def _queue(pid: int, python: TargetPython, maps: list[Mapping], code: bytes, timeout: float) -> None:
    size = -(-(len(code) + 1) // PAGE) * PAGE
    with Tracee(pid, timeout) as tracee:
        assert tracee.memory is not None
        syscall_at = _find_syscall(tracee, maps)
        page = tracee.syscall(syscall_at, SYS_MMAP, 0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                              -1, 0)
        if page < 0:
            raise AttachError(f"no memory for the bootstrap in PID {pid}: {os.strerror(-page)}")
        tracee.memory.write(page, code + b"\0")
        status = tracee.call(python.add_pending_call, python.run_simple_string, page) & 0xFFFFFFFF
        if status != 0:
            tracee.syscall(syscall_at, SYS_MUNMAP, page, size)
            raise AttachError(f"PID {pid}'s queue of pending calls is full: try again in a moment")


def _find_syscall(tracee: Tracee, maps: list[Mapping]) -> int:
    """The address of a ``syscall`` instruction in the target's code (libc's first)."""
    assert tracee.memory is not None
    code = [m for m in maps if "x" in m.perms and m.path != "[vsyscall]"]
    code.sort(key=lambda m: "libc" not in os.path.basename(m.path))
    for mapping in code:
        try:
            data = tracee.memory.read(mapping.start, min(mapping.end - mapping.start, SCAN_LIMIT))
        except OSError:
            continue
        at = data.find(SYSCALL)
        if at >= 0:
            return mapping.start + at
    raise AttachError(f"no syscall instruction found in PID {tracee.pid}'s code")


def _in_own_thread(work: Callable[[], T], timeout: float, late: str) -> T:
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as err:
            failure.append(err)

    thread = threading.Thread(target=run, name="vramtop-attach", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AttachTimeout(late)
    if failure:
        raise failure[0]
    return outcome[0]
