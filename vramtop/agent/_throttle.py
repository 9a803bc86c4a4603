"""Limits on the agent server thread's share of the training process.

Every moment the server thread runs Python it holds the GIL the training thread wants. Clients
that connect, talk or send garbage as fast as they can must not turn into training steps that
wait: the server does a bounded amount of work per window of wall time, then sleeps (sleeping
releases the GIL), and takes new connections at a bounded rate (the rest wait in the listen
backlog, where they cost this process nothing). Requests are paced the same way, per client
and for all of them together: a client past its share is not read until its turn comes, so the
rest of its requests wait in its socket (and the client, once that is full, waits in ``send``),
never decoded by this process.
"""

from __future__ import annotations

import time

# The longest the training thread can wait for the GIL on the server's account is about one
# budget: 0.5 ms, a fraction of a launch-bound step (2 ms budgets showed in the step p99).
WORK_BUDGET_S = 0.0005  # CPU seconds the server thread may use per window...
WORK_WINDOW_S = 0.010  # ...of this many wall seconds: at most 5% of one core, in short bursts
ACCEPTS_PER_S = 50.0  # new connections taken per second once the burst below is spent
ACCEPT_BURST = 8  # taken at once: a handful of monitors starting together wait for nothing
CLIENT_REQUESTS_PER_S = 20  # requests read from one client per second; a monitor asks once when it connects
REQUESTS_PER_S = 200.0  # requests read from all clients together per second once the burst is spent...
REQUEST_BURST = 50  # ...though every client's first request of its second is read at once


class WorkBudget:
    """CPU time of the calling thread per window; ``pause`` sleeps out a window once it is spent."""

    def __init__(self, budget_s: float = WORK_BUDGET_S, window_s: float = WORK_WINDOW_S) -> None:
        self.budget_s = budget_s
        self.window_s = window_s
        self._window_start = time.monotonic()
        self._cpu_start = time.thread_time()
        self.pauses = 0  # how often the budget ran out (for tests and curious readers)

    def spent(self) -> bool:
        """True once this window's budget is used up (a fresh window starts after ``pause``)."""
        if time.monotonic() - self._window_start >= self.window_s:
            self._window_start, self._cpu_start = time.monotonic(), time.thread_time()
            return False
        return time.thread_time() - self._cpu_start >= self.budget_s

    def pause(self) -> None:
        """If the budget is spent, sleep until the window ends, then start a new one."""
        if not self.spent():
            return
        self.pauses += 1
        time.sleep(max(0.0, self._window_start + self.window_s - time.monotonic()))
        self._window_start, self._cpu_start = time.monotonic(), time.thread_time()


class TokenBucket:
    """``burst`` events at once, then ``rate`` per second."""

    def __init__(self, rate: float = ACCEPTS_PER_S, burst: int = ACCEPT_BURST) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = time.monotonic()

    def wait(self) -> float:
        """Seconds until a token is there (0 when one is)."""
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate

    def take(self) -> None:
        self._tokens -= 1.0
