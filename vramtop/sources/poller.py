"""Reading a source off the caller's thread, with a deadline.

A driver call can hang (a GPU falling off the bus, a wedged kernel module). The reads run on a
daemon worker thread; whoever waits for one gives up after ``deadline`` seconds, reports the last
good sample marked stale, and does not start another read until the hung one returns. Daemon
threads never keep the process alive, so quitting works even while NVML is stuck.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from vramtop.errors import EXIT_NVML, VramtopError
from vramtop.model import Sample


class Source(Protocol):
    """Anything that produces samples: NVML, agents, a recording."""

    def open(self) -> None: ...

    def read(self) -> Sample: ...

    def close(self) -> None: ...


OPEN_DEADLINE_S = 10.0  # nvmlInit and the device count: longer than a read, never unbounded


def open_with_deadline(source: Source, deadline: float | None = None) -> None:
    """``source.open()`` on a worker thread: a driver that hangs in its init ends the command with
    a clear error after ``deadline`` seconds (``--once`` once took 30 s, past its own deadline)."""
    open_in_background(source, deadline)()


def open_in_background(source: Source, deadline: float | None = None) -> Callable[[], None]:
    """Start ``source.open()`` on a worker thread now; the function returned waits for it (within
    ``deadline`` seconds of the start) and raises what it raised. Meanwhile the caller can do
    other start-up work: NVML's initialisation and Textual's import overlap."""
    return _waiter(_Call(source.open), deadline)


def _waiter(call: _Call, deadline: float | None) -> Callable[[], None]:
    """Waits for ``call`` (an open) within ``deadline`` seconds of its start; raises what it raised."""
    deadline = OPEN_DEADLINE_S if deadline is None else deadline

    def wait() -> None:
        if not call.done.wait(max(0.0, deadline - (time.monotonic() - call.started))):
            raise VramtopError(f"NVML did not answer within {deadline:g} s while starting (driver hung?)",
                               EXIT_NVML)
        if call.error is not None:
            raise call.error

    return wait


class _Call:
    """One call in flight on a worker thread."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.done = threading.Event()
        self.result: Sample | None = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        threading.Thread(target=self._run, args=(fn,), name="vramtop-read", daemon=True).start()

    def _run(self, fn: Callable[[], object]) -> None:
        try:
            result = fn()
            self.result = result if isinstance(result, Sample) else None
        except BaseException as err:
            self.error = err
        finally:
            self.done.set()


class DeadlineReader:
    """``read()`` that returns within ``deadline`` seconds whatever the source does."""

    def __init__(self, source: Source, deadline: float = 5.0) -> None:
        self.source = source
        self.deadline = deadline
        self._pending: _Call | None = None
        self._last: Sample | None = None

    def open_in_background(self, deadline: float | None = None) -> Callable[[], None]:
        """:func:`open_in_background`, and once the source is open its first read starts at once
        on another worker: the first sample is read while the UI starts, not after."""

        def open_then_read() -> None:
            self.source.open()
            self._pending = _Call(self.source.read)  # before the waiter returns: read() finds it

        return _waiter(_Call(open_then_read), deadline)

    def read(self) -> Sample:
        """A fresh sample; or the last one marked stale; or VramtopError if there never was one."""
        if self._pending is None:
            self._pending = _Call(self.source.read)
        call = self._pending
        if not call.done.wait(self.deadline):
            waited = time.monotonic() - call.started
            return self._stale(f"NVML has not answered for {waited:.0f} s (driver hung?)")
        self._pending = None
        if call.error is not None:
            if isinstance(call.error, VramtopError):
                return self._stale(call.error.message, call.error)
            return self._stale(f"reading failed: {type(call.error).__name__}: {call.error}", call.error)
        assert call.result is not None
        self._last = call.result
        return call.result

    def _stale(self, message: str, cause: BaseException | None = None) -> Sample:
        if self._last is None:
            raise VramtopError(message, getattr(cause, "exit_code", EXIT_NVML)) from cause
        return self._last.as_stale(message)


class Poller:
    """Delivers a sample from ``reader`` to ``deliver`` every ``interval`` seconds, on a thread."""

    def __init__(self, reader: DeadlineReader, interval: float,
                 deliver: Callable[[Sample], None], on_error: Callable[[VramtopError], None]) -> None:
        self.reader = reader
        self.interval = interval
        self._deliver = deliver
        self._on_error = on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vramtop-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                sample = self.reader.read()
            except VramtopError as err:
                self._on_error(err)
            else:
                if not self._stop.is_set():
                    self._deliver(sample)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
