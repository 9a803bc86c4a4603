"""OOM risk: early warnings from a bounded history of samples.

:class:`RiskTracker` is fed every sample in order and answers with the warnings in force. Each
rule looks at one process with the agent on one GPU (or, for neighbours, at one GPU) and says
which level its condition reaches now and which level it may keep; a small latch per warning
turns that into a display that does not flicker: a warning is raised after its condition held
for ``raise_after`` consecutive samples (at once for events: retries, OOMs), and lowered after
its weaker clear condition failed for ``clear_after`` samples (events are held for
``event_hold`` seconds). Time comes from the samples; nothing here reads a clock.

The thresholds and the reasoning behind each default are in docs/risk.md; the leak's line is
fitted in leak.py, and an OOM is summed up in postmortem.py.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from vramtop.analysis import rules
from vramtop.analysis.latch import CRITICAL, INFO, NOTHING, RANK, WARNING, Finding, Latch
from vramtop.analysis.subjects import (
    Subject,
    advice_for,
    batch_fit_for,
    mixed_precision,
    places,
    subject_advice,
    subjects,
)
from vramtop.analysis.thresholds import Thresholds
from vramtop.analysis.warning import (
    FRAGMENTATION,
    HEADROOM,
    KINDS,
    LEAK,
    NEIGHBOUR,
    OOM,
    RETRIES,
    RiskWarning,
    warning_from_dict,
    warning_to_dict,
)
from vramtop.model import AgentEvent, OomReport, Sample

if TYPE_CHECKING:
    # Needed once a process with the agent is seen (a subject): imported where used.
    from vramtop.analysis.advice import Advice, Assumptions
    from vramtop.analysis.leak import LeakFit, LeakPoint

__all__ = [  # the warnings' vocabulary, re-exported for the tracker's users
    "CRITICAL", "FRAGMENTATION", "HEADROOM", "INFO", "KINDS", "LEAK", "NEIGHBOUR", "OOM", "RETRIES", "WARNING",
    "RiskTracker", "RiskWarning", "advice_for", "assess", "batch_fit_for", "mixed_precision", "warning_from_dict",
    "warning_to_dict", "warnings_over",
]


@dataclass
class _Memory:
    """What the tracker remembers about one process on one device between samples."""

    retries: int | None = None  # the allocator's retry count at the last sample
    ooms: int | None = None  # its OOM count at the last sample
    oom_event: OomReport | None = None  # the latest OOM report
    points: deque[LeakPoint] = field(default_factory=deque)  # persistent memory at step boundaries
    last_step: int | None = None
    fit: LeakFit | None = None
    non_pytorch: int | None = None  # the last consistent non-PyTorch figure
    last_seen: float = 0.0
    subject: Subject | None = None


Key = tuple[str, str, int | None]  # (kind, device UUID, PID): one warning


class RiskTracker:
    """Feed it every sample in order; it answers with the warnings in force."""

    def __init__(self, thresholds: Thresholds | None = None, assumptions: Assumptions | None = None) -> None:
        self.thresholds = thresholds or Thresholds()
        self.assumptions = assumptions
        self._memory: dict[tuple[int, str], _Memory] = {}
        self._latches: dict[Key, Latch] = {}
        self._last_time: float | None = None
        self._warnings: tuple[RiskWarning, ...] = ()
        self._pending: list[AgentEvent] = []  # events that came with a stale sample

    @property
    def warnings(self) -> tuple[RiskWarning, ...]:
        """The warnings in force after the last sample, most severe first."""
        return self._warnings

    @property
    def watched(self) -> int:
        """How many (process, device) pairs the tracker remembers: bounded, see ``forget_after``."""
        return len(self._memory)

    def advice(self, pid: int, uuid: str) -> tuple[Advice, ...]:
        """Ranked advice for a process (PID as NVML reports it) on a GPU, from the last sample."""
        memory = self._memory.get((pid, uuid))
        if memory is None or memory.subject is None:
            return ()
        return subject_advice(memory.subject, self.thresholds.margin, self.assumptions)

    def subject(self, pid: int, uuid: str) -> Subject | None:
        """What the rules judged of a process (PID as NVML reports it) on a GPU at the last fresh
        sample: its projected step peak, its limit, its last consistent non-PyTorch figure."""
        memory = self._memory.get((pid, uuid))
        return memory.subject if memory else None

    def leak(self, pid: int, uuid: str) -> LeakFit | None:
        """The latest fit of persistent memory for a process on a GPU."""
        memory = self._memory.get((pid, uuid))
        return memory.fit if memory else None

    def update(self, sample: Sample) -> tuple[RiskWarning, ...]:
        """Take one sample, with the agents' events since the previous one (``sample.events``:
        OOM reports), and return the warnings in force."""
        # A stale sample repeats old data: counting it would make conditions "hold" that were
        # seen once. The same goes for a sample seen twice. Its events wait for the next one.
        if sample.stale or sample.time == self._last_time:
            self._pending = [*self._pending, *sample.events][-256:]
            return self._warnings
        self._last_time = now = sample.time
        events, self._pending = [*self._pending, *sample.events], []
        where = places(sample)
        known = {k: m.non_pytorch for k, m in self._memory.items() if m.non_pytorch is not None}
        found = subjects(sample, where, known)
        findings = self._judge(found, _oom_events(events), now)
        findings.update(rules.neighbours(found, where, self.thresholds))
        for key, f in findings.items():
            if key not in self._latches and (f.want is not None or f.keep is not None):
                self._latches[key] = Latch()
        for key, latch in self._latches.items():
            latch.step(findings.get(key, NOTHING), now, self.thresholds)
        self._forget(now)
        active = [replace(latch.content, level=latch.level, since=latch.since)
                  for latch in self._latches.values() if latch.level is not None and latch.content is not None]
        order = {k: i for i, k in enumerate(KINDS)}
        active.sort(key=lambda w: (-RANK[w.level], order[w.kind],
                                   w.gpu_index if w.gpu_index is not None else 1 << 30, w.pid or 0))
        self._warnings = tuple(active)
        return self._warnings

    def _judge(self, found: Sequence[Subject], ooms: Mapping[tuple[int, int], OomReport],
               now: float) -> dict[Key, Finding]:
        """Each per-process rule over each subject, with what is remembered of it."""
        t, a = self.thresholds, self.assumptions
        findings: dict[Key, Finding] = {}
        for s in found:
            memory = self._memory.setdefault((s.pid, s.place.uuid), _Memory())
            memory.last_seen, memory.subject = now, s
            if s.non_pytorch is not None:
                memory.non_pytorch = s.non_pytorch
            self._observe_step(s, memory)
            for kind, finding in (
                (OOM, self._oom(s, memory, ooms.get((s.agent.pid, s.device.index)))),
                (RETRIES, rules.retries(s, memory.retries, t, a)),
                (HEADROOM, rules.headroom(s, t, a)),
                (LEAK, rules.leak(s, memory.fit, t)),
                (FRAGMENTATION, rules.fragmentation_rule(s, t)),
            ):
                if finding is not NOTHING:
                    findings[(kind, s.place.uuid, s.pid)] = finding
            memory.retries = s.device.stats.num_alloc_retries
        # An OOM event whose process is gone (it died of it) still belongs to its last figures.
        for (agent_pid, index), event in ooms.items():
            if any(s.agent.pid == agent_pid and s.device.index == index for s in found):
                continue
            for (pid, uuid), memory in self._memory.items():
                old = memory.subject
                if old is not None and old.agent.pid == agent_pid and old.device.index == index:
                    findings[(OOM, uuid, pid)] = self._oom(old, memory, event)
        return findings

    def _oom(self, s: Subject, memory: _Memory, event: OomReport | None) -> Finding:
        if event is not None:
            memory.oom_event = event
        finding = rules.oom(s, memory.ooms, event is not None, memory.oom_event, self.thresholds, self.assumptions)
        memory.ooms = s.device.stats.num_ooms
        return finding

    def _observe_step(self, s: Subject, memory: _Memory) -> None:
        """Keep a point of persistent memory per finished step (spaced in time) and refit the leak."""
        t = self.thresholds
        last = s.device.last_step
        if last is None or last.step <= t.leak_warmup_steps or last.step == memory.last_step:
            return
        memory.last_step = last.step
        at = s.agent.time
        points = memory.points
        if points and at - points[-1].time < t.leak_point_gap:
            return
        if points and last.step < points[-1].step:
            points.clear()  # the step counter went back: another run in this process
        from vramtop.analysis.leak import LeakPoint, fit_leak  # once a step of an agent's is seen

        points.append(LeakPoint(last.step, at, last.persistent))
        while len(points) > t.leak_window:
            points.popleft()
        memory.fit = fit_leak(points)

    def _forget(self, now: float) -> None:
        # Bounded memory: an idle latch holds nothing worth keeping, and a process gone for a
        # while is dropped once nothing about it is shown.
        for key, latch in list(self._latches.items()):
            if latch.level is None and latch.up == 0 and now >= latch.hold_until:
                del self._latches[key]
        shown = {(k[2], k[1]) for k in self._latches}
        for who, memory in list(self._memory.items()):
            if now - memory.last_seen > self.thresholds.forget_after and who not in shown:
                del self._memory[who]


def assess(sample: Sample, thresholds: Thresholds | None = None) -> tuple[RiskWarning, ...]:
    """The warnings one sample supports on its own (``vramtop --once``): no hysteresis, no leak
    trend; retries and OOMs count as having happened before."""
    t = replace(thresholds or Thresholds(), raise_after=1)
    return RiskTracker(t).update(sample)


def warnings_over(samples: Sequence[Sample], thresholds: Thresholds | None = None) -> list[tuple[RiskWarning, ...]]:
    """The warnings in force at each sample of a recording, fed in order as the live monitor was
    (samples with their events inside: ``Recording.samples_with_events()``)."""
    tracker = RiskTracker(thresholds)
    return [tracker.update(s) for s in samples]


def _oom_events(events: Iterable[AgentEvent]) -> dict[tuple[int, int], OomReport]:
    """The latest OOM report of each (PID, CUDA device index)."""
    return {(e.pid, e.oom.device): e.oom for e in events if e.kind == "oom" and e.oom is not None}
