"""Per process over a recording: where NVML's figure peaked, and what its agent (if any)
reported: the allocator's peaks, steps, OOMs and the bill at the allocator's peak."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from vramtop.analysis.bill import Bill, bill_at_peak, non_pytorch_of
from vramtop.analysis.join import join
from vramtop.analysis.samples import selected
from vramtop.model import AgentDevice, AgentSample, ProcessSample, Sample

# A process is keyed by (PID as NVML reports it, GPU UUID).
Key = tuple[int, str]

# Why the bill at the peak has no non-PyTorch figure: NVML listed no figure for the process, or
# its figure was older than the allocator's (NVML's process list lags memory).
NO_PROCESS_FIGURE = "no process figure"
LAGGING_PROCESS_FIGURE = "lagging process figure"


@dataclass(frozen=True)
class PeakBill:
    """The bill at the allocator's peak, from the sample where allocated_peak was highest."""

    time: float  # of that sample
    bill: Bill
    nvml_used: int | None  # NVML's per-process figure in the same sample, when consistent
    # Why non-PyTorch memory (and the total) is missing, when it is: NO_PROCESS_FIGURE or
    # LAGGING_PROCESS_FIGURE.
    missing_non_pytorch: str | None = None


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


def process_summaries(fresh: list[Sample], selectors: Sequence[str] | None) -> list[ProcessSummary]:
    """Every process on the selected GPUs over the fresh samples, by GPU, then the most memory first."""
    tracks: dict[Key, _ProcTrack] = {}
    for s in fresh:
        matched = _track_rows(tracks, s, selectors)
        _track_unlisted_agents(tracks, s, selectors, matched)
    out = [_process_summary(t) for t in tracks.values()]
    return sorted(out, key=lambda p: (p.gpu_index if p.gpu_index is not None else 1 << 30, -(p.peak_used or 0), p.pid))


def _track_rows(tracks: dict[Key, _ProcTrack], s: Sample, selectors: Sequence[str] | None) -> set[tuple[int, int]]:
    """Add the NVML rows of one sample (and the agents joined to them); the (id(agent), device
    index) pairs that were joined to a row."""
    matched: set[tuple[int, int]] = set()
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
    return matched


def _track_unlisted_agents(tracks: dict[Key, _ProcTrack], s: Sample, selectors: Sequence[str] | None,
                           matched: set[tuple[int, int]]) -> None:
    """Add the agents NVML did not list (PID namespaces), keyed by the PID the join found or
    their own."""
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
    missing = None
    if not good:
        missing = NO_PROCESS_FIGURE if nvml_used is None else LAGGING_PROCESS_FIGURE
        nvml_used = None
    bill = bill_at_peak(device, nvml_used)
    if bill is None:
        return None
    return PeakBill(time=t, bill=bill, nvml_used=nvml_used, missing_non_pytorch=missing)


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
