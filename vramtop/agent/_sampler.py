"""The sampler thread: a sample of every device's allocator figures every interval.

The sampler reads only the allocator's own statistics and snapshots, which the allocator serves
under its lock; never a tensor (see _runtime.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from vramtop.model import AgentDevice

from . import _torchstats as ts
from ._devices import DeviceState

# The sampler gives up after this many failed ticks in a row (a torch it cannot read).
MAX_TICK_ERRORS = 20


def sample_until_stopped(tick: Callable[[], object], stop: threading.Event, interval: float,
                         forked: Callable[[], bool], failed: Callable[[str], None]) -> None:
    """Tick every ``interval`` until ``stop`` is set or the process turns out to be a forked
    child; ``failed`` hears each failed tick. Raises once ticks keep failing."""
    errors = 0
    while not stop.wait(interval):
        if forked():
            return
        try:
            tick()
            errors = 0
        except Exception as err:
            failed(f"{type(err).__name__}: {err}")
            errors += 1
            if errors >= MAX_TICK_ERRORS:
                raise


class DeviceSampler:
    """Reads each device's allocator figures, with a snapshot (the largest free block) taken
    at most once a second and less often when it is slow (GIL_BUDGET)."""

    def __init__(self, snapshots: bool, light: bool = False) -> None:
        self._snapshots = snapshots
        self._light = light  # the allocation history is on: snapshots without its entries
        self.snapshot: ts.SnapshotSummary | None = None
        self._last_snapshot = 0.0
        self._snapshot_cost = 0.0

    def read(self, torch: Any, devices: Mapping[int, DeviceState]) -> tuple[AgentDevice, ...]:
        now = time.monotonic()
        if self._snapshots and now - self._last_snapshot >= max(1.0, self._snapshot_cost / ts.GIL_BUDGET):
            snapshot = ts.take_snapshot(torch, light=self._light)
            self._last_snapshot = now
            if snapshot is not None:
                self.snapshot, self._snapshot_cost = snapshot, snapshot.cost
        out = []
        for state in devices.values():
            stats = ts.allocator_stats(torch, state.index, self.snapshot)
            state.max_allocated = max(state.max_allocated, stats.allocated)
            state.max_reserved = max(state.max_reserved, stats.reserved)
            out.append(AgentDevice(index=state.index, uuid=state.uuid, name=state.name, stats=stats,
                                   census=state.census, last_step=state.last_step,
                                   peak_step=state.peak_step, peak=state.peak,
                                   memory_total=state.memory_total, memory_limit=state.memory_limit))
        return tuple(out)
