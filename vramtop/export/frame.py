"""Every metric family of one sample, built once when the sample arrives (never per scrape).

Each part is built on its own: a part that fails (a bug meeting data nobody foresaw) leaves its
series out and is counted in ``vramtop_export_errors_total{part}``; the other parts, and the
scrape, go on."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client.core import CounterMetricFamily, Metric

from vramtop.analysis.risk import RiskTracker, RiskWarning
from vramtop.export.dcgm import dcgm_families
from vramtop.export.gpu_metrics import gpu_families, process_families
from vramtop.export.torch_metrics import torch_families, warning_family
from vramtop.model import Sample

T = TypeVar("T")


@dataclass(frozen=True)
class Options:
    per_process: bool = False  # vramtop_process_gpu_memory_bytes (PIDs churn: opt-in)
    dcgm_compat: bool = False  # DCGM_FI_DEV_* beside vramtop's own names


class FrameBuilder:
    """Turns each sample, in order, into its families; remembers what was dropped and what failed."""

    def __init__(self, tracker: RiskTracker, options: Options,
                 report: Callable[[str], None] | None = None) -> None:
        self.tracker = tracker
        self.options = options
        self.dropped: Counter[str] = Counter()  # metric name -> series left out (cardinality bounds)
        self.errors: Counter[str] = Counter()  # part -> samples it failed on
        self._report = report or (lambda line: print(line, file=sys.stderr))

    def build(self, sample: Sample) -> tuple[Metric, ...]:
        warnings = self._part("risk", lambda: [self.tracker.update(sample)])
        in_force: Sequence[RiskWarning] = warnings[0] if warnings else ()
        parts: list[tuple[str, Callable[[], Iterable[Metric]]]] = [
            ("gpus", lambda: gpu_families(sample, self.dropped)),
            ("torch", lambda: torch_families(sample, self.tracker, self.dropped)),
            ("warnings", lambda: [warning_family(in_force, self.dropped)]),
        ]
        if self.options.per_process:
            parts.insert(1, ("processes", lambda: process_families(sample, self.dropped)))
        if self.options.dcgm_compat:
            parts.append(("dcgm", lambda: dcgm_families(sample, self.dropped)))
        families = [family for name, make in parts for family in self._part(name, make)]
        return (*families, *self.bookkeeping())

    def bookkeeping(self) -> tuple[Metric, ...]:
        """The exporter's own counters, as they stand now."""
        dropped = CounterMetricFamily("vramtop_export_dropped_series",
                                      "Series left out by the cardinality bounds (docs/exporter.md), by metric.",
                                      labels=["metric"])
        for name, count in sorted(self.dropped.items()):
            dropped.add_metric([name], count)
        errors = CounterMetricFamily("vramtop_export_errors",
                                     "Samples on which one part of the exporter failed; its series were left out.",
                                     labels=["part"])
        for part, count in sorted(self.errors.items()):
            errors.add_metric([part], count)
        return dropped, errors

    def _part(self, name: str, make: Callable[[], Iterable[T]]) -> list[T]:
        try:
            return list(make())
        except Exception as err:  # one part's failure must not cost the others (or the scrape)
            if not self.errors[name]:
                self._report(f"vramtop: export: {name} failed ({type(err).__name__}: {err}); its series are left out")
            self.errors[name] += 1
            return []
