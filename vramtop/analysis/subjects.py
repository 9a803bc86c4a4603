"""The facts the risk rules and the advice read: each process with the agent on the memory it
competes for, with its projected step peak (what the join of analysis/join.py puts together,
turned into bytes against a limit)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from vramtop.analysis.join import join
from vramtop.analysis.thresholds import Thresholds
from vramtop.model import AgentDevice, AgentSample, ProcessSample, Sample, TensorCensus

if TYPE_CHECKING:
    # The advice and the bill's arithmetic are needed once an agent is seen: imported then.
    from vramtop.analysis.advice import Advice, Assumptions, ProcessFacts
    from vramtop.analysis.bill import Bill


@dataclass(frozen=True)
class Place:
    """The memory a process competes for: a GPU, or the MIG device it runs on."""

    uuid: str
    index: int | None
    total: int | None
    used: int | None
    driver_reserved: int
    processes: tuple[ProcessSample, ...]


def places(sample: Sample) -> dict[str, Place]:
    """Every GPU and MIG device of the sample that could be read, by UUID."""
    out: dict[str, Place] = {}
    for gpu in sample.gpus:
        if gpu.error:
            continue
        out[gpu.uuid] = Place(gpu.uuid, gpu.index, gpu.memory_total, gpu.memory_used, gpu.memory_reserved or 0,
                              gpu.processes)
        for mig in gpu.mig_devices:
            procs = tuple(p for p in gpu.processes if p.gpu_instance_id == mig.gpu_instance_id)
            out[mig.uuid] = Place(mig.uuid, gpu.index, mig.memory_total, mig.memory_used, 0, procs)
    return out


@dataclass(frozen=True)
class Subject:
    """One process with the agent on one device, and its projected step peak."""

    pid: int  # as NVML reports it when matched, else the agent's own
    agent: AgentSample
    device: AgentDevice
    place: Place
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

    def lines(self, t: Thresholds) -> tuple[int, int, int, int] | None:
        """Raise and clear lines (bytes) for warning and critical, against the subject's limit."""
        total = self.limit
        if not total:
            return None
        warn, crit = total * (1 - t.margin), total * (1 - t.critical_margin)
        band = total * t.clear_band
        return int(warn), int(crit), int(warn - band), int(crit - band)

    def past_margin(self, t: Thresholds) -> bool:
        lines = self.lines(t)
        return lines is not None and self.load > lines[0]


def subjects(sample: Sample, where: Mapping[str, Place],
             non_pytorch: Mapping[tuple[int, str], int]) -> list[Subject]:
    """Each agent device on the place the join (analysis/join.py) puts it, with its NVML row;
    ``non_pytorch`` holds the last consistent non-PyTorch figure of each (PID, UUID)."""
    out = []
    for m in join(sample).matches:
        place = where.get(m.gpu_uuid) if m.gpu_uuid is not None else None
        if place is None:
            continue
        subject = project(m.agent, m.device, place, m.row, m.pid, non_pytorch.get((m.pid, place.uuid)))
        out.append(replace(subject, foreign=m.foreign) if m.foreign else subject)
    return out


def project(agent: AgentSample, device: AgentDevice, place: Place, row: ProcessSample | None,
            pid: int, known_non_pytorch: int | None) -> Subject:
    """One process's projected step peak on ``place``, against the device's total or its cap."""
    from vramtop.analysis.bill import bill_at_peak, non_pytorch_of

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
    return Subject(pid, agent, device, place, row, non_pt, others, own_peak, projected, bill, limit, load, capped)


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


def facts_of(agent: AgentSample, device: AgentDevice) -> ProcessFacts:
    """What the agent says about the levers already in use by its process on ``device``."""
    from vramtop.analysis.advice import ProcessFacts
    from vramtop.analysis.bill import fragmentation

    census = device.census
    last = device.last_step
    return ProcessFacts(
        expandable_segments=agent.expandable_segments,
        fragmentation=fragmentation(device.stats),
        optimizer=census.seen if census else None,
        world_size=agent.world_size,
        step_seconds=last.duration / max(1, last.steps) if last and last.duration > 0 else None,
        mixed_precision=mixed_precision(agent, census),
        checkpointing=agent.checkpointing,
    )


def subject_advice(s: Subject, margin: float, assumptions: Assumptions | None = None,
                   need: int | None = None) -> tuple[Advice, ...]:
    """The ranked advice for a subject (empty before its bill exists)."""
    if s.bill is None:
        return ()
    from vramtop.analysis.advice import advise

    return advise(s.bill, device_total=s.limit, others=s.load - s.own_peak, margin=margin,
                  facts=facts_of(s.agent, s.device), need=need, assumptions=assumptions)


def _subject_of(sample: Sample, agent: AgentSample, device: AgentDevice) -> Subject | None:
    """One process's subject on one of its devices, from this sample alone (no history)."""
    single = replace(sample, agents=(replace(agent, devices=(device,)),))
    found = subjects(single, places(sample), {})
    return found[0] if found else None


def advice_for(sample: Sample, agent: AgentSample, device: AgentDevice, thresholds: Thresholds | None = None,
               assumptions: Assumptions | None = None) -> tuple[Advice, ...]:
    """The ranked advice for one process with the agent on one of its devices (empty when the
    device is not in the sample or nothing is counted yet)."""
    t = thresholds or Thresholds()
    s = _subject_of(sample, agent, device)
    return subject_advice(s, t.margin, assumptions) if s is not None else ()


def batch_fit_for(sample: Sample, agent: AgentSample, device: AgentDevice, margin: float) -> float | None:
    """The largest micro-batch that fits under ``margin``, as a multiple of the current one
    (the figure behind the batch-size advice); None before the bill has activations."""
    s = _subject_of(sample, agent, device)
    if s is None or s.bill is None or not s.limit:
        return None
    from vramtop.analysis.advice import batch_fit

    return batch_fit(s.bill, s.limit, s.load - s.own_peak, margin)
