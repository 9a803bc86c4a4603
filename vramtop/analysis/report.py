"""What a recording says, summed up: the run, peaks and averages per GPU and process, the bill
at the allocator's peak, steps, events, warnings, OOM post-mortems and damage (``vramtop report``;
the sinks in vramtop/sinks/report_*.py put it into words and pictures).

Pure functions over a :class:`~vramtop.recording.Recording`, no I/O. Stale samples (the last
good data recorded again while NVML did not answer) repeat old numbers: peaks and averages skip
them. Per-process figures come from analysis/report_processes.py, the OOMs from
analysis/report_postmortems.py.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from vramtop.analysis.report_jobs import JobSummary, job_summaries
from vramtop.analysis.report_postmortems import PostMortemSeen, postmortems
from vramtop.analysis.report_processes import ProcessSummary, process_summaries
from vramtop.analysis.risk import warnings_over
from vramtop.analysis.samples import fresh_samples, selected
from vramtop.analysis.thresholds import Thresholds
from vramtop.model import Sample
from vramtop.recording import Event, Recording


@dataclass(frozen=True)
class GpuSummary:
    index: int
    uuid: str
    name: str
    memory_total: int | None
    samples: int  # fresh samples with a memory.used figure
    peak_used: int | None  # memory.used, bytes
    peak_time: float | None
    average_used: float | None  # mean over those samples, bytes


@dataclass(frozen=True)
class WarningSeen:
    """A warning as the TUI raised it over the recording: its first sample at this level."""

    time: float
    level: str
    kind: str
    pid: int | None
    gpu_index: int | None
    title: str
    sentence: str
    action: str


@dataclass(frozen=True)
class Report:
    path: str
    compressed: bool
    host: str | None
    driver: str | None
    cuda_driver: str | None
    vramtop: str | None  # the writer's version
    command: tuple[str, ...] | None
    interval: float | None
    started: float | None  # the recording's start: the time offsets count from here
    ended: float | None  # time of the last record read
    samples: int
    stale_samples: int
    end_reason: str | None  # None: no end record
    gpus: tuple[GpuSummary, ...] = ()
    processes: tuple[ProcessSummary, ...] = ()
    jobs: tuple[JobSummary, ...] = ()  # distributed jobs of two ranks or more
    events: tuple[Event, ...] = ()  # as recorded, including the recorder's own warning events
    warnings: tuple[WarningSeen, ...] = ()
    postmortems: tuple[PostMortemSeen, ...] = ()
    damage: tuple[str, ...] = ()  # what the reader found wrong with the file, in its words
    sample_errors: tuple[str, ...] = ()  # the errors of samples that are not stale, in order
    ignored_records: int = 0  # records of a type this version does not know

    @property
    def writer_died(self) -> bool:
        """No end record: the writer was killed or crashed (or is still writing)."""
        return self.end_reason is None

    @property
    def duration(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return max(0.0, self.ended - self.started)

    def offset(self, t: float | None) -> float | None:
        """Seconds since the start of the recording."""
        return None if t is None or self.started is None else t - self.started


def summarize(recording: Recording, gpus: Sequence[str] | None = None,
              thresholds: Thresholds | None = None) -> Report:
    """The report of a recording; ``gpus`` limits it to some GPUs (indices or UUID prefixes).
    Warnings are raised again from the samples with ``thresholds``, as a replay raises them."""
    header = recording.header
    samples = recording.samples
    fresh = fresh_samples(samples)
    first = samples[0] if samples else None
    started = header.started if header is not None else (first.time if first else None)
    times = [s.time for s in samples] + [e.time for e in recording.events]
    if recording.end is not None:
        times.append(recording.end.time)
    stale = sum(1 for s in samples if s.stale)
    return Report(
        path=recording.path,
        compressed=recording.compressed,
        host=header.host if header else (first.host.hostname if first else None),
        driver=header.driver if header else (first.driver_version if first else None),
        cuda_driver=header.cuda_driver if header else (first.cuda_driver_version if first else None),
        vramtop=header.vramtop if header else None,
        command=header.command if header else None,
        interval=header.interval if header else None,
        started=started,
        ended=max(times) if times else None,
        samples=len(samples),
        stale_samples=stale,
        end_reason=recording.end.reason if recording.end else None,
        gpus=tuple(_gpu_summaries(recording, fresh, gpus)),
        processes=tuple(process_summaries(fresh, gpus)),
        jobs=tuple(job_summaries(fresh, gpus)),
        events=recording.events,
        warnings=tuple(_warnings(recording.samples_with_events(), gpus, thresholds)),
        postmortems=tuple(postmortems(fresh, recording.events, gpus, thresholds)),
        damage=tuple(str(p) for p in recording.problems),
        sample_errors=tuple(s.error for s in samples if s.error and not s.stale),
        ignored_records=recording.ignored,
    )


def _warnings(samples: Sequence[Sample], selectors: Sequence[str] | None,
              thresholds: Thresholds | None) -> list[WarningSeen]:
    """Each warning raised, or changed level, as the monitor fed these samples in order would."""
    levels: dict[tuple[str, str, int | None], str] = {}
    out = []
    for s, warnings in zip(samples, warnings_over(samples, thresholds), strict=True):
        if s.stale:
            continue
        now = {}
        for w in warnings:
            now[w.key] = w.level
            if levels.get(w.key) != w.level and selected(w.gpu_index if w.gpu_index is not None else -1,
                                                         w.gpu_uuid, selectors):
                out.append(WarningSeen(s.time, w.level, w.kind, w.pid, w.gpu_index, w.title, w.sentence, w.action))
        levels = now
    return out


def _gpu_summaries(recording: Recording, fresh: list[Sample], selectors: Sequence[str] | None) -> list[GpuSummary]:
    names: dict[str, tuple[int, str, int | None]] = {}
    if recording.header is not None:
        for g in recording.header.gpus:
            names[g.uuid] = (g.index, g.name, g.memory_total)
    for s in recording.samples:
        for gpu in s.gpus:
            names.setdefault(gpu.uuid, (gpu.index, gpu.name, gpu.memory_total))
            if gpu.memory_total is not None and names[gpu.uuid][2] is None:
                names[gpu.uuid] = (gpu.index, gpu.name, gpu.memory_total)
    out = []
    for uuid, (index, name, total) in names.items():
        if not selected(index, uuid, selectors):
            continue
        used = [(s.time, g.memory_used) for s in fresh for g in s.gpus
                if g.uuid == uuid and g.memory_used is not None and g.error is None]
        peak = max(used, key=lambda tu: tu[1], default=None)  # the first time it was reached
        out.append(GpuSummary(
            index=index, uuid=uuid, name=name, memory_total=total, samples=len(used),
            peak_used=peak[1] if peak else None, peak_time=peak[0] if peak else None,
            average_used=statistics.fmean(u for _, u in used) if used else None,
        ))
    return sorted(out, key=lambda g: g.index)
