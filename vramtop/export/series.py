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
MAX_SERIES_WITHOUT_GPU = 256  # a family without a gpu label (vramtop_step): in all
COMMAND_CHARS = 64  # the ``command`` label: the start of the command line


def command_label(command: str | None) -> str:
    """A command line as a label value: one line, at most COMMAND_CHARS characters."""
    text = " ".join((command or "").split())
    return text if len(text) <= COMMAND_CHARS else text[:COMMAND_CHARS - 1] + "…"


class Series:
    """One family being filled: ``add`` skips values that are not available (None), repeated
    label sets and series past the bound (per GPU, or in all for a family without a ``gpu``
    label), and counts what it dropped in ``dropped``.

    The bound counts subjects: the first ``subject_labels`` labels (all by default). The bill's
    eight categories of one process are one subject, so a process's bill is kept or left out whole.
    """

    def __init__(self, name: str, documentation: str, labels: Sequence[str], dropped: Counter[str],
                 counter: bool = False, per_gpu: int = MAX_SERIES_PER_GPU, subject_labels: int | None = None) -> None:
        self.family: CounterMetricFamily | GaugeMetricFamily = (
            CounterMetricFamily(name, documentation, labels=labels) if counter
            else GaugeMetricFamily(name, documentation, labels=labels))
        self.name = name
        self._dropped = dropped
        self._seen: set[tuple[str, ...]] = set()
        self._subjects: dict[str, set[tuple[str, ...]]] = {}  # GPU -> the subjects kept on it
        self._subject_labels = subject_labels or len(labels)
        self._gpu_at = list(labels).index("gpu") if "gpu" in labels else None
        self._limit = per_gpu if self._gpu_at is not None else MAX_SERIES_WITHOUT_GPU

    def add(self, labels: Sequence[str], value: float | None) -> None:
        if value is None:
            return
        key = tuple(labels)
        if key in self._seen:
            self._dropped[self.name] += 1
            return
        kept = self._subjects.setdefault(key[self._gpu_at] if self._gpu_at is not None else "", set())
        subject = key[:self._subject_labels]
        if subject not in kept and len(kept) >= self._limit:
            self._dropped[self.name] += 1
            return
        kept.add(subject)
        self._seen.add(key)
        self.family.add_metric(list(key), value)
