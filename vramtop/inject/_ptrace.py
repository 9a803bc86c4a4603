"""ptrace(2) on x86_64 Linux through ctypes: attach without a signal, registers, waits with a
deadline, and the target's memory through /proc/PID/mem."""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import time
from dataclasses import dataclass
from typing import Any

from ._target import process_ended
from .errors import TargetExited

PTRACE_CONT = 7
PTRACE_SINGLESTEP = 9
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_DETACH = 17
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_EVENT_STOP = 128
NT_X86_XSTATE = 0x202  # the whole FPU/SSE/AVX state, whatever the CPU has
WALL = 0x40000000  # __WALL: wait for a thread too (the main thread of a threaded process)
XSTATE_MAX = 64 * 1024  # more than any CPU's XSAVE area (AMX included)

_REGISTERS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
              "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds",
              "es", "fs", "gs")


class Registers(ctypes.Structure):
    """struct user_regs_struct (x86_64)."""

    _fields_ = [(name, ctypes.c_ulonglong) for name in _REGISTERS]

    def copy(self) -> Registers:
        return Registers.from_buffer_copy(self)


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


@functools.cache
def _ptrace_function() -> Any:
    """libc's ptrace, loaded on first use (importing this module costs nothing anywhere)."""
    function = ctypes.CDLL(None, use_errno=True).ptrace
    function.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    function.restype = ctypes.c_long
    return function


def ptrace(request: int, pid: int, addr: int | None = None, data: object = None) -> None:
    """One ptrace request; OSError with the errno when it fails (TargetExited for ESRCH on a
    process that no longer exists)."""
    ctypes.set_errno(0)
    arg = ctypes.byref(data) if isinstance(data, ctypes.Structure) else data
    if _ptrace_function()(request, pid, addr, arg) == -1:
        err = ctypes.get_errno()
        if err == errno.ESRCH and process_ended(pid):
            raise TargetExited(pid)
        raise OSError(err, os.strerror(err))


def get_registers(pid: int) -> Registers:
    regs = Registers()
    ptrace(PTRACE_GETREGS, pid, None, regs)
    return regs


def set_registers(pid: int, regs: Registers) -> None:
    ptrace(PTRACE_SETREGS, pid, None, regs)


def get_xstate(pid: int) -> bytes | None:
    """The FPU/vector registers (a call into the target may change them); None if unsupported."""
    buffer = ctypes.create_string_buffer(XSTATE_MAX)
    iov = _IoVec(ctypes.cast(buffer, ctypes.c_void_p), XSTATE_MAX)
    try:
        ptrace(PTRACE_GETREGSET, pid, NT_X86_XSTATE, iov)
    except OSError:
        return None
    return buffer.raw[: iov.len]


def set_xstate(pid: int, state: bytes) -> None:
    buffer = ctypes.create_string_buffer(state, len(state))
    ptrace(PTRACE_SETREGSET, pid, NT_X86_XSTATE, _IoVec(ctypes.cast(buffer, ctypes.c_void_p), len(state)))


@dataclass(frozen=True)
class Stop:
    """What waitpid reported: a stop with its signal (and ptrace event), or the end."""

    signal: int = 0
    event: int = 0
    exited: bool = False

    @property
    def interrupt(self) -> bool:
        """The stop PTRACE_INTERRUPT asked for (or a group stop), not a signal to deliver."""
        return self.event == PTRACE_EVENT_STOP


def wait_stop(pid: int, timeout: float | None) -> Stop | None:
    """The next stop of ``pid``; None after ``timeout`` seconds (None: wait as long as it takes)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.0005
    while True:
        try:
            waited, status = os.waitpid(pid, os.WNOHANG | WALL)
        except ChildProcessError:
            raise TargetExited(pid) from None
        if waited == pid:
            if os.WIFSTOPPED(status):
                return Stop(os.WSTOPSIG(status), status >> 16)
            return Stop(exited=True)
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(pause)
        pause = min(pause * 2, 0.01)


class Memory:
    """The target's memory, through /proc/PID/mem (the tracer may read and write it)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd = os.open(f"/proc/{pid}/mem", os.O_RDWR)

    def read(self, address: int, size: int) -> bytes:
        try:
            return os.pread(self._fd, size, address)
        except OSError:
            self._check_alive()
            raise

    def write(self, address: int, data: bytes) -> None:
        try:
            written = os.pwrite(self._fd, data, address)
        except OSError:
            self._check_alive()
            raise
        if written != len(data):
            self._check_alive()
            raise OSError(errno.EIO, f"short write at {address:#x}")

    def _check_alive(self) -> None:
        """A process that died meanwhile has no memory left: say that, not EIO."""
        if process_ended(self.pid):
            raise TargetExited(self.pid)

    def close(self) -> None:
        os.close(self._fd)
