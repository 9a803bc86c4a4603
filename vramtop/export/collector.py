"""The collector a scrape reads: the families of the latest sample, built when it arrived.

A scrape never waits for NVML: the poller (sources/poller.py, the monitor's own) delivers a
sample every interval, or the last one marked stale when NVML does not answer within its
deadline; ``vramtop_up`` says which. A frame older than ``max_age`` (the poller itself stuck)
counts as stale too.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vramtop.errors import VramtopError
from vramtop.export.frame import FrameBuilder
from vramtop.export.gpu_metrics import build_info
from vramtop.model import Sample


@dataclass(frozen=True)
class Frame:
    sample: Sample
    families: tuple[Metric, ...]
    received: float  # monotonic clock when it was built


class SampleCollector(Collector):
    def __init__(self, builder: FrameBuilder, max_age: float, clock: Callable[[], float] = time.monotonic,
                 report: Callable[[str], None] | None = None) -> None:
        self.builder = builder
        self.max_age = max_age
        self._clock = clock
        self._frame: Frame | None = None
        self._bookkeeping = builder.bookkeeping()
        self.failure: str | None = None  # why there is no sample at all yet
        self._report = report or (lambda line: print(line, file=sys.stderr, flush=True))

    def take(self, sample: Sample) -> None:
        """A sample from the poller (its thread): the analysis and the families, once."""
        self._frame = Frame(sample, self.builder.build(sample), self._clock())
        self.failure = None

    def failed(self, error: VramtopError) -> None:
        """The source failed before it ever produced a sample: said once (the poller retries
        every interval), served as ``vramtop_up 0``."""
        if error.message != self.failure:
            self._report(f"vramtop: export: {error.message} (serving vramtop_up 0, retrying)")
        self.failure = error.message

    def collect(self) -> Iterator[Metric]:
        frame = self._frame  # one read: the poller may replace it meanwhile
        fresh = frame is not None and not frame.sample.stale and self._clock() - frame.received <= self.max_age
        up = GaugeMetricFamily("vramtop_up", "1 when the last sample is fresh; 0 when NVML did not answer within "
                               "its deadline (the figures are the last ones read) or never answered.",
                               value=1 if fresh else 0)
        yield up
        yield build_info(frame.sample if frame else None)
        if frame is None:
            yield from self._bookkeeping
            return
        yield GaugeMetricFamily("vramtop_last_sample_timestamp_seconds",
                                "When the figures served were read (Unix time).",
                                value=frame.sample.time)
        yield from frame.families
