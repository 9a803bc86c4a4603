"""A metric family with bounded cardinality: no missing values, no duplicate label sets, at most
a fixed number of series per GPU; what is left out is counted (``vramtop_export_dropped_series_total``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Bounds (docs/exporter.md, "Cardinality"): a GPU rarely holds more than a few processes; a box
# shared by many users must still not turn one scrape into thousands of series.
MAX_SERIES_PER_GPU = 32  # per metric: processes (or agent devices) on one GPU
MAX_WARNINGS = 64
COMMAND_CHARS = 64  # the ``command`` label: the start of the command line


def command_label(command: str | None) -> str:
    """A command line as a label value: one line, at most COMMAND_CHARS characters."""
    text = " ".join((command or "").split())
    return text if len(text) <= COMMAND_CHARS else text[:COMMAND_CHARS - 1] + "…"


class Series:
    """One family being filled: ``add`` skips values that are not available (None), repeated
    label sets and series past the per-GPU bound, and counts what it dropped in ``dropped``."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str], dropped: Counter[str],
                 counter: bool = False, per_gpu: int = MAX_SERIES_PER_GPU) -> None:
        self.family: CounterMetricFamily | GaugeMetricFamily = (
            CounterMetricFamily(name, documentation, labels=labels) if counter
            else GaugeMetricFamily(name, documentation, labels=labels))
        self.name = name
        self._dropped = dropped
        self._seen: set[tuple[str, ...]] = set()
        self._per_gpu: Counter[str] = Counter()
        self._limit = per_gpu
        self._gpu_at = list(labels).index("gpu") if "gpu" in labels else None

    def add(self, labels: Sequence[str], value: float | None) -> None:
        if value is None:
            return
        key = tuple(labels)
        if key in self._seen:
            self._dropped[self.name] += 1
            return
        if self._gpu_at is not None:
            gpu = key[self._gpu_at]
            if self._per_gpu[gpu] >= self._limit:
                self._dropped[self.name] += 1
                return
            self._per_gpu[gpu] += 1
        self._seen.add(key)
        self.family.add_metric(list(key), value)
