"""A bounded history of GPU memory use, for sparklines (``units.sparkline``) and trends."""

from __future__ import annotations

from collections import deque

from vramtop.model import Sample


class History:
    """The last ``maxlen`` fresh values of memory.used per GPU, keyed by UUID."""

    def __init__(self, maxlen: int = 240) -> None:
        self.maxlen = maxlen
        self._used: dict[str, deque[int]] = {}
        self._last_time: float | None = None

    def add(self, sample: Sample) -> None:
        # A stale sample repeats old data; counting it would draw a flat line that never was.
        if sample.stale or sample.time == self._last_time:
            return
        self._last_time = sample.time
        for gpu in sample.gpus:
            if gpu.memory_used is not None:
                self._used.setdefault(gpu.uuid, deque(maxlen=self.maxlen)).append(gpu.memory_used)

    def used(self, uuid: str) -> list[int]:
        return list(self._used.get(uuid, ()))
