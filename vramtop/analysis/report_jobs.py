"""Distributed jobs over a recording: each job's ranks (analysis/jobs.py) with the highest step
peak each reached, the least headroom it had, the rank that came closest to OOM and how far
apart the ranks' peaks were (``vramtop report``)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from vramtop.analysis.jobs import Job, RankState, jobs
from vramtop.analysis.samples import selected
from vramtop.model import Sample


@dataclass(frozen=True)
class RankSummary:
    rank: int
    pid: int
    gpu_index: int | None
    peak: int | None  # the highest bill at the step peak seen (reserved then + non-PyTorch), bytes
    peak_time: float | None
    least_headroom: int | None  # the least headroom at the projected peak seen, bytes
    least_headroom_time: float | None
    steps: int  # optimizer steps at its last sample


@dataclass(frozen=True)
class JobSummary:
    label: str
    world_size: int | None
    ranks: tuple[RankSummary, ...]
    guessed: bool = False

    @property
    def closest(self) -> RankSummary | None:
        """The rank that had the least headroom at some point of the recording."""
        known = [r for r in self.ranks if r.least_headroom is not None]
        return min(known, key=lambda r: (r.least_headroom, r.rank)) if known else None

    @property
    def peaks(self) -> list[int]:
        return [r.peak for r in self.ranks if r.peak is not None]

    @property
    def highest(self) -> RankSummary | None:
        known = [r for r in self.ranks if r.peak is not None]
        return max(known, key=lambda r: (r.peak or 0, -r.rank)) if known else None

    @property
    def spread(self) -> int | None:
        """Highest peak − lowest peak over the ranks, bytes (None with fewer than two)."""
        peaks = self.peaks
        return max(peaks) - min(peaks) if len(peaks) >= 2 else None

    @property
    def ratio(self) -> float | None:
        """Highest peak / median peak (1.0: the ranks are even)."""
        peaks = self.peaks
        median = statistics.median(peaks) if len(peaks) >= 2 else 0
        return max(peaks) / median if median > 0 else None


class _RankTrack:
    def __init__(self, r: RankState) -> None:
        self.rank, self.pid, self.gpu_index, self.steps = r.rank, r.pid, r.gpu_index, r.step
        self.peak: int | None = None
        self.peak_time: float | None = None
        self.room: int | None = None
        self.room_time: float | None = None

    def add(self, r: RankState, t: float) -> None:
        self.pid, self.steps = r.pid, r.step
        self.gpu_index = r.gpu_index if r.gpu_index is not None else self.gpu_index
        if r.peak is not None and (self.peak is None or r.peak > self.peak):
            self.peak, self.peak_time = r.peak, t
        if r.headroom is not None and (self.room is None or r.headroom < self.room):
            self.room, self.room_time = r.headroom, t

    def summary(self) -> RankSummary:
        return RankSummary(self.rank, self.pid, self.gpu_index, self.peak, self.peak_time, self.room,
                           self.room_time, self.steps)


def job_summaries(fresh: Sequence[Sample], selectors: Sequence[str] | None) -> list[JobSummary]:
    """The jobs of two ranks or more seen in the fresh samples; with ``selectors``, the ranks on
    the selected GPUs."""
    found: dict[str, tuple[Job, dict[tuple[int, int], _RankTrack]]] = {}
    for s in fresh:
        for job in jobs(s):
            _, tracks = found.get(job.label, (job, {}))
            found[job.label] = (job, tracks)  # the latest: its world size
            for r in job.ranks:
                place = r.subject.place if r.subject else None
                if selectors and (place is None or not selected(place.index or 0, place.uuid, selectors)):
                    continue
                tracks.setdefault((r.rank, r.agent.pid), _RankTrack(r)).add(r, s.time)
    out = []
    for job, tracks in found.values():
        ranks = tuple(sorted((t.summary() for t in tracks.values()), key=lambda r: (r.rank, r.pid)))
        if len(ranks) >= 2:
            out.append(JobSummary(job.label, job.world_size, ranks, job.guessed))
    return out
