"""Each process with the agent: its allocator, its bill, its headroom and step; and the
warnings in force. Every figure comes from the one join of the sample (analysis/join.py) and
the risk tracker's view of it (analysis/risk.py), never matched here on its own."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

from prometheus_client.core import Metric

from vramtop.analysis.bill import Bill, bill_now, fragmentation
from vramtop.analysis.jobs import rank_of, world_size
from vramtop.analysis.join import Match, join
from vramtop.analysis.risk import RiskTracker, RiskWarning
from vramtop.analysis.subjects import Place, Subject, places
from vramtop.export.series import MAX_WARNINGS, Series
from vramtop.model import AgentSample, Sample

TORCH_LABELS = ("gpu", "pid", "rank")

# The bill's categories (analysis/bill.py) as label values, in the bill's order.
CATEGORIES = {
    "parameters (trainable)": "parameters_trainable",
    "parameters (frozen)": "parameters_frozen",
    "gradients": "gradients",
    "optimizer state": "optimizer_state",
    "other persistent": "other_persistent",
    "activations & temporaries": "activations",
    "allocator cache": "allocator_cache",
    "non-PyTorch": "non_pytorch",
}


class _TorchSeries:
    """The families of the allocator, the bill and the headroom, filled one agent device at a time."""

    def __init__(self, dropped: Counter[str]) -> None:
        def gauge(name: str, doc: str, labels: Sequence[str] = TORCH_LABELS) -> Series:
            return Series(name, doc, labels, dropped)

        def counter(name: str, doc: str) -> Series:
            return Series(name, doc, TORCH_LABELS, dropped, counter=True)

        self.allocated = gauge("vramtop_torch_memory_allocated_bytes",
                               "Bytes in live tensors (torch allocated_bytes.all.current).")
        self.reserved = gauge("vramtop_torch_memory_reserved_bytes",
                              "Bytes held by PyTorch's caching allocator (torch reserved_bytes.all.current).")
        self.requested = gauge("vramtop_torch_memory_requested_bytes",
                               "Bytes callers asked for, before rounding (torch requested_bytes.all.current).")
        self.fragmentation = gauge("vramtop_torch_fragmentation_ratio",
                                   "1 - largest free block / allocator cache, at the last allocator snapshot: "
                                   "0 = the cache is one usable block, near 1 = shattered.")
        self.largest_free = gauge("vramtop_torch_largest_free_block_bytes",
                                  "The biggest free block inside the allocator's reserved segments, bytes.")
        self.retries = counter("vramtop_torch_alloc_retries",
                               "Allocations that failed, flushed the cache and retried (torch num_alloc_retries).")
        self.ooms = counter("vramtop_torch_ooms", "Out-of-memory errors raised by the allocator (torch num_ooms).")
        self.bill = Series("vramtop_bill_bytes", "Where the process's GPU memory went, by category; the "
                           "categories sum to the process's NVML figure (docs/exporter.md).",
                           (*TORCH_LABELS, "category"), dropped, subject_labels=len(TORCH_LABELS))
        self.step_peak = gauge("vramtop_step_peak_bytes",
                               "The process's own peak: what the allocator reserved at its peak + its "
                               "non-PyTorch memory, bytes (the rank view's peak).")
        self.headroom = gauge("vramtop_headroom_bytes",
                              "Bytes left between the projected step peak and the GPU's total (or the "
                              "process's cap); negative: past it.")

    def add(self, m: Match, place: Place | None, subject: Subject | None) -> None:
        labels = (str(place.index) if place is not None and place.index is not None else "", str(m.pid),
                  _rank(m.agent))
        stats = m.device.stats
        self.allocated.add(labels, stats.allocated)
        self.reserved.add(labels, stats.reserved)
        self.requested.add(labels, stats.requested)
        self.fragmentation.add(labels, fragmentation(stats))
        self.largest_free.add(labels, stats.largest_free_block)
        self.retries.add(labels, stats.num_alloc_retries)
        self.ooms.add(labels, stats.num_ooms)
        bill = _bill(m, subject)
        if bill is not None:
            for name, value in bill.categories():
                self.bill.add((*labels, CATEGORIES[name]), value)
        if subject is not None:
            self.step_peak.add(labels, subject.own_peak)
        if subject is not None and subject.limit:
            self.headroom.add(labels, subject.limit - subject.load)

    def families(self) -> Iterator[Metric]:
        for series in (self.allocated, self.reserved, self.requested, self.fragmentation, self.largest_free,
                       self.retries, self.ooms, self.bill, self.step_peak, self.headroom):
            yield series.family


def _rank(agent: AgentSample) -> str:
    return "" if agent.rank is None else str(agent.rank)


def _bill(m: Match, subject: Subject | None) -> Bill | None:
    """The bill now (as the monitor's detail shows it), reconciled to the process's NVML figure:
    allocator reserved + the last consistent non-PyTorch figure, which is NVML's used_memory
    whenever NVML's (less often polled) process list agrees with the allocator. None before the
    agent's first census: without it the categories could not add up."""
    non_pytorch = subject.non_pytorch if subject is not None else None
    used = None if non_pytorch is None else m.device.stats.reserved + non_pytorch
    bill = bill_now(m.device, used)
    return None if bill.parameters_trainable is None else bill


def torch_families(sample: Sample, tracker: RiskTracker, dropped: Counter[str]) -> Iterator[Metric]:
    """The allocator, bill and headroom of every agent device of ``sample``, and each agent's step.
    ``tracker`` has already taken ``sample``."""
    where = places(sample)
    series = _TorchSeries(dropped)
    step = Series("vramtop_step", "Optimizer steps the agent has seen the process complete.", ("pid", "rank"),
                  dropped)
    host_pid: dict[int, int] = {}  # id(agent) -> the PID NVML lists it under, where the join found it
    for m in join(sample).matches:
        place = where.get(m.gpu_uuid) if m.gpu_uuid is not None else None
        subject = tracker.subject(m.pid, place.uuid) if place is not None else None
        series.add(m, place, subject)
        if m.row is not None:
            host_pid.setdefault(id(m.agent), m.pid)
    job = Series("vramtop_job_info", "The distributed job a rank belongs to (value 1): its launcher's world size, "
                 "run id and rendezvous; ranks of one job on every host share run_id and master.",
                 ("pid", "rank", "world_size", "run_id", "master"), dropped)
    for agent in sample.agents:
        pid = str(host_pid.get(id(agent), agent.pid))
        step.add((pid, _rank(agent)), agent.step)
        job.add((pid, *_job_labels(agent)), 1 if rank_of(agent) is not None else None)
    yield from series.families()
    yield step.family
    yield job.family


def _job_labels(agent: AgentSample) -> tuple[str, str, str, str]:
    """rank, world_size, run_id, master: what analysis/jobs.py groups ranks by."""
    launch = agent.launch
    rank, world = rank_of(agent), world_size(agent)
    return ("" if rank is None else str(rank), "" if world is None else str(world),
            (launch.run_id or "") if launch else "", (launch.master or "") if launch else "")


def warning_family(warnings: Sequence[RiskWarning], dropped: Counter[str]) -> Metric:
    """1 for each warning in force (analysis/risk.py): its kind, level, GPU and process."""
    series = Series("vramtop_warning", "A risk warning in force (value 1); kinds and levels: docs/risk.md.",
                    ("kind", "level", "gpu", "pid"), dropped, per_gpu=MAX_WARNINGS)
    for w in warnings:
        series.add((w.kind, w.level, "" if w.gpu_index is None else str(w.gpu_index),
                    "" if w.pid is None else str(w.pid)), 1)
    return series.family
