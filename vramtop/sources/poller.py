"""Reading a source off the caller's thread, with a deadline.

A driver call can hang (a GPU falling off the bus, a wedged kernel module). The reads run on a
daemon worker thread; whoever waits for one gives up after ``deadline`` seconds, reports the last
good sample marked stale, and does not start another read until the hung one returns. Daemon
threads never keep the process alive, so quitting works even while NVML is stuck. A reader keeps
one worker thread for its reads: starting a thread per read cost more than many a read.
"""

from __future__ import annotations

import threading
import time
from collections import deque
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
    return _waiter(_Call.on_own_thread(source.open), deadline)


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
    """One call, run on a worker thread; ``done`` is set when it returned or raised."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Sample | None = None
        self.error: BaseException | None = None
        self.started = time.monotonic()

    @classmethod
    def on_own_thread(cls, fn: Callable[[], object]) -> _Call:
        call = cls(fn)
        threading.Thread(target=call.run, name="vramtop-read", daemon=True).start()
        return call

    def run(self) -> None:
        try:
            result = self.fn()
            self.result = result if isinstance(result, Sample) else None
        except BaseException as err:
            self.error = err
        finally:
            self.done.set()


IDLE_EXIT_S = 30.0  # a worker with nothing to do for this long ends (a reader no longer read)


class _Worker:
    """One daemon thread running calls in turn, started again when it ended idle. A call that
    hangs holds it: :meth:`free` says so, and the reader leaves it to that call and starts a new
    worker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._queue: deque[_Call] = deque()
        self._running = False
        self._stopping = False
        self._current: _Call | None = None

    def free(self) -> bool:
        """False while a call it started has not returned."""
        current = self._current
        return current is None or current.done.is_set()

    def stop(self) -> None:
        """End once the calls given are done (a later submit starts it again)."""
        with self._lock:
            self._stopping = True
            self._ready.notify()

    def submit(self, call: _Call) -> None:
        with self._lock:
            self._queue.append(call)
            self._stopping = False
            if self._running:
                self._ready.notify()
                return
            self._running = True
        threading.Thread(target=self._loop, name="vramtop-read", daemon=True).start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                if not self._queue and not self._stopping:
                    self._ready.wait(IDLE_EXIT_S)
                if not self._queue:
                    self._running = self._stopping = False
                    return
                call = self._current = self._queue.popleft()
            call.run()
            # Keeps nothing of a call that returned while it waits for the next (an idle worker
            # outlives its reader by IDLE_EXIT_S).
            del call
            self._current = None


class DeadlineReader:
    """``read()`` that returns within ``deadline`` seconds whatever the source does."""

    def __init__(self, source: Source, deadline: float = 5.0) -> None:
        self.source = source
        self.deadline = deadline
        self._pending: _Call | None = None
        self._last: Sample | None = None
        self._worker = _Worker()

    def open_in_background(self, deadline: float | None = None) -> Callable[[], None]:
        """:func:`open_in_background`, and once the source is open its first read starts at once
        on the same worker: the first sample is read while the UI starts, not after."""
        worker = self._free_worker()

        def open_then_read() -> None:
            self.source.open()
            # Queued on this worker before the waiter returns: read() finds it.
            self._pending = _Call(self.source.read)
            worker.submit(self._pending)

        call = _Call(open_then_read)
        worker.submit(call)
        return _waiter(call, deadline)

    def stop(self) -> None:
        """No more reads: the worker ends once the read under way (if any) returns."""
        self._worker.stop()

    def _free_worker(self) -> _Worker:
        if not self._worker.free():
            self._worker = _Worker()  # the old one is stuck in a call nobody waits for any more
        return self._worker

    def read(self) -> Sample:
        """A fresh sample; or the last one marked stale; or VramtopError if there never was one."""
        if self._pending is None:
            self._pending = _Call(self.source.read)
            self._free_worker().submit(self._pending)
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
        self.reader.stop()
