"""Optimizer step boundaries: allocator figures read on the training thread at the end of a
step, turned into per-step peaks on the sampler thread.

Figures are read at step boundaries at most every BOUNDARY_GAP seconds, and less often if a
read is slow (READ_BUDGET; the cost counted is the whole step boundary that read, everything the
hook did then): steps faster than this are grouped, so a launch-bound loop of 2 ms steps pays
for one read (~20-150 us, a dict of ~100 counters, with cold caches after a deep model's step)
per 50 ms or more, not per step. Five reads per sampler tick (0.25 s) still give each tick the
step peaks and the persistent memory between its samples. Boundaries pass from one thread to
the other through a deque (its append and popleft are atomic); each thread writes device-state
fields of its own.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import _torchstats as ts
from ._devices import DeviceState
from ._peaks import Counted, Counters, estimate, step_peak

BOUNDARY_GAP = 0.05
# Share of wall time the reads may take. Half of GIL_BUDGET: the training thread also pays for
# measured steps (_phases.BUDGET) and the census, and a loop whose thread waits for the GPU now
# and then has less CPU time than wall time to share; all of it must stay well under 1%.
READ_BUDGET = 0.001
# Persistent memory counts from this step on for the leak diagnosis (Adam's state exists by then).
PERSISTENT_FROM_STEP = 2


@dataclass(frozen=True)
class Boundary:
    """Allocator figures at the end of an optimizer step, read in the step hook."""

    step: int
    time: float
    counters: Mapping[int, Counters]  # device -> its counters


class StepBoundaries:
    def __init__(self) -> None:
        self._pending: deque[Boundary] = deque(maxlen=256)
        self._last: Boundary | None = None  # the last closed (sampler thread only)
        self.last_read = 0.0  # monotonic time of the last read
        self._cost = 0.0  # a moving average of a read's seconds

    @property
    def next_due(self) -> float:
        """The monotonic time from which the next read is due."""
        return self.last_read + max(BOUNDARY_GAP, self._cost / READ_BUDGET)

    def due(self, now: float) -> bool:
        return now >= self.next_due

    def read(self, torch: Any, step: int, now: float, devices: Mapping[int, DeviceState],
             overhead: float = 0.0) -> None:
        """On the training thread: read every device's counters and note the boundary.
        ``overhead``: seconds the hook spent on this boundary before the read (counted with it)."""
        self.last_read = now
        started = time.perf_counter() - overhead
        counters = {}
        for index, state in devices.items():
            raw = ts.raw_stats(torch, index)
            a, r = raw["allocated_bytes"]["all"], raw["reserved_bytes"]["all"]
            counters[index] = Counters(a["current"], r["current"], a["peak"], r["peak"])
            note_boundary(state, step, a["current"], a["peak"])
        self._pending.append(Boundary(step, now, counters))
        # A moving average: one read slowed by preemption should not space out the next ones.
        cost = time.perf_counter() - started
        self._cost = cost if not self._cost else 0.75 * self._cost + 0.25 * cost

    def close(self, devices: Mapping[int, DeviceState]) -> None:
        """On the sampler thread: the boundaries read since the last call become step peaks."""
        closed = False
        while self._pending:
            boundary = self._pending.popleft()
            closed = True
            previous, self._last = self._last, boundary
            if previous is None:
                continue
            for index, state in devices.items():
                before, after = previous.counters.get(index), boundary.counters.get(index)
                if before is None or after is None:
                    continue
                state.last_step = step_peak(boundary.step, boundary.step - previous.step,
                                            boundary.time - previous.time, before, after,
                                            state.max_allocated, state.max_reserved)
                if state.last_step.exact:
                    state.peak_step = boundary.step
        # The sampled maxima cover every boundary that closed since the last tick (they all fell
        # between the same two samples); start afresh for the next ones.
        if closed:
            for state in devices.values():
                state.max_allocated = state.max_reserved = 0


def note_boundary(state: DeviceState, step: int, allocated: int, peak: int) -> None:
    """At a step boundary read: persistent memory for the leak diagnosis, and the bill of a
    peak that rose during steps no reading saw (estimated from the last measured one)."""
    state.boundary_peak = peak
    if step >= PERSISTENT_FROM_STEP:
        state.recent.append((step, allocated))
        if state.persistent_first is None or allocated < state.persistent_first[1]:
            state.persistent_first = (step, allocated)
    if peak > state.known_peak:
        state.known_peak = peak
        if state.measured is not None:
            state.peak = estimate(state.measured, peak, step, state.counted() or Counted(), step > 1,
                                  state.residual + state.kept)
