"""Work inside a stopped thread: a system call and a function call made by the target itself,
between a save and an exact restore of all its registers.

The thread is stopped with PTRACE_SEIZE + PTRACE_INTERRUPT (no SIGSTOP is ever sent, so neither
the program nor its parent sees a stop). A signal that arrives meanwhile is held back and
delivered at the detach. Restoring ``orig_rax`` lets a system call we interrupted restart as
if nothing happened; a call we make runs with ``orig_rax = -1`` so that the kernel does not
"restart" it into our code.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

from . import _ptrace as pt
from ._policy import refusal_for_errno
from ._ptrace import Registers
from .errors import AttachError, AttachTimeout, TargetExited

SYSCALL = b"\x0f\x05"
SYS_MMAP = 9
PROT_READ, PROT_WRITE = 1, 2
MAP_PRIVATE, MAP_ANONYMOUS = 0x02, 0x20
RED_ZONE = 128  # bytes below rsp that the interrupted function may be using (SysV ABI)
DF = 1 << 10  # the direction flag, which a call must find clear
NO_SYSCALL = (1 << 64) - 1  # orig_rax = -1


class Tracee:
    """The main thread of ``pid``, stopped and saved on enter, restored and released on exit.

    ``timeout`` bounds each wait; a thread that will not stop again after a timeout is waited
    for without a bound before the restore, since it must never run on with our registers."""

    def __init__(self, pid: int, timeout: float) -> None:
        self.pid = pid
        self.timeout = timeout
        self._saved: Registers | None = None
        self._xstate: bytes | None = None
        self._held_signal = 0  # a signal that arrived while we worked: delivered at the detach
        self._running = False  # resumed by us into our own code
        self._gone = False
        self.memory: pt.Memory | None = None

    def __enter__(self) -> Tracee:
        try:
            pt.ptrace(pt.PTRACE_SEIZE, self.pid, None, None)
        except OSError as err:
            raise refusal_for_errno(self.pid, err) from None
        try:
            pt.ptrace(pt.PTRACE_INTERRUPT, self.pid, None, None)
            self._wait_for(lambda stop: stop.interrupt, "stop")
            self._saved = pt.get_registers(self.pid)
            self._xstate = pt.get_xstate(self.pid)
            self.memory = pt.Memory(self.pid)
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()

    # -- what we run in the target -------------------------------------------------------------

    def syscall(self, at: int, number: int, *args: int) -> int:
        """Run system call ``number`` in the target: one step over the ``syscall`` instruction at ``at``."""
        regs = self._base_registers()
        regs.rip, regs.rax = at, number
        for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args, strict=False):
            setattr(regs, name, value & NO_SYSCALL)
        pt.set_registers(self.pid, regs)
        self._resume(pt.PTRACE_SINGLESTEP, lambda stop: stop.signal == signal.SIGTRAP, "system call")
        result = int(pt.get_registers(self.pid).rax)
        return result - (1 << 64) if result >= 1 << 63 else result

    def call(self, function: int, *args: int) -> int:
        """Call ``function(*args)`` (at most six integer arguments) in the target; its return
        value. It returns to address 0, where the fault hands the thread back to us."""
        regs = self._base_registers()
        assert self.memory is not None
        # Below the red zone, 16-byte aligned at the call, then the return address (0) pushed.
        sp = ((regs.rsp - RED_ZONE - 256) & ~0xF) - 8
        self.memory.write(sp, b"\0" * 8)
        regs.rsp, regs.rip = sp, function
        regs.eflags &= ~DF
        for name, value in zip(("rdi", "rsi", "rdx", "rcx", "r8", "r9"), args, strict=False):
            setattr(regs, name, value)
        pt.set_registers(self.pid, regs)

        def returned(stop: pt.Stop) -> bool:
            if stop.signal != signal.SIGSEGV:
                return False
            if pt.get_registers(self.pid).rip != 0:
                raise AttachError(f"PID {self.pid} faulted inside the call (it is restored and released)")
            return True

        self._resume(pt.PTRACE_CONT, returned, "call")
        return int(pt.get_registers(self.pid).rax)

    def _base_registers(self) -> Registers:
        assert self._saved is not None
        regs = self._saved.copy()
        regs.orig_rax = NO_SYSCALL
        return regs

    # -- stops, signals, release -------------------------------------------------------------

    def _resume(self, how: int, done: Callable[[pt.Stop], bool], what: str) -> None:
        pt.ptrace(how, self.pid, None, None)
        self._running = True
        self._wait_for(done, what, resume=how)

    def _wait_for(self, done: Callable[[pt.Stop], bool], what: str, resume: int = pt.PTRACE_CONT) -> None:
        """Wait for the stop ``done`` accepts; at other stops a signal is held back and the
        thread resumed the same way. AttachTimeout after ``timeout``; TargetExited if it ended."""
        while True:
            stop = pt.wait_stop(self.pid, self.timeout)
            if stop is None:
                if what == "stop":
                    raise AttachTimeout(f"PID {self.pid} did not stop within {self.timeout:g} s; it was released "
                                        "unchanged")
                raise AttachTimeout(f"PID {self.pid} did not return from the {what} within {self.timeout:g} s; it "
                                    "was stopped again, restored and released")
            if stop.exited:
                self._gone = True
                raise TargetExited(self.pid)
            self._running = False
            if done(stop):
                return
            self._hold(stop)
            pt.ptrace(resume, self.pid, None, None)
            self._running = True

    def _hold(self, stop: pt.Stop) -> None:
        """Keep a signal that arrived meanwhile, to deliver at the detach (one is enough: the
        kernel merges repeats of a standard signal too)."""
        if not stop.interrupt and stop.signal not in (signal.SIGTRAP, signal.SIGSEGV) and not self._held_signal:
            self._held_signal = stop.signal

    def _release(self) -> None:
        """Put every register back and let the thread go, whatever happened before."""
        if self._gone:
            return
        try:
            if self._running:
                # A timeout while it ran our code: stop it again, however long that takes (it
                # must never go on with our registers). Any stop will do for the restore.
                pt.ptrace(pt.PTRACE_INTERRUPT, self.pid, None, None)
                stop = pt.wait_stop(self.pid, None)
                if stop is None or stop.exited:
                    return
                self._hold(stop)
            if self._saved is not None:
                pt.set_registers(self.pid, self._saved)
            if self._xstate is not None:
                pt.set_xstate(self.pid, self._xstate)
            pt.ptrace(pt.PTRACE_DETACH, self.pid, None, self._held_signal)
        except (OSError, TargetExited):
            pass  # gone, or never stopped: the end of the tracing thread releases it (see inject)
        finally:
            if self.memory is not None:
                self.memory.close()
                self.memory = None
