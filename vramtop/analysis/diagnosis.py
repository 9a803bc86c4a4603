"""What kind of out-of-memory error it was, before any lever is offered.

The same bytes short can have five causes, and each has its own fix; ranking levers (a smaller
batch, checkpointing, offload) is right only for the last:

- **leak**: memory still allocated after each step grew, step after step, until it ran out;
- **fragmentation**: the allocator's cache held enough free bytes, but in pieces too small;
- **neighbour**: other processes held what was missing;
- **spike**: one request far above the step's usual peak (an evaluation, a long sequence, a
  bigger batch): the training step itself fits;
- **capacity**: the step needs more than the device (or the process's cap) has.

Pure: everything comes from the agent's figures at the failure (:class:`OomReport`) and, when
the caller has NVML, the memory other processes held. The post-mortem, the TUI and the report
all use :func:`diagnose`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from vramtop.model import OomReport, Sample, StepPeak
from vramtop.units import GiB, MiB, fmt_bytes

LEAK, FRAGMENTATION, NEIGHBOUR, SPIKE, CAPACITY = "leak", "fragmentation", "neighbour", "spike", "capacity"

LEAK_MIN_GROWTH = 256 * MiB  # and LEAK_MIN_SHARE of the limit: less is allocator noise
LEAK_MIN_SHARE = 0.05
LEAK_MIN_STEPS = 3
SPIKE_RATIO = 1.2  # a request that would take allocated this far past the usual step peak
NEIGHBOUR_MIN = 1 * GiB


@dataclass(frozen=True)
class Diagnosis:
    kind: str  # leak | fragmentation | neighbour | spike | capacity
    headline: str  # one sentence with the numbers
    action: str | None  # what to do; None for capacity, where the ranked levers say it
    limit: int  # the memory the process could have: the device's, or its cap
    capped: bool  # the limit is the process's cap (set_per_process_memory_fraction)
    available: int  # what a new allocation could still get: free on the device, within the cap
    short: int  # requested - available
    also: tuple[str, ...] = ()  # headlines of other causes that held too, weaker than this one


def limit_of(oom: OomReport) -> tuple[int, bool]:
    """(the memory the process could use, whether that is its cap rather than the device)."""
    total = oom.device_total
    capped = total is not None and 0 < oom.device_limit < total
    return oom.device_limit, capped


def diagnose(oom: OomReport, others: int | None = None, expandable_segments: bool | None = None) -> Diagnosis:
    """The kind of OOM ``oom`` was; ``others``: bytes other processes held on the device (NVML),
    None when unknown. The first cause that holds, in the order of the module's docstring, is
    the diagnosis; the others that hold are listed after it."""
    limit, capped = limit_of(oom)
    available = oom.device_free
    if capped:
        available = min(available, max(0, limit - oom.reserved))
    short = max(0, oom.requested - available)
    found = _causes(oom, others, expandable_segments, limit, capped, short)
    if not found:
        where = "its cap" if capped else "the GPU"
        found = [(CAPACITY, (f"Capacity: the step needs more than the {fmt_bytes(limit)} {where} holds "
                             f"({fmt_bytes(short)} short); what frees the most at the peak comes below."), None)]
    kind, headline, action = found[0]
    return Diagnosis(kind, headline, action, limit, capped, available, short, tuple(h for _, h, _ in found[1:]))


def _causes(oom: OomReport, others: int | None, expandable_segments: bool | None, limit: int, capped: bool,
            short: int) -> list[tuple[str, str, str | None]]:
    where = "its cap" if capped else "the GPU"
    out: list[tuple[str, str, str | None]] = []
    growth = _leak_growth(oom, limit)
    leak = None
    if growth is not None:
        first, last = oom.persistent_first_step or 0, oom.persistent_last_step or 0
        per_step = growth / max(1, last - first)
        leak = (LEAK, (
            f"A leak: memory still allocated after each step grew by {fmt_bytes(growth)} from step {first} "
            f"({fmt_bytes(oom.persistent_first or 0)}) to step {last} ({fmt_bytes(oom.persistent_last or 0)}), "
            f"~{fmt_bytes(int(per_step))}/step" + (f", until {where} ran out." if growth >= short else
                                                   f", less than the {fmt_bytes(short)} missing.")),
            "Find what keeps tensors across steps: losses or outputs appended to a list without .item() or "
            ".detach(), a growing cache, hooks that store activations. A smaller batch or model only "
            "postpones this OOM.")
        if growth >= short:  # without the growth it would have fit: the cause
            out.append(leak)
    cache = oom.reserved - oom.allocated
    block = oom.largest_free_block
    if block is not None and cache >= oom.requested > block and expandable_segments is not True:
        out.append((FRAGMENTATION, (
            f"Fragmentation: the allocator held {fmt_bytes(cache)} unused, enough for the "
            f"{fmt_bytes(oom.requested)} request, but its largest free block was {fmt_bytes(block)}."),
            "Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True before the program starts, so freed "
            "memory can be mapped where a large tensor needs it."))
    cap_binds = capped and limit - oom.reserved <= oom.device_free
    if others is not None and not cap_binds and others >= max(NEIGHBOUR_MIN, short):
        out.append((NEIGHBOUR, (
            f"A neighbour: other processes held {fmt_bytes(others)} on this GPU; without them the "
            f"{fmt_bytes(oom.requested)} request would have fit ({fmt_bytes(short)} short)."),
            "Stop the other processes on this GPU or move them elsewhere (CUDA_VISIBLE_DEVICES), or give "
            "this job a GPU of its own."))
    needed = oom.allocated + oom.requested
    if oom.step_peak and oom.step >= 1 and needed > SPIKE_RATIO * oom.step_peak:
        out.append((SPIKE, (
            f"A spike: this request would have taken allocated memory to {fmt_bytes(needed)}, "
            f"{needed / oom.step_peak:.1f}x the peak of the training steps before it ({fmt_bytes(oom.step_peak)}), "
            f"in {oom.phase}: an evaluation, a longer sequence or a bigger batch than those steps."),
            "Run evaluation under torch.no_grad() with a smaller batch, cap the sequence length, or keep enough "
            "of the margin free for it: the training step itself fits."))
    if leak is not None and leak not in out:  # it grew, but less than was missing: said after
        out.append(leak)
    return out


def _leak_growth(oom: OomReport, limit: int) -> int | None:
    first, last = oom.persistent_first, oom.persistent_last
    if first is None or last is None or oom.persistent_first_step is None or oom.persistent_last_step is None:
        return None
    if oom.persistent_last_step - oom.persistent_first_step < LEAK_MIN_STEPS:
        return None
    growth = last - first
    return growth if growth >= max(LEAK_MIN_GROWTH, int(LEAK_MIN_SHARE * limit)) else None


def with_history(oom: OomReport, steps: Sequence[StepPeak], from_step: int = 2) -> OomReport:
    """``oom`` with the step figures an older agent did not put in it, from the step peaks a
    recording kept of the same process and device (oldest first): the peak of the last step,
    and the lowest persistent memory overall and over the last few steps."""
    kept = [s for s in steps if s.step >= from_step and s.step <= oom.step]
    if not kept:
        return oom
    changes: dict[str, Any] = {}
    if oom.step_peak is None:
        changes["step_peak"] = kept[-1].peak_allocated
    if oom.persistent_first is None:
        first = min(kept, key=lambda s: s.persistent)
        recent = kept[-8:]
        changes.update(persistent_first=first.persistent, persistent_first_step=first.step,
                       persistent_last=min(s.persistent for s in recent), persistent_last_step=recent[-1].step)
    return replace(oom, **changes)


def with_histories(samples: Sequence[Sample]) -> list[Sample]:
    """The samples of a recording with each OOM report an older agent made given its step figures
    (with_history) from the samples before it: a replay then diagnoses it as the report does."""
    steps: dict[tuple[int, int], list[StepPeak]] = {}
    out = []
    for sample in samples:
        agents = []
        for agent in sample.agents:
            for device in agent.devices:
                kept = steps.setdefault((agent.pid, device.index), [])
                if device.last_step is not None and (not kept or kept[-1].step < device.last_step.step):
                    kept.append(device.last_step)
            oom = agent.last_oom
            if oom is not None and (oom.step_peak is None or oom.persistent_first is None):
                agent = replace(agent, last_oom=with_history(oom, steps.get((agent.pid, oom.device), [])))
            agents.append(agent)
        out.append(replace(sample, agents=tuple(agents)) if sample.agents else sample)
    return out
