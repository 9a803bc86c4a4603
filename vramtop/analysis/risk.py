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
from typing import Any

from vramtop.analysis.advice import Advice, Assumptions, advise, batch_fit, top_advice
from vramtop.analysis.bill import Bill, bill_at_peak, fragmentation, fragmentation_proxy, non_pytorch_of
from vramtop.analysis.diagnosis import diagnose
from vramtop.analysis.join import join
from vramtop.analysis.latch import CRITICAL, INFO, NOTHING, RANK, WARNING, Finding, Latch
from vramtop.analysis.leak import LeakFit, LeakPoint, fit_leak
from vramtop.analysis.thresholds import Thresholds
from vramtop.codec import DecodeError, from_dict, to_dict
from vramtop.model import (
    NOT_VISIBLE,
    AgentDevice,
    AgentEvent,
    AgentSample,
    OomReport,
    ProcessSample,
    Sample,
    TensorCensus,
)
from vramtop.units import fmt_bytes

OOM, RETRIES, HEADROOM, LEAK, FRAGMENTATION, NEIGHBOUR = (
    "oom", "retries", "headroom", "leak", "fragmentation", "neighbour")
KINDS = (OOM, RETRIES, HEADROOM, LEAK, FRAGMENTATION, NEIGHBOUR)  # display order within a level


@dataclass(frozen=True)
class RiskWarning:
    """One warning: what, about whom, the numbers, and one thing to do."""

    level: str  # info | warning | critical
    kind: str  # one of KINDS
    gpu_uuid: str
    gpu_index: int | None
    pid: int | None  # the process concerned (the neighbour's, for a neighbour warning)
    title: str  # one line
    evidence: dict[str, float] = field(hash=False)  # numbers: bytes, ratios, seconds, counts
    sentence: str  # the evidence in words, with those numbers
    action: str  # one concrete thing to do
    since: float | None = None  # sample time at which it was raised

    @property
    def key(self) -> tuple[str, str, int | None]:
        return (self.kind, self.gpu_uuid, self.pid)


def warning_to_dict(w: RiskWarning) -> dict[str, Any]:
    """A warning as every writer writes it (``--once --json``, recordings): one encoding."""
    return {"level": w.level, "kind": w.kind, "gpu_uuid": w.gpu_uuid, "gpu_index": w.gpu_index, "pid": w.pid,
            "title": w.title, "evidence": dict(w.evidence), "sentence": w.sentence, "action": w.action,
            "since": w.since}


def warning_from_dict(data: Mapping[str, Any], pid: int | None = None) -> RiskWarning | None:
    """The warning ``warning_to_dict`` wrote (``pid`` from the record when the data has none);
    None for data that is not one (a damaged or foreign record)."""
    try:
        return from_dict(RiskWarning, {"pid": pid, "evidence": {}, **data})
    except (DecodeError, TypeError, ValueError):
        return None


# -- joining a sample's parts ----------------------------------------------------------------


@dataclass(frozen=True)
class _Place:
    """The memory a process competes for: a GPU, or the MIG device it runs on."""

    uuid: str
    index: int | None
    total: int | None
    used: int | None
    driver_reserved: int
    processes: tuple[ProcessSample, ...]


def _places(sample: Sample) -> dict[str, _Place]:
    out: dict[str, _Place] = {}
    for gpu in sample.gpus:
        if gpu.error:
            continue
        out[gpu.uuid] = _Place(gpu.uuid, gpu.index, gpu.memory_total, gpu.memory_used, gpu.memory_reserved or 0,
                               gpu.processes)
        for mig in gpu.mig_devices:
            procs = tuple(p for p in gpu.processes if p.gpu_instance_id == mig.gpu_instance_id)
            out[mig.uuid] = _Place(mig.uuid, gpu.index, mig.memory_total, mig.memory_used, 0, procs)
    return out


@dataclass(frozen=True)
class _Subject:
    """One process with the agent on one device, and its projected step peak."""

    pid: int  # as NVML reports it when matched, else the agent's own
    agent: AgentSample
    device: AgentDevice
    place: _Place
    row: ProcessSample | None  # its NVML process row
    non_pytorch: int | None  # NVML per-process used - reserved, or the last consistent value
    others: int  # bytes used on the device by everything else (other processes)
    own_peak: int  # reserved at the allocator's peak + non-PyTorch
    projected: int  # own_peak + others + driver-reserved
    bill: Bill | None  # at the allocator's peak
    limit: int | None = None  # what the process can have: the device's total, or its cap
    load: int = 0  # what counts against ``limit``: ``projected``, or reserved at the peak under a cap
    capped: bool = False  # the cap (set_per_process_memory_fraction) is the tighter limit
    foreign: bool = False  # its PID is another namespace's, and NVML's row for it was not found

    @property
    def who(self) -> str:
        """How the process is named: a PID from another namespace is never shown as a local one."""
        return f"PID {self.pid}" + (" (in another PID namespace)" if self.foreign else "")


def _subjects(sample: Sample, places: Mapping[str, _Place],
              non_pytorch: Mapping[tuple[int, str], int]) -> list[_Subject]:
    """Each agent device on the place the join (analysis/join.py) puts it, with its NVML row."""
    out = []
    for m in join(sample).matches:
        place = places.get(m.gpu_uuid) if m.gpu_uuid is not None else None
        if place is None:
            continue
        subject = _project(m.agent, m.device, place, m.row, m.pid, non_pytorch.get((m.pid, place.uuid)))
        out.append(replace(subject, foreign=m.foreign) if m.foreign else subject)
    return out


def _project(agent: AgentSample, device: AgentDevice, place: _Place, row: ProcessSample | None,
             pid: int, known_non_pytorch: int | None) -> _Subject:
    stats = device.stats
    used = row.used_memory if row else None
    # When NVML's figure is not comparable with the allocator's, reuse the last consistent value
    # (the CUDA context and library workspaces barely change during training).
    non_pt = non_pytorch_of(stats, used, place.used)
    if non_pt is None:
        non_pt = known_non_pytorch
    if place.used is not None:
        # Everything else on the device, including processes NVML cannot attribute (containers);
        # the device and per-process figures come from the same NVML poll, so compare those.
        own_now = used if used is not None else stats.reserved + (non_pt or 0)
        others = max(0, place.used - own_now)
    else:
        others = sum(p.used_memory or 0 for p in place.processes if p is not row)
    own_peak = stats.reserved_peak + (non_pt or 0)
    projected = own_peak + others + place.driver_reserved
    bill = bill_at_peak(device, None if non_pt is None else stats.reserved + non_pt)
    limit, load, capped = place.total, projected, False
    cap = device.memory_limit
    # The allocator refuses to reserve past the cap whatever the GPU has free: whichever of the
    # two leaves less room is the one that matters.
    if cap and (place.total is None or cap - stats.reserved_peak < place.total - projected):
        limit, load, capped = cap, stats.reserved_peak, True
    return _Subject(pid, agent, device, place, row, non_pt, others, own_peak, projected, bill, limit, load, capped)


def _advice(s: _Subject, margin: float, assumptions: Assumptions | None = None,
            need: int | None = None) -> tuple[Advice, ...]:
    if s.bill is None:
        return ()
    stats = s.device.stats
    frag = fragmentation(stats)
    last = s.device.last_step
    census = s.device.census
    return advise(
        s.bill,
        device_total=s.limit,
        others=s.load - s.own_peak,
        margin=margin,
        expandable_segments=s.agent.expandable_segments,
        fragmentation=frag,
        optimizer=census.seen if census else None,
        mixed_precision=mixed_precision(s.agent, census),
        world_size=s.agent.world_size,
        checkpointing=s.agent.checkpointing,
        step_seconds=last.duration / max(1, last.steps) if last and last.duration > 0 else None,
        need=need,
        assumptions=assumptions,
    )


def mixed_precision(agent: AgentSample, census: TensorCensus | None) -> bool | None:
    """Whether the process already trains in mixed precision: its forward runs under autocast,
    or most of its parameter bytes are 16-bit; None when the agent has not seen enough."""
    if agent.autocast:
        return True
    if census is not None:
        params = census.parameters_trainable + census.parameters_frozen
        if params and 2 * census.parameters_16bit >= params:
            return True
    return False if agent.autocast is False and census is not None else None


def _subject_of(sample: Sample, agent: AgentSample, device: AgentDevice) -> _Subject | None:
    """One process's subject on one of its devices, from this sample alone (no history)."""
    single = replace(sample, agents=(replace(agent, devices=(device,)),))
    subjects = _subjects(single, _places(sample), {})
    return subjects[0] if subjects else None


def advice_for(sample: Sample, agent: AgentSample, device: AgentDevice, thresholds: Thresholds | None = None,
               assumptions: Assumptions | None = None) -> tuple[Advice, ...]:
    """The ranked advice for one process with the agent on one of its devices (empty when the
    device is not in the sample or nothing is counted yet)."""
    t = thresholds or Thresholds()
    s = _subject_of(sample, agent, device)
    return _advice(s, t.margin, assumptions) if s is not None else ()


def batch_fit_for(sample: Sample, agent: AgentSample, device: AgentDevice, margin: float) -> float | None:
    """The largest micro-batch that fits under ``margin``, as a multiple of the current one
    (the figure behind the batch-size advice); None before the bill has activations."""
    s = _subject_of(sample, agent, device)
    if s is None or s.bill is None or not s.limit:
        return None
    return batch_fit(s.bill, s.limit, s.load - s.own_peak, margin)


# -- the tracker ----------------------------------------------------------------------------


@dataclass
class _State:
    """What the tracker remembers about one process on one device."""

    retries: int | None = None
    ooms: int | None = None
    oom_event: Mapping[str, Any] | None = None
    points: deque[LeakPoint] = field(default_factory=deque)
    last_step: int | None = None
    fit: LeakFit | None = None
    non_pytorch: int | None = None
    last_seen: float = 0.0
    subject: _Subject | None = None


class RiskTracker:
    """Feed it every sample in order; it answers with the warnings in force."""

    def __init__(self, thresholds: Thresholds | None = None, assumptions: Assumptions | None = None) -> None:
        self.thresholds = thresholds or Thresholds()
        self.assumptions = assumptions
        self._states: dict[tuple[int, str], _State] = {}
        self._latches: dict[tuple[str, str, int | None], Latch] = {}
        self._last_time: float | None = None
        self._warnings: tuple[RiskWarning, ...] = ()
        self._pending: list[Any] = []  # events that came with a stale sample

    @property
    def warnings(self) -> tuple[RiskWarning, ...]:
        """The warnings in force after the last sample, most severe first."""
        return self._warnings

    def advice(self, pid: int, uuid: str) -> tuple[Advice, ...]:
        """Ranked advice for a process (PID as NVML reports it) on a GPU, from the last sample."""
        state = self._states.get((pid, uuid))
        if state is None or state.subject is None:
            return ()
        return _advice(state.subject, self.thresholds.margin, self.assumptions)

    def leak(self, pid: int, uuid: str) -> LeakFit | None:
        """The latest fit of persistent memory for a process on a GPU."""
        state = self._states.get((pid, uuid))
        return state.fit if state else None

    def update(self, sample: Sample, events: Iterable[Any] = ()) -> tuple[RiskWarning, ...]:
        """Take one sample (and the agents' events since the last one: OOM events as the agent
        sends them or as a recording stores them) and return the warnings in force."""
        # A stale sample repeats old data: counting it would make conditions "hold" that were
        # seen once. The same goes for a sample seen twice.
        if sample.stale or sample.time == self._last_time:
            self._pending.extend(events)
            self._pending = self._pending[-256:]
            return self._warnings
        self._last_time = now = sample.time
        events, self._pending = [*self._pending, *events], []
        t = self.thresholds
        places = _places(sample)
        known = {k: s.non_pytorch for k, s in self._states.items() if s.non_pytorch is not None}
        subjects = _subjects(sample, places, known)
        ooms = _oom_events(events)
        findings: dict[tuple[str, str, int | None], Finding] = {}
        for s in subjects:
            state = self._states.setdefault((s.pid, s.place.uuid), _State())
            state.last_seen, state.subject = now, s
            if s.non_pytorch is not None:
                state.non_pytorch = s.non_pytorch
            event = ooms.get((s.agent.pid, s.device.index))
            for kind, finding in (
                (OOM, self._oom(s, state, event)),
                (RETRIES, self._retries(s, state)),
                (HEADROOM, self._headroom(s)),
                (LEAK, self._leak(s, state)),
                (FRAGMENTATION, self._fragmentation(s)),
            ):
                if finding is not NOTHING:
                    findings[(kind, s.place.uuid, s.pid)] = finding
        # An OOM event whose process is gone (it died of it) still belongs to its last figures.
        for (agent_pid, index), event in ooms.items():
            if any(s.agent.pid == agent_pid and s.device.index == index for s in subjects):
                continue
            for (pid, uuid), state in self._states.items():
                old = state.subject
                if old is not None and old.agent.pid == agent_pid and old.device.index == index:
                    findings[(OOM, uuid, pid)] = self._oom(old, state, event)
        findings.update(self._neighbours(subjects, places))
        for key, f in findings.items():
            if key not in self._latches and (f.want is not None or f.keep is not None):
                self._latches[key] = Latch()
        for key, latch in self._latches.items():
            latch.step(findings.get(key, NOTHING), now, t)
        self._forget(now)
        active = [replace(latch.content, level=latch.level, since=latch.since)
                  for latch in self._latches.values() if latch.level is not None and latch.content is not None]
        order = {k: i for i, k in enumerate(KINDS)}
        active.sort(key=lambda w: (-RANK[w.level], order[w.kind],
                                   w.gpu_index if w.gpu_index is not None else 1 << 30, w.pid or 0))
        self._warnings = tuple(active)
        return self._warnings

    def _forget(self, now: float) -> None:
        # Bounded memory: an idle latch holds nothing worth keeping, and a process gone for a
        # while is dropped once nothing about it is shown.
        for key, latch in list(self._latches.items()):
            if latch.level is None and latch.up == 0 and now >= latch.hold_until:
                del self._latches[key]
        shown = {(k[2], k[1]) for k in self._latches}
        for subject, state in list(self._states.items()):
            if now - state.last_seen > self.thresholds.forget_after and subject not in shown:
                del self._states[subject]

    # -- rules ------------------------------------------------------------------------------

    def _warning(self, s: _Subject, level: str, kind: str, title: str, evidence: dict[str, float],
                 sentence: str, action: str) -> RiskWarning:
        return RiskWarning(level, kind, s.place.uuid, s.place.index, s.pid, title, evidence, sentence, action)

    def _lines(self, s: _Subject) -> tuple[int, int, int, int] | None:
        """Raise and clear lines (bytes) for warning and critical, against the subject's limit."""
        total = s.limit
        if not total:
            return None
        t = self.thresholds
        warn, crit = total * (1 - t.margin), total * (1 - t.critical_margin)
        band = total * t.clear_band
        return int(warn), int(crit), int(warn - band), int(crit - band)

    def _action(self, s: _Subject, fallback: str, need: int | None = None) -> str:
        top = top_advice(_advice(s, self.thresholds.margin, self.assumptions, need))
        return top.text if top else fallback

    def _headroom(self, s: _Subject) -> Finding:
        lines = self._lines(s)
        if lines is None:
            return NOTHING
        warn, crit, warn_clear, crit_clear = lines
        p = s.load
        want = CRITICAL if p > crit else WARNING if p > warn else None
        keep = CRITICAL if p > crit_clear else WARNING if p > warn_clear else None
        if keep is None:
            return NOTHING
        total = s.limit or 0
        if s.capped:
            return self._headroom_capped(s, want, keep, p, total, warn)
        short = p - warn
        evidence: dict[str, float] = {
            "projected": p, "total": total, "limit": warn, "share": p / total, "own_peak": s.own_peak,
            "reserved_peak": s.device.stats.reserved_peak, "non_pytorch": s.non_pytorch or 0,
            "others": s.others, "driver_reserved": s.place.driver_reserved, "shortfall": max(0, short),
        }
        non_pt = "unknown non-PyTorch" if s.non_pytorch is None else f"{fmt_bytes(s.non_pytorch)} non-PyTorch"
        sentence = (
            f"{s.who}'s step peak ({fmt_bytes(s.device.stats.reserved_peak)} reserved at the allocator's peak "
            f"+ {non_pt}) plus {fmt_bytes(s.others)} used by others and {fmt_bytes(s.place.driver_reserved)} "
            f"reserved by the driver comes to {fmt_bytes(p)}, {p / total:.0%} of {fmt_bytes(total)}; "
            + (f"that is {fmt_bytes(short)} past the {self.thresholds.margin:.0%} safety margin."
               if short > 0 else f"only {fmt_bytes(-short)} inside the {self.thresholds.margin:.0%} safety margin.")
        )
        title = f"GPU {s.place.index}: projected step peak {fmt_bytes(p)} of {fmt_bytes(total)} ({p / total:.0%})"
        action = self._action(s, "Lower the step peak (a smaller micro-batch) or free memory on this GPU.")
        return Finding(want, keep, self._warning(s, keep, HEADROOM, title, evidence, sentence, action))

    def _headroom_capped(self, s: _Subject, want: str | None, keep: str | None, reserved: int, cap: int,
                         warn: int) -> Finding:
        short = reserved - warn
        evidence: dict[str, float] = {"projected": reserved, "total": cap, "limit": warn, "share": reserved / cap,
                                      "reserved_peak": reserved, "cap": cap, "shortfall": max(0, short)}
        sentence = (
            f"{s.who} may reserve at most {fmt_bytes(cap)} (its cap, set_per_process_memory_fraction, whatever "
            f"the GPU has free); at the allocator's peak it reserved {fmt_bytes(reserved)}, {reserved / cap:.0%} "
            "of it; "
            + (f"that is {fmt_bytes(short)} past the {self.thresholds.margin:.0%} safety margin."
               if short > 0 else f"only {fmt_bytes(-short)} inside the {self.thresholds.margin:.0%} safety margin."))
        title = f"GPU {s.place.index}: step peak {fmt_bytes(reserved)} of {s.who}'s {fmt_bytes(cap)} cap " \
                f"({reserved / cap:.0%})"
        action = self._action(s, "Lower the step peak (a smaller micro-batch) or raise the process's memory fraction.")
        return Finding(want, keep, self._warning(s, keep or WARNING, HEADROOM, title, evidence, sentence, action))

    def _retries(self, s: _Subject, state: _State) -> Finding:
        count = s.device.stats.num_alloc_retries
        before, state.retries = state.retries, count
        if count <= (before if before is not None else 0):
            return NOTHING
        first = before is None
        delta = count - (before or 0)
        level = INFO if first else WARNING
        evidence: dict[str, float] = {"retries": count, "delta": delta, "reserved": s.device.stats.reserved}
        if first:
            sentence = (f"{s.who}'s allocator had already flushed its cache and retried cudaMalloc {count} "
                        f"time{'s' if count != 1 else ''} before vramtop started watching it.")
        else:
            sentence = (f"{s.who}'s allocator flushed its cache and retried cudaMalloc {delta} more "
                        f"time{'s' if delta != 1 else ''} ({count} in all): each retry synchronises the device "
                        "and the next failure is an OOM.")
        frag = fragmentation(s.device.stats) or 0.0
        if s.agent.expandable_segments is not True and frag > self.thresholds.frag_ratio:
            action = ("Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True so freed blocks can be reused instead "
                      "of flushed.")
        else:
            action = self._action(s, "Lower the step peak, e.g. a smaller micro-batch with gradient accumulation.")
        title = f"GPU {s.place.index}: allocation retries in {s.who} ({count})"
        return Finding(level, level, self._warning(s, level, RETRIES, title, evidence, sentence, action),
                        immediate=True, hold=self.thresholds.event_hold)

    def _oom(self, s: _Subject, state: _State, event: Mapping[str, Any] | None) -> Finding:
        count = s.device.stats.num_ooms
        before, state.ooms = state.ooms, count
        rose = count > (before if before is not None else 0)
        if event is not None:
            state.oom_event = event
        if not rose and event is None:
            return NOTHING
        first = before is None and event is None
        delta = count - (before or 0)
        level = WARNING if first else CRITICAL
        ev = state.oom_event
        evidence: dict[str, float] = {"ooms": count, "delta": max(0, delta)}
        detail = ""
        need = None
        diagnosis = None
        if ev is not None:
            requested, free = int(ev.get("requested", 0)), int(ev.get("device_free", 0))
            evidence.update(requested=requested, device_free=free, device_total=int(ev.get("device_total", 0)))
            detail = f"; it asked for {fmt_bytes(requested)} with {fmt_bytes(free)} free"
            if s.place.total:
                need = max(0, requested - free) + int(s.place.total * self.thresholds.margin)
            try:  # the agent's report at the failure: what kind of OOM it was
                # Other processes' rows come from one NVML poll: unlike memory.used they are
                # comparable with each other during an OOM's fast growth.
                others = sum(p.used_memory or 0 for p in s.place.processes if p is not s.row)
                diagnosis = diagnose(from_dict(OomReport, dict(ev)), others, s.agent.expandable_segments)
            except (DecodeError, TypeError, ValueError):
                diagnosis = None
        if first:
            sentence = (f"{s.who} had already run out of GPU memory {count} time{'s' if count != 1 else ''} "
                        "before vramtop started watching it (the program caught the error).")
        else:
            # An event may arrive before (or, if the process died, without) the counter's rise.
            so_far = f" ({count} OOM{'s' if count != 1 else ''} so far)" if count else ""
            sentence = f"{s.who} ran out of GPU memory{so_far}{detail}."
        if diagnosis is not None:
            sentence += " " + diagnosis.headline
            evidence["short"] = diagnosis.short
        if ev is not None and isinstance(ev.get("path"), str):
            sentence += f" Post-mortem: {ev['path']}"
        if diagnosis is not None and diagnosis.action is not None:
            action = diagnosis.action  # not a matter of capacity: no lever fixes it
        else:
            action = self._action(s, "Lower the step peak: a smaller micro-batch with gradient accumulation.", need)
        kind = f" ({diagnosis.kind})" if diagnosis is not None else ""
        title = f"GPU {s.place.index}: out of memory in {s.who}{kind}"
        return Finding(level, level, self._warning(s, level, OOM, title, evidence, sentence, action),
                        immediate=True, hold=self.thresholds.event_hold)

    def _leak(self, s: _Subject, state: _State) -> Finding:
        t = self.thresholds
        last = s.device.last_step
        if last is not None and last.step > t.leak_warmup_steps and last.step != state.last_step:
            state.last_step = last.step
            at = s.agent.time
            if not state.points or at - state.points[-1].time >= t.leak_point_gap:
                if state.points and last.step < state.points[-1].step:
                    state.points.clear()  # the step counter went back: another run in this process
                state.points.append(LeakPoint(last.step, at, last.persistent))
                while len(state.points) > t.leak_window:
                    state.points.popleft()
                state.fit = fit_leak(state.points)
        fit = state.fit
        if fit is None or fit.points < t.leak_min_points or fit.per_second <= 0:
            return NOTHING
        raise_ok = (fit.seconds >= t.leak_min_span and fit.monotone >= t.leak_monotone
                    and fit.largest_jump <= t.leak_max_jump and fit.growth >= t.leak_min_growth
                    and fit.growth >= 3 * fit.noise and fit.per_second >= t.leak_min_rate)
        keep_ok = (fit.monotone >= t.leak_monotone_clear and fit.growth >= t.leak_min_growth / 2
                   and fit.per_second >= t.leak_min_rate / 2)
        if not keep_ok:
            return NOTHING
        total = s.limit
        eta = margin_eta = steps_eta = None
        if total:  # against the process's cap, when that is the tighter limit
            eta = max(0.0, (total - s.load) / fit.per_second)
            margin_eta = max(0.0, (total * (1 - t.margin) - s.load) / fit.per_second)
            steps_eta = max(0.0, (total - s.load) / fit.per_step) if fit.per_step > 0 else None
        level = (CRITICAL if eta is not None and eta < t.leak_critical
                 else INFO if eta is not None and eta > t.leak_horizon else WARNING)
        evidence: dict[str, float] = {
            "per_step": fit.per_step, "per_second": fit.per_second, "growth": fit.growth, "points": fit.points,
            "steps": fit.steps, "seconds": fit.seconds, "monotone": fit.monotone,
            "persistent": last.persistent if last else 0, "projected": s.load,
        }
        if eta is not None:
            evidence.update(seconds_to_oom=eta, seconds_to_margin=margin_eta or 0.0)
        if steps_eta is not None:
            evidence["steps_to_oom"] = steps_eta
        when = ("" if eta is None else
                f"; at this rate the step peak reaches {'its cap' if s.capped else 'the device total'} "
                f"in ~{_duration(eta)}"
                + (f" (~{steps_eta:,.0f} steps)" if steps_eta is not None else "")
                + f" and the {t.margin:.0%} margin in ~{_duration(margin_eta or 0.0)}")
        sentence = (f"Memory still allocated after each optimizer step in {s.who} grew "
                    f"{fmt_bytes(int(fit.growth))} over the last {fit.steps} steps ({_duration(fit.seconds)}): "
                    f"{fmt_bytes(int(fit.per_step))}/step, {fmt_bytes(int(fit.per_second * 60))}/min{when}.")
        action = ("Look for tensors kept across steps: losses or outputs appended to a list without .item() or "
                  ".detach(), growing caches, or hooks that store activations.")
        title = (f"GPU {s.place.index}: persistent memory of {s.who} grows {fmt_bytes(int(fit.per_step))}/step"
                 + (f", OOM in ~{_duration(eta)}" if eta is not None and eta <= t.leak_horizon else ""))
        want = level if raise_ok else None
        return Finding(want, level, self._warning(s, level, LEAK, title, evidence, sentence, action))

    def _fragmentation(self, s: _Subject) -> Finding:
        t = self.thresholds
        stats = s.device.stats
        if s.agent.expandable_segments is True:
            # Under memory pressure the allocator unmaps the free pages of expandable segments and
            # maps them where they are needed: free blocks in pieces cannot fail a large request.
            return NOTHING
        frag = fragmentation(stats)
        proxy = frag is None
        if frag is None:
            frag = fragmentation_proxy(stats)
        if frag is None:
            return NOTHING
        cache = stats.reserved - stats.allocated
        floor = max(t.frag_min_cache, int(t.frag_min_share * s.place.total)) if s.place.total else t.frag_min_cache
        high = frag > t.frag_ratio and cache >= floor
        keep = frag > t.frag_clear_ratio and cache >= floor * 3 // 4
        if not keep:
            return NOTHING
        lines = self._lines(s)
        # A healthy transformer's cache between steps is in pieces and harms nothing: the figure
        # stays in the bill line. It becomes a warning only with evidence of harm: the allocator
        # had to flush its cache (retries) or failed (an OOM), or the peak is past the margin.
        pressed = (stats.num_alloc_retries > 0 or stats.num_ooms > 0
                   or (lines is not None and s.load > lines[0]))
        if not pressed:
            return NOTHING
        level = WARNING
        evidence: dict[str, float] = {"fragmentation": frag, "cache": cache, "retries": stats.num_alloc_retries}
        if stats.largest_free_block is not None:
            evidence["largest_free_block"] = stats.largest_free_block
        block = ("" if stats.largest_free_block is None
                 else f", its largest free block only {fmt_bytes(stats.largest_free_block)}")
        sentence = (f"{s.who}'s allocator caches {fmt_bytes(cache)} unused by any tensor{block}: fragmentation "
                    f"{frag:.2f}{' (estimated between snapshots)' if proxy else ''}"
                    + (f", with {stats.num_alloc_retries} allocation retries." if stats.num_alloc_retries else "."))
        action = ("Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True before the program starts so the cache "
                  "stays usable for large tensors.")
        title = f"GPU {s.place.index}: fragmented allocator cache in {s.who} ({frag:.2f} of {fmt_bytes(cache)})"
        return Finding(level if high else None, level,
                        self._warning(s, level, FRAGMENTATION, title, evidence, sentence, action))

    def _neighbours(self, subjects: Sequence[_Subject],
                    places: Mapping[str, _Place]) -> dict[tuple[str, str, int | None], Finding]:
        t = self.thresholds
        out: dict[tuple[str, str, int | None], Finding] = {}
        by_place: dict[str, list[_Subject]] = {}
        for s in subjects:
            by_place.setdefault(s.place.uuid, []).append(s)
        for uuid, training in by_place.items():
            place = places[uuid]
            if any(s.row is None for s in training) and place.processes:
                # A training process NVML lists under a PID we could not match (PID namespaces):
                # any row might be its own, so no row can be called a neighbour.
                continue
            floor = min(t.neighbour_min_bytes, int(t.neighbour_min_share * place.total)) if place.total \
                else t.neighbour_min_bytes
            pressed = any((ln := self._lines(s)) is not None and s.load > ln[0] for s in training)
            ranks = {s.pid: s for s in training if s.agent.rank is not None}
            if len({s.agent.rank for s in ranks.values()}) < 2:
                ranks = {}
            else:  # said once for the GPU, not as each rank being the others' neighbour
                out.update(self._ranks_sharing(place, list(ranks.values()), places))
            for proc in place.processes:
                if proc.pid in ranks:
                    continue
                used = proc.used_memory
                victims = [s for s in training if s.pid != proc.pid]
                if used is None or not victims or used < floor * 3 // 4:
                    continue
                level = WARNING if pressed else INFO
                who = proc.command or proc.name or "command unknown"
                if proc.visibility == NOT_VISIBLE:
                    who += ", not visible here: another container?"
                if proc.user:
                    who += f", user {proc.user}"
                pids = ", ".join(str(s.pid) for s in victims)
                share = used / place.total if place.total else 0.0
                sentence = (f"PID {proc.pid} ({_short(who)}) holds {fmt_bytes(used)}"
                            + (f" ({share:.0%} of the GPU)" if place.total else "")
                            + f" on GPU {place.index}, next to training PID {pids}.")
                action = (f"Stop PID {proc.pid} or move it to another GPU (CUDA_VISIBLE_DEVICES): that gives "
                          f"{fmt_bytes(used)} back to training.")
                title = f"GPU {place.index}: PID {proc.pid} holds {fmt_bytes(used)} next to training"
                warning = RiskWarning(level, NEIGHBOUR, uuid, place.index, proc.pid, title,
                                      {"used": used, "share": share, "threshold": floor}, sentence, action)
                out[(NEIGHBOUR, uuid, proc.pid)] = Finding(level if used >= floor else None, level, warning)
        return out


    @staticmethod
    def _ranks_sharing(place: _Place, ranks: list[_Subject],
                       places: Mapping[str, _Place]) -> dict[tuple[str, str, int | None], Finding]:
        """Ranks of a distributed job training on one GPU: usually a missing
        ``torch.cuda.set_device(LOCAL_RANK)``, which puts every rank on GPU 0. A warning when another
        GPU on the machine has no process at all, else information (more ranks than GPUs)."""
        ranks = sorted(ranks, key=lambda s: (s.agent.rank or 0, s.pid))
        idle = sorted(str(p.index) for p in places.values()
                      if p.uuid != place.uuid and not p.processes and p.index is not None)
        level = WARNING if idle else INFO
        numbers = ", ".join(str(s.agent.rank) for s in ranks)
        who = ", ".join(f"rank {s.agent.rank} ({s.who}, {fmt_bytes(s.row.used_memory or 0) if s.row else '?'})"
                        for s in ranks)
        sentence = (f"{who} of a distributed job all train on GPU {place.index}"
                    + (f", while GPU {', '.join(idle)} {'has' if len(idle) == 1 else 'have'} no process." if idle
                       else "."))
        action = ("Give each rank its own GPU: call torch.cuda.set_device(int(os.environ['LOCAL_RANK'])) before "
                  "any CUDA work (or create tensors on f\"cuda:{LOCAL_RANK}\").")
        title = f"GPU {place.index}: ranks {numbers} share one GPU"
        evidence = {"ranks": float(len(ranks)), "idle_gpus": float(len(idle))}
        warning = RiskWarning(level, NEIGHBOUR, place.uuid, place.index, ranks[0].pid, title, evidence, sentence,
                              action)
        return {(NEIGHBOUR, place.uuid, ranks[0].pid): Finding(level, level, warning)}


def assess(sample: Sample, thresholds: Thresholds | None = None) -> tuple[RiskWarning, ...]:
    """The warnings one sample supports on its own (``vramtop --once``): no hysteresis, no leak
    trend; retries and OOMs count as having happened before."""
    t = replace(thresholds or Thresholds(), raise_after=1)
    return RiskTracker(t).update(sample)


def warnings_over(samples: Sequence[Sample], events: Sequence[Any] = (),
                  thresholds: Thresholds | None = None) -> list[tuple[RiskWarning, ...]]:
    """The warnings in force at each sample of a recording, with each recorded event (with a
    ``time``) handed to the sample that follows it, as the live monitor would have had it."""
    tracker = RiskTracker(thresholds)
    ordered = sorted(events, key=lambda e: e.time)
    out: list[tuple[RiskWarning, ...]] = []
    i = 0
    for s in samples:
        since = []
        while i < len(ordered) and ordered[i].time <= s.time:
            since.append(ordered[i])
            i += 1
        out.append(tracker.warnings if s.stale else tracker.update(s, since))
    return out


def _oom_events(events: Iterable[Any]) -> dict[tuple[int, int], Mapping[str, Any]]:
    """OOM events by (PID, CUDA device index): typed AgentEvents, recorded Events or raw messages."""
    out: dict[tuple[int, int], Mapping[str, Any]] = {}
    for e in events:
        kind: Any
        pid: Any
        data: Any
        if isinstance(e, AgentEvent):
            kind, pid, data = e.kind, e.pid, to_dict(e.oom) if e.oom is not None else {}
        elif isinstance(e, Mapping):
            kind, pid, data = e.get("kind"), e.get("pid"), e.get("data", e)
        else:
            kind, pid, data = getattr(e, "kind", None), getattr(e, "pid", None), getattr(e, "data", {})
        if kind != "oom" or not isinstance(pid, int) or not isinstance(data, Mapping):
            continue
        device = data.get("device", 0)
        out[(pid, device if isinstance(device, int) else 0)] = data
    return out


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"
