"""What a recording says, summed up: the run, peaks and averages per GPU and process, the bill
at the allocator's peak, steps, events and damage (``vramtop report``), and the series its
picture is drawn from.

Pure functions over a :class:`~vramtop.recording.Recording`: no I/O, no formatting.
Stale samples (the last good data recorded again while NVML did not answer) repeat old
numbers: peaks and averages skip them.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from vramtop.analysis.bill import Bill, bill_at_peak, bill_now, non_pytorch_of
from vramtop.analysis.diagnosis import with_history
from vramtop.analysis.join import join
from vramtop.analysis.postmortem import postmortem_of
from vramtop.analysis.risk import warnings_over
from vramtop.analysis.thresholds import Thresholds
from vramtop.codec import DecodeError, from_dict
from vramtop.model import AgentDevice, AgentSample, OomReport, ProcessSample, Sample, StepPeak
from vramtop.recording import Event, Recording

# A process is keyed by (PID as NVML reports it, GPU UUID).
Key = tuple[int, str]

# The bill's categories, bottom to top of the picture; "allocated (not yet attributed)" stands
# for the allocator's allocated bytes while the agent has not counted the tensors yet.
UNATTRIBUTED = "allocated (not yet attributed)"
STACK_ORDER = (
    "parameters (trainable)",
    "parameters (frozen)",
    "gradients",
    "optimizer state",
    "other persistent",
    "activations & temporaries",
    UNATTRIBUTED,
    "allocator cache",
    "non-PyTorch",
)


# -- the summary ----------------------------------------------------------------------------


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
class PeakBill:
    """The bill at the allocator's peak, from the sample where allocated_peak was highest."""

    time: float  # of that sample
    bill: Bill
    nvml_used: int | None  # NVML's per-process figure in the same sample, when consistent
    note: str | None = None  # why non-PyTorch (and the total) is missing, when it is


@dataclass(frozen=True)
class AgentSummary:
    """What the process's agent reported on one device over the recording."""

    torch_version: str
    device_index: int
    samples: int
    first_seen: float
    last_seen: float
    peak_allocated: int  # allocated_bytes.all.peak, the highest seen
    peak_reserved: int  # reserved_bytes.all.peak
    peak_time: float  # first sample that showed peak_allocated
    peak_step: int | None  # the step during which the peak was reached (or the step counter then)
    at_peak: PeakBill | None
    steps: int  # optimizer steps seen (the agent's counter at its last sample)
    step_time: float | None  # median seconds per step over the measured steps
    steps_measured: int  # how many measured steps step_time comes from
    highest_step_peak: int | None  # the highest peak of a single step, bytes allocated
    highest_sampled: int  # the most bytes allocated at any sample
    num_alloc_retries: int
    num_ooms: int
    oom_times: tuple[float, ...] = ()  # samples where the allocator's num_ooms had risen
    rank: int | None = None
    expandable_segments: bool | None = None


@dataclass(frozen=True)
class ProcessSummary:
    pid: int
    gpu_uuid: str
    gpu_index: int | None
    command: str | None
    user: str | None
    first_seen: float
    last_seen: float
    peak_used: int | None  # NVML per-process used memory, bytes
    peak_time: float | None
    agent: AgentSummary | None = None


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
class PostMortemSeen:
    """An OOM a training process's agent captured, with its summary (analysis/risk.py)."""

    time: float
    pid: int
    oom: OomReport
    lines: tuple[str, ...]


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
    events: tuple[Event, ...] = ()  # as recorded, including the recorder's own warning events
    warnings: tuple[WarningSeen, ...] = ()
    postmortems: tuple[PostMortemSeen, ...] = ()
    problems: tuple[str, ...] = ()

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


def selected(index: int, uuid: str, selectors: Sequence[str] | None) -> bool:
    """Whether ``--gpu`` (indices or UUID prefixes) selects this GPU; everything without it."""
    if not selectors:
        return True
    return any(s == str(index) or uuid.lower().startswith(s.lower()) for s in selectors)


def summarize(recording: Recording, gpus: Sequence[str] | None = None,
              thresholds: Thresholds | None = None) -> Report:
    """The report of a recording; ``gpus`` limits it to some GPUs (indices or UUID prefixes).
    Warnings are raised again from the samples with ``thresholds``, as a replay raises them."""
    header = recording.header
    samples = recording.samples
    fresh = _fresh(samples)
    first = samples[0] if samples else None
    started = header.started if header is not None else (first.time if first else None)
    times = [s.time for s in samples] + [e.time for e in recording.events]
    if recording.end is not None:
        times.append(recording.end.time)
    problems = [str(p) for p in recording.problems]
    stale = sum(1 for s in samples if s.stale)
    if stale:
        problems.append(f"{stale} of {len(samples)} samples are stale: NVML did not answer in time "
                        "and the last good figures were recorded again (left out of peaks and averages)")
    errors = [s.error for s in samples if s.error and not s.stale]
    if errors:
        problems.append(f"{len(errors)} samples carry an error, e.g. {errors[0]}")
    if recording.ignored:
        problems.append(f"{recording.ignored} record{'s' if recording.ignored != 1 else ''} of an unknown type "
                        "ignored (from a newer vramtop, or not vramtop's)")
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
        processes=tuple(_process_summaries(fresh, gpus)),
        events=recording.events,
        warnings=tuple(_warnings(fresh, recording.events, gpus, thresholds)),
        postmortems=tuple(_postmortems(fresh, recording.events, gpus, thresholds)),
        problems=tuple(problems),
    )


def _warnings(fresh: list[Sample], events: Sequence[Event], selectors: Sequence[str] | None,
              thresholds: Thresholds | None) -> list[WarningSeen]:
    levels: dict[tuple[str, str, int | None], str] = {}
    out = []
    for s, warnings in zip(fresh, warnings_over(fresh, events, thresholds), strict=True):
        now = {}
        for w in warnings:
            now[w.key] = w.level
            if levels.get(w.key) != w.level and selected(w.gpu_index if w.gpu_index is not None else -1,
                                                         w.gpu_uuid, selectors):
                out.append(WarningSeen(s.time, w.level, w.kind, w.pid, w.gpu_index, w.title, w.sentence, w.action))
        levels = now
    return out


def _postmortems(fresh: list[Sample], events: Sequence[Event], selectors: Sequence[str] | None,
                 thresholds: Thresholds | None) -> list[PostMortemSeen]:
    """Each OOM once, from the agent's figures at the failure: kept in the samples of a process
    that survived it, or only in an "oom" event when the OOM killed it. The process's memory
    outside PyTorch comes from the samples before it (the median of NVML's figure minus
    reserved), and so does what other processes held on its GPU (for the diagnosis)."""
    before: dict[tuple[int, int], AgentDevice] = {}
    agents: dict[int, AgentSample] = {}
    outside: dict[tuple[int, int], list[int]] = {}
    others: dict[tuple[int, int], int] = {}
    steps: dict[tuple[int, int], list[StepPeak]] = {}
    seen: set[tuple[int, float]] = set()
    out = []
    ooms = sorted(((e.time, e.pid, report) for e in events if e.kind == "oom" and isinstance(e.pid, int)
                   and (report := _oom_report(e.data)) is not None), key=lambda x: x[0])

    def add(pid: int, oom: OomReport, agent: AgentSample | None) -> None:
        if (pid, oom.time) in seen:
            return
        seen.add((pid, oom.time))
        device = before.get((pid, oom.device))
        uuid = device.uuid if device is not None and device.uuid else ""
        if selected(oom.device, uuid, selectors):
            known = outside.get((pid, oom.device))
            oom = with_history(oom, steps.get((pid, oom.device), []))
            summary = postmortem_of(oom, device, int(statistics.median(known)) if known else None,
                                    agent=agent, thresholds=thresholds, others=others.get((pid, oom.device)))
            out.append(PostMortemSeen(oom.time, pid, oom, summary.lines))

    i = 0
    for s in fresh:
        while i < len(ooms) and ooms[i][0] <= s.time:
            _, pid, oom = ooms[i]
            add(pid, oom, agents.get(pid))
            i += 1
        for agent in s.agents:
            agents[agent.pid] = agent
            if agent.last_oom is not None:
                add(agent.pid, agent.last_oom, agent)
            for device in agent.devices:
                before[(agent.pid, device.index)] = device
                kept = steps.setdefault((agent.pid, device.index), [])
                if device.last_step is not None and (not kept or kept[-1].step < device.last_step.step):
                    kept.append(device.last_step)
                if device.uuid is None:
                    continue
                match = next((m for m in join(s).matches if m.agent is agent and m.device is device), None)
                row = match.row if match is not None else None
                used = row.used_memory if row is not None else None
                gpu_used = _gpu_used(s, device.uuid)
                non_pytorch = non_pytorch_of(device.stats, used, gpu_used)
                if non_pytorch is not None:
                    outside.setdefault((agent.pid, device.index), []).append(non_pytorch)
                gpu = s.gpu(device.uuid)
                if gpu is not None and row is not None:  # the rows of one poll: comparable
                    others[(agent.pid, device.index)] = sum(p.used_memory or 0 for p in gpu.processes if p is not row)
    for _, pid, oom in ooms[i:]:  # after the last sample: the process died of it
        add(pid, oom, agents.get(pid))
    out.sort(key=lambda pm: pm.time)
    return out


def _oom_report(data: object) -> OomReport | None:
    try:
        return from_dict(OomReport, data)
    except (DecodeError, TypeError, ValueError):
        return None


def _fresh(samples: Iterable[Sample]) -> list[Sample]:
    """Samples with new data: stale repeats and samples at an already seen time left out."""
    out: list[Sample] = []
    last: float | None = None
    for s in samples:
        if s.stale or s.time == last:
            continue
        last = s.time
        out.append(s)
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


def find_agent(sample: Sample, proc: ProcessSample) -> tuple[AgentSample, AgentDevice] | None:
    """The agent of an NVML process row and its device on the row's GPU (analysis/join.py)."""
    match = join(sample).of_row(proc)
    return (match.agent, match.device) if match is not None else None


@dataclass
class _AgentTrack:
    agent: AgentSample
    device: AgentDevice
    first: float
    last: float
    samples: int = 0
    # (time, device, NVML per-process used, GPU memory.used) of the samples showing the highest peak
    peak_candidates: list[tuple[float, AgentDevice, int | None, int | None]] = field(default_factory=list)
    steps: dict[int, tuple[float, int]] = field(default_factory=dict)  # step -> (duration, steps)
    highest_step_peak: int | None = None
    step_at_peak: int | None = None
    num_ooms: int | None = None
    oom_times: list[float] = field(default_factory=list)
    highest_sampled: int = 0


@dataclass
class _ProcTrack:
    proc: ProcessSample
    gpu_index: int | None
    first: float
    last: float
    peak_used: int | None = None
    peak_time: float | None = None
    agent: _AgentTrack | None = None


def _process_summaries(fresh: list[Sample], selectors: Sequence[str] | None) -> list[ProcessSummary]:
    tracks: dict[Key, _ProcTrack] = {}
    for s in fresh:
        matched: set[tuple[int, int]] = set()  # (id(agent), device index) joined to a row
        for gpu in s.gpus:
            if not selected(gpu.index, gpu.uuid, selectors):
                continue
            for proc in gpu.processes:
                key = (proc.pid, proc.gpu_uuid)
                track = tracks.get(key)
                if track is None:
                    track = tracks[key] = _ProcTrack(proc, gpu.index, s.time, s.time)
                track.last = s.time
                if proc.command and not track.proc.command:
                    track.proc = proc
                if proc.used_memory is not None and (track.peak_used is None or proc.used_memory > track.peak_used):
                    track.peak_used, track.peak_time = proc.used_memory, s.time
                found = find_agent(s, proc)
                if found is not None:
                    agent, device = found
                    matched.add((id(agent), device.index))
                    _add_agent(track, agent, device, s.time, proc.used_memory, gpu.memory_used)
        # Agents NVML did not list (PID namespaces): keyed by their own PID.
        for agent in s.agents:
            for device in agent.devices:
                if (id(agent), device.index) in matched or device.uuid is None:
                    continue
                gpu_sample = s.gpu(device.uuid)
                index = gpu_sample.index if gpu_sample else None
                if index is not None and not selected(index, device.uuid, selectors):
                    continue
                if index is None and selectors:
                    continue
                match = next((m for m in join(s).matches if m.agent is agent and m.device is device), None)
                pid = match.pid if match is not None else agent.pid
                key = (pid, device.uuid)
                track = tracks.get(key)
                if track is None:
                    placeholder = ProcessSample(pid=pid, gpu_uuid=device.uuid, used_memory=None, kind="C")
                    track = tracks[key] = _ProcTrack(placeholder, index, s.time, s.time)
                track.last = s.time
                _add_agent(track, agent, device, s.time, None, None)
    out = [_process_summary(t) for t in tracks.values()]
    return sorted(out, key=lambda p: (p.gpu_index if p.gpu_index is not None else 1 << 30, -(p.peak_used or 0), p.pid))


def _add_agent(track: _ProcTrack, agent: AgentSample, device: AgentDevice, t: float,
               nvml_used: int | None, gpu_used: int | None) -> None:
    at = track.agent
    if at is None:
        at = track.agent = _AgentTrack(agent, device, t, t)
    at.agent, at.device, at.last = agent, device, t
    at.samples += 1
    stats = device.stats
    at.highest_sampled = max(at.highest_sampled, stats.allocated)
    if at.num_ooms is not None and stats.num_ooms > at.num_ooms:
        at.oom_times.append(t)
    at.num_ooms = stats.num_ooms
    best = at.peak_candidates[0][1].stats.allocated_peak if at.peak_candidates else -1
    if stats.allocated_peak > best:
        at.peak_candidates = [(t, device, nvml_used, gpu_used)]
        at.step_at_peak = device.peak_step if device.peak_step is not None else agent.step
    elif stats.allocated_peak == best:
        at.peak_candidates.append((t, device, nvml_used, gpu_used))
    last = device.last_step
    if last is not None:
        at.steps[last.step] = (last.duration, max(1, last.steps))
        if at.highest_step_peak is None or last.peak_allocated > at.highest_step_peak:
            at.highest_step_peak = last.peak_allocated


def _peak_bill(at: _AgentTrack) -> PeakBill | None:
    if not at.peak_candidates:
        return None
    # Among the samples showing the highest peak, the first with the agent's tensor census and an
    # NVML figure that covers what the allocator reserved (the process list lags memory).
    with_census = [c for c in at.peak_candidates if c[1].census is not None] or at.peak_candidates
    good = [c for c in with_census if non_pytorch_of(c[1].stats, c[2], c[3]) is not None]
    t, device, nvml_used, _ = good[0] if good else with_census[0]
    note = None
    if not good:
        if nvml_used is None:
            note = "NVML gave no per-process figure for this process: non-PyTorch memory unknown"
        else:
            note = ("NVML's per-process figure was older than the allocator's at the peak: "
                    "non-PyTorch memory unknown")
        nvml_used = None
    bill = bill_at_peak(device, nvml_used)
    if bill is None:
        return None
    return PeakBill(time=t, bill=bill, nvml_used=nvml_used, note=note)


def _agent_summary(at: _AgentTrack) -> AgentSummary:
    peak_time, peak_device, _, _ = at.peak_candidates[0]
    per_step = [duration / n for duration, n in at.steps.values() if duration > 0]
    stats = at.device.stats
    return AgentSummary(
        torch_version=at.agent.torch_version,
        device_index=at.device.index,
        samples=at.samples,
        first_seen=at.first,
        last_seen=at.last,
        peak_allocated=peak_device.stats.allocated_peak,
        peak_reserved=max(c[1].stats.reserved_peak for c in at.peak_candidates),
        peak_time=peak_time,
        peak_step=at.step_at_peak,
        at_peak=_peak_bill(at),
        steps=at.agent.step,
        step_time=statistics.median(per_step) if per_step else None,
        steps_measured=len(per_step),
        highest_step_peak=at.highest_step_peak,
        highest_sampled=at.highest_sampled,
        num_alloc_retries=stats.num_alloc_retries,
        num_ooms=stats.num_ooms,
        oom_times=tuple(at.oom_times),
        rank=at.agent.rank,
        expandable_segments=at.agent.expandable_segments,
    )


def _process_summary(t: _ProcTrack) -> ProcessSummary:
    return ProcessSummary(
        pid=t.proc.pid,
        gpu_uuid=t.proc.gpu_uuid,
        gpu_index=t.gpu_index,
        command=t.proc.command or t.proc.name,
        user=t.proc.user,
        first_seen=t.first,
        last_seen=t.last,
        peak_used=t.peak_used,
        peak_time=t.peak_time,
        agent=_agent_summary(t.agent) if t.agent is not None and t.agent.peak_candidates else None,
    )


# -- the picture's series -------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One band of a stacked area: bytes per point, None where there is no data."""

    name: str
    values: tuple[int | None, ...]


@dataclass(frozen=True)
class Mark:
    time: float
    kind: str  # "step", or an event kind ("command.started", "oom", "warning", ...)
    label: str


@dataclass(frozen=True)
class Panel:
    """One chart: a GPU, and the process whose bill is stacked (None: the GPU's processes)."""

    gpu_index: int
    gpu_uuid: str
    gpu_name: str
    memory_total: int | None
    pid: int | None
    command: str | None
    times: tuple[float, ...]  # sample times
    layers: tuple[Layer, ...]  # bottom to top
    gpu_used: tuple[int | None, ...]  # NVML memory.used of the GPU
    process_used: tuple[int | None, ...] = ()  # NVML per-process figure of ``pid``
    marks: tuple[Mark, ...] = ()
    zoomed: bool = False  # a close-up of part of the recording


def panels(recording: Recording, report: Report) -> list[Panel]:
    """Charts to draw: one per process with an agent, one per GPU that has none."""
    fresh = _fresh(recording.samples)
    times = tuple(s.time for s in fresh)
    out: list[Panel] = []
    for gpu in report.gpus:
        gpu_used = tuple(_gpu_used(s, gpu.uuid) for s in fresh)
        events = tuple(_event_marks(logged_events(report), gpu.uuid)) + tuple(_warning_marks(report, gpu.index))
        agents = [p for p in report.processes if p.gpu_uuid == gpu.uuid and p.agent is not None]
        for proc in agents:
            layers, process_used, steps = _bill_layers(fresh, proc)
            out.append(Panel(gpu.index, gpu.uuid, gpu.name, gpu.memory_total, proc.pid, proc.command,
                             times, layers, gpu_used, process_used, steps + events))
        if not agents:
            procs = [p for p in report.processes if p.gpu_uuid == gpu.uuid]
            layers = tuple(
                Layer(f"PID {p.pid} {p.command or ''}".strip(),
                      tuple(_process_used(s, p.pid, gpu.uuid) for s in fresh))
                for p in procs
            )
            out.append(Panel(gpu.index, gpu.uuid, gpu.name, gpu.memory_total, None, None,
                             times, layers, gpu_used, (), events))
    return out


def _gpu_used(sample: Sample, uuid: str) -> int | None:
    gpu = sample.gpu(uuid)
    return None if gpu is None or gpu.error else gpu.memory_used


def _process_row(sample: Sample, pid: int, uuid: str) -> ProcessSample | None:
    gpu = sample.gpu(uuid)
    if gpu is None:
        return None
    return next((p for p in gpu.processes if p.pid == pid), None)


def _process_used(sample: Sample, pid: int, uuid: str) -> int | None:
    row = _process_row(sample, pid, uuid)
    return None if row is None else row.used_memory


def agent_device(sample: Sample, pid: int, uuid: str) -> tuple[AgentSample, AgentDevice] | None:
    """The agent of the process NVML lists as ``pid`` (or, without a row, whose agent says so)
    and its figures for GPU ``uuid`` (analysis/join.py)."""
    match = join(sample).of_pid(pid, uuid)
    return (match.agent, match.device) if match is not None else None


def _bill_layers(fresh: list[Sample], proc: ProcessSummary) -> tuple[tuple[Layer, ...], tuple[int | None, ...],
                                                                      tuple[Mark, ...]]:
    columns: dict[str, list[int | None]] = {name: [] for name in STACK_ORDER}
    process_used: list[int | None] = []
    marks: list[Mark] = []
    last_step: int | None = None
    last_ooms: int | None = None
    non_pytorch: int | None = None  # the last consistent figure
    for s in fresh:
        nvml_used = _process_used(s, proc.pid, proc.gpu_uuid)
        process_used.append(nvml_used)
        found = agent_device(s, proc.pid, proc.gpu_uuid)
        if found is None:
            for values in columns.values():
                values.append(None)
            continue
        agent, device = found
        if last_step is not None and agent.step > last_step:
            marks.append(Mark(s.time, "step", f"step {agent.step}"))
        last_step = agent.step
        if last_ooms is not None and device.stats.num_ooms > last_ooms:
            marks.append(Mark(s.time, "oom", f"OOM (the allocator's num_ooms rose to {device.stats.num_ooms})"))
        last_ooms = device.stats.num_ooms
        bill = bill_now(device, nvml_used)
        row = dict(bill.categories())
        if bill.activations is None:  # no census yet: allocated, but not split up
            row[UNATTRIBUTED] = bill.allocated
        if non_pytorch_of(device.stats, nvml_used, _gpu_used(s, proc.gpu_uuid)) is not None:
            non_pytorch = bill.non_pytorch
        else:  # NVML's per-process figure lags the allocator: non-PyTorch memory barely changes
            row["non-PyTorch"] = non_pytorch
        for name in STACK_ORDER:
            value = row.get(name)
            columns[name].append(0 if value is None else max(0, value))
    layers = tuple(Layer(name, tuple(values)) for name, values in columns.items()
                   if any(v for v in values))
    return layers, tuple(process_used), tuple(marks)


def _event_marks(events: Sequence[Event], uuid: str) -> list[Mark]:
    out = []
    for e in events:
        gpu = e.data.get("gpu_uuid") or e.data.get("uuid")
        if isinstance(gpu, str) and gpu != uuid:
            continue  # an event about another GPU
        out.append(Mark(e.time, e.kind, event_label(e)))
    return out


def _warning_marks(report: Report, gpu_index: int) -> list[Mark]:
    """The warnings the report lists (raised from the samples with the report's thresholds),
    as marks: the picture and the text say the same, whatever the recorder raised live."""
    return [Mark(w.time, "warning", f"warning ({w.level}): {w.title}")
            for w in report.warnings if w.gpu_index in (None, gpu_index)]


def logged_events(report: Report) -> list[Event]:
    """The events a reader wants in the log: the recorder's warning events are left out, since
    the report lists the warnings in full (raised again from the samples)."""
    return [e for e in report.events if e.kind not in ("warning", "warning.cleared")]


def event_label(event: Event) -> str:
    """A short description of an event for people."""
    data = event.data
    if event.kind == "command.started":
        argv = data.get("argv")
        return "command started" + (f": {' '.join(map(str, argv))}" if isinstance(argv, list) else "")
    if event.kind == "command.exited":
        code = data.get("returncode")
        if isinstance(code, int) and code < 0:
            return f"command killed by signal {-code}"
        return f"command exited with {code}"
    if event.kind == "oom":
        parts = ["OOM"]
        for key in ("requested", "device_free", "free"):
            value = data.get(key)
            if isinstance(value, int) and 0 <= value < 1 << 63:  # anything else is damage: left out
                parts.append(f"{key.replace('_', ' ')} {value >> 20} MiB")
        return ", ".join(parts)
    message = data.get("message") or data.get("text") or data.get("title")
    if event.kind == "warning":
        level = data.get("level")
        return f"warning{f' ({level})' if level else ''}" + (f": {message}" if message else "")
    if event.kind == "warning.cleared":
        return "warning cleared" + (f": {message}" if message else "")
    return event.kind + (f": {message}" if message else "")
