"""The devices the program uses, and what the agent keeps about each.

Devices are looked for from two threads: the sampler (every DEVICE_RESCAN seconds) and the
training thread (its first step or forward, when that comes before the sampler saw any memory).
The table of devices is never changed in place: a rescan builds a new dict and swaps it in, so
any thread can iterate the one it read without a lock and never sees it change size. The lock
only keeps two rescans from racing each other; it is held for the allocator reads, never for
file or socket I/O (the beacon is written by the caller).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from vramtop.model import PeakBill, StepPeak, TensorCensus

from . import _torchstats as ts
from ._peaks import Counted

DEVICE_RESCAN = 2.0  # seconds between checks for newly used devices


@dataclass
class DeviceState:
    index: int
    uuid: str | None
    name: str | None
    max_allocated: int = 0  # highest sampled since the last boundary
    max_reserved: int = 0
    last_step: StepPeak | None = None
    peak_step: int | None = None  # the step during which the allocator's peak last rose
    census: TensorCensus | None = None
    peak: PeakBill | None = None  # the bill at the allocator's peak (measured, or estimated)
    memory_total: int | None = None
    memory_limit: int | None = None  # the process's cap, when set
    # Written by the training thread (step hook), read by the OOM observer:
    known_peak: int = 0  # the highest allocator peak any reading saw
    measured: PeakBill | None = None  # the last measured bill at the peak
    residual: int = 0  # persistent memory beyond the census categories at the last measured step
    kept: int = 0  # the previous step's outputs alive at that peak
    boundary_peak: int | None = None  # the allocator's peak at the last step boundary read
    persistent_first: tuple[int, int] | None = None  # (step, allocated) lowest at a step boundary
    # The last few boundaries: their lowest is what persists now (one step's big outputs aside).
    recent: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=8))

    def counted(self) -> Counted | None:
        """What the last census counted here, as the peak arithmetic wants it."""
        c = self.census
        if c is None:
            return None
        return Counted(c.parameters_trainable, c.parameters_frozen, c.buffers, c.optimizer_state)


class DeviceTable:
    """The devices in use, by index: ``states`` is replaced whole, never mutated."""

    def __init__(self) -> None:
        self.states: dict[int, DeviceState] = {}
        self._last_rescan = 0.0
        self._lock = threading.Lock()

    def after_fork(self) -> None:
        """A forked child: the lock may be held by a thread that did not come along."""
        self._lock = threading.Lock()

    def rescan(self, torch: Any, force: bool = False) -> bool:
        """Look for newly used devices (at most every DEVICE_RESCAN seconds unless ``force``)
        and refresh each one's memory and cap. True when a device was added."""
        with self._lock:
            now = time.monotonic()
            # CUDA can be initialised a moment before the first allocation: until a device
            # shows up, look every time.
            if not force and self.states and now - self._last_rescan < DEVICE_RESCAN:
                return False
            self._last_rescan = now
            states = self.states
            new = [i for i in ts.used_devices(torch) if i not in states]
            if new:
                states = dict(states)
                for index in new:
                    states[index] = DeviceState(index, *ts.device_identity(torch, index))
                self.states = states  # one reference swap: readers see the old dict or this one
            for state in states.values():
                # The program may set or change its cap at any time.
                state.memory_total, state.memory_limit = ts.memory_limits(torch, state.index)
            return bool(new)

    def counted(self) -> dict[int, Counted]:
        """The census figures of every device that has a census."""
        out = {}
        for index, state in self.states.items():
            c = state.counted()
            if c is not None:
                out[index] = c
        return out
