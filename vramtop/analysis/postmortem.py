"""The OOM post-mortem: what an out-of-memory error asked for, what there was, where the memory
had gone, and the first thing to change."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from vramtop.analysis.advice import EXPANDABLE, Advice, Assumptions, ProcessFacts, advise, top_advice
from vramtop.analysis.bill import Bill, bill_at_peak, bill_now, fragmentation
from vramtop.analysis.diagnosis import CAPACITY, Diagnosis, diagnose
from vramtop.analysis.oom_place import place_lines
from vramtop.analysis.oom_place import where as where_of
from vramtop.analysis.subjects import mixed_precision
from vramtop.analysis.thresholds import Thresholds
from vramtop.model import AgentDevice, AgentSample, AllocatorStats, OomReport
from vramtop.units import fmt_bytes


@dataclass(frozen=True)
class PostMortem:
    """What an OOM asked for, what there was, where the memory had gone, and what to change."""

    step: int | None
    time: float | None
    device_index: int | None
    requested: int
    device_free: int
    device_total: int
    missing: int  # requested - free: what the device lacked
    need: int  # what the step peak must drop by to fit with the safety margin
    fragmented: bool | None  # the cache held enough in total, but in blocks too small
    bill: Bill | None  # at the last sample before the OOM
    advice: tuple[Advice, ...]
    top: Advice | None
    lines: tuple[str, ...]
    diagnosis: Diagnosis | None = None  # what kind of OOM it was (agent figures at the failure)
    first_thing: str | None = None  # the one line to act on: the diagnosis's action or the top lever


def postmortem_of(oom: OomReport, before: AgentDevice | None = None, non_pytorch: int | None = None, *,
                  agent: AgentSample | None = None, thresholds: Thresholds | None = None,
                  assumptions: Assumptions | None = None, others: int | None = None) -> PostMortem:
    """The summary of an OOM from the agent's figures at the instant of failure.

    ``before`` is the agent's last sample of that device, for its UUID and the memory that
    persisted at the last step boundary; ``agent`` its process-wide facts (allocator setting,
    precision, world size); ``non_pytorch`` the process's memory outside PyTorch
    (CUDA context, libraries), known from earlier samples: NVML polled during an OOM's fast
    growth is not comparable with the allocator's figures; ``others`` the bytes other processes
    held on the GPU (NVML), for the neighbour diagnosis.
    """
    stats = AllocatorStats(allocated=oom.allocated, reserved=oom.reserved, active=oom.allocated,
                           requested=oom.allocated, inactive_split=0, allocated_peak=oom.allocated,
                           reserved_peak=oom.reserved, num_alloc_retries=0, num_ooms=1,
                           largest_free_block=oom.largest_free_block)
    census = oom.census or (before.census if before is not None else None)
    if census is not None and before is not None and before.census is not None:
        # Gradients all exist at a step boundary: that size tells persistent memory from them.
        census = replace(census, gradients_peak=max(census.gradients_peak, before.census.gradients_peak))
    device = AgentDevice(index=oom.device, uuid=before.uuid if before is not None else None,
                         name=before.name if before is not None else None, stats=stats, census=census,
                         last_step=before.last_step if before is not None else None)
    expandable = agent.expandable_segments if agent else None
    diagnosis = diagnose(oom, others, expandable)
    event = {"device": oom.device, "requested": oom.requested, "device_total": diagnosis.limit,
             "device_free": diagnosis.available, "step": oom.step, "time": oom.time}
    used = None if non_pytorch is None else oom.reserved + non_pytorch
    return postmortem_summary(event, device, used, expandable_segments=expandable,
                              thresholds=thresholds, assumptions=assumptions, at_failure=True,
                              mixed_precision=mixed_precision(agent, census) if agent else None,
                              world_size=agent.world_size if agent else None,
                              checkpointing=agent.checkpointing if agent else None,
                              diagnosis=diagnosis, oom=oom)


def postmortem_summary(event: Mapping[str, Any], device: AgentDevice | None, nvml_process_used: int | None, *,
                       expandable_segments: bool | None = None, thresholds: Thresholds | None = None,
                       assumptions: Assumptions | None = None, at_failure: bool = False,
                       mixed_precision: bool | None = None, world_size: int | None = None,
                       checkpointing: bool | None = None, diagnosis: Diagnosis | None = None,
                       oom: OomReport | None = None) -> PostMortem:
    """A human summary of one OOM.

    ``event`` is what the agent's OOM observer records (device, requested, device_total,
    device_free, step, time); ``device`` the agent's last figures for that device before it;
    ``nvml_process_used`` NVML's per-process figure then. With ``at_failure``, ``device`` holds
    the figures at the instant of failure instead (see postmortem_of). Advice counts as
    sufficient what frees the missing bytes plus the safety margin.
    """
    t = thresholds or Thresholds()
    requested = int(event.get("requested", 0))
    free = int(event.get("device_free", 0))
    total = int(event.get("device_total", 0))
    step = event.get("step")
    index = event.get("device")
    missing = max(0, requested - free)
    need = missing + int(total * t.margin)
    lines = [_what_failed(step, index, device, requested, free, total, missing, diagnosis, oom)]
    if diagnosis is not None:
        lines.append(diagnosis.headline)
        lines.extend(f"Also: {also}" for also in diagnosis.also)
    bill: Bill | None = None
    fragmented: bool | None = None
    advice: tuple[Advice, ...] = ()
    if device is not None:
        fragmented = _fragmented(device.stats, requested)
        lines.extend(_allocator_lines(device.stats, fragmented, at_failure))
        bill = bill_now(device, nvml_process_used) if at_failure else (
            bill_at_peak(device, nvml_process_used) or bill_now(device, nvml_process_used))
        parts = [f"{name} {fmt_bytes(v)}" for name, v in bill.categories() if v]
        if parts:
            where = "at the failure" if at_failure else "at the allocator's peak"
            lines.append(f"Bill {where}: " + " · ".join(parts) + ".")
        stats = device.stats
        facts = ProcessFacts(expandable_segments=expandable_segments, fragmentation=fragmentation(stats),
                             optimizer=device.census.seen if device.census else None, world_size=world_size,
                             mixed_precision=mixed_precision, checkpointing=checkpointing)
        advice = advise(bill, device_total=total or None, margin=t.margin, facts=facts, need=need,
                        cache=stats.reserved - stats.allocated, assumptions=assumptions)
    if oom is not None:
        lines.extend(place_lines(oom))
    # A fragmented cache that held enough bytes is fixed by the allocator setting first.
    top = next((a for a in advice if a.lever == EXPANDABLE), None) if fragmented else None
    top = top or top_advice(advice)
    closing, first_thing = _first_thing(diagnosis, top, device, need, t.margin)
    lines.extend(closing)
    return PostMortem(step if isinstance(step, int) else None, event.get("time"), index if isinstance(index, int)
                      else None, requested, free, total, missing, need, fragmented, bill, advice, top, tuple(lines),
                      diagnosis, first_thing)


def _what_failed(step: object, index: object, device: AgentDevice | None, requested: int, free: int, total: int,
                 missing: int, diagnosis: Diagnosis | None, oom: OomReport | None) -> str:
    """The first line: which request failed where, and by how much."""
    where = f"cuda:{index}" + (f" ({device.uuid})" if device is not None and device.uuid else "")
    of = fmt_bytes(total)
    if diagnosis is not None and diagnosis.capped and oom is not None and oom.device_total:
        of = (f"the process's {fmt_bytes(total)} cap (set_per_process_memory_fraction) of a "
              f"{fmt_bytes(oom.device_total)} GPU")
    place = where_of(oom) if oom is not None else None
    phase = f" in {oom.phase}" if oom is not None and oom.phase != "unknown" else ""
    if place:  # "in model.layers.1.mlp (MLP, forward) at train.py:42 in step()", or "at train.py:42 ..."
        phase = f" {place}," if place.startswith("at ") else f" in {place},"
    return (f"OOM{f' at step {step}' if step is not None else ''}{phase} on {where}: asked for "
            f"{fmt_bytes(requested)} with {fmt_bytes(free)} free of {of}, {fmt_bytes(missing)} short.")


def _fragmented(stats: AllocatorStats, requested: int) -> bool | None:
    """Whether the cache held enough bytes but no block big enough; None without the largest block."""
    if stats.largest_free_block is None:
        return None
    return stats.reserved - stats.allocated >= requested > stats.largest_free_block


def _allocator_lines(stats: AllocatorStats, fragmented: bool | None, at_failure: bool) -> list[str]:
    if stats.largest_free_block is None:
        return []
    cache = stats.reserved - stats.allocated
    return [f"The allocator held {fmt_bytes(cache)} of cache "
            f"{'then' if at_failure else 'at the last sample'}, its largest free "
            f"block {fmt_bytes(stats.largest_free_block)}"
            + (": enough in total but in pieces too small (fragmentation)." if fragmented else ".")]


def _first_thing(diagnosis: Diagnosis | None, top: Advice | None, device: AgentDevice | None, need: int,
                 margin: float) -> tuple[list[str], str | None]:
    """The closing lines (what the margin needs, when it is a matter of capacity) and what to do
    first, which is also the last of them."""
    lines: list[str] = []
    first_thing = None
    if diagnosis is not None and diagnosis.kind != CAPACITY and diagnosis.action:
        # Not a matter of capacity: the levers would treat the symptom.
        first_thing = f"First thing to do ({diagnosis.kind}): {diagnosis.action}"
    else:
        lines.append(f"To fit with the {margin:.0%} safety margin the step peak must drop by {fmt_bytes(need)}.")
        if top is not None:
            first_thing = f"First thing to try ({top.lever}): {top.text}"
        elif device is None:
            lines.append("No allocator figures for this process: start it with `vramtop run` to see the bill.")
    if first_thing:
        lines.append(first_thing)
    return lines, first_thing
