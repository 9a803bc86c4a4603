"""Which samples and figures a report counts: fresh samples (no stale repeats), the GPUs
``--gpu`` selects, a GPU's and a process's NVML figures in one sample."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from vramtop.model import ProcessSample, Sample


def selects(selector: str, index: int | None, uuid: str) -> bool:
    """Whether one ``--gpu`` value (an index, or a UUID prefix in any case) names this GPU: the
    one rule for the monitor's NVML source and for reports."""
    return selector == str(index) or uuid.lower().startswith(selector.lower())


def selected(index: int, uuid: str, selectors: Sequence[str] | None) -> bool:
    """Whether ``--gpu`` (indices or UUID prefixes) selects this GPU; everything without it."""
    return not selectors or any(selects(s, index, uuid) for s in selectors)


def fresh_samples(samples: Iterable[Sample]) -> list[Sample]:
    """Samples with new data: stale repeats and samples at an already seen time left out."""
    out: list[Sample] = []
    last: float | None = None
    for s in samples:
        if s.stale or s.time == last:
            continue
        last = s.time
        out.append(s)
    return out


def gpu_used(sample: Sample, uuid: str) -> int | None:
    """NVML's memory.used of GPU ``uuid`` in ``sample``; None when missing or in error."""
    gpu = sample.gpu(uuid)
    return None if gpu is None or gpu.error else gpu.memory_used


def process_row(sample: Sample, pid: int, uuid: str) -> ProcessSample | None:
    gpu = sample.gpu(uuid)
    if gpu is None:
        return None
    return next((p for p in gpu.processes if p.pid == pid), None)


def process_used(sample: Sample, pid: int, uuid: str) -> int | None:
    """NVML's per-process used memory of ``pid`` on GPU ``uuid`` in ``sample``."""
    row = process_row(sample, pid, uuid)
    return None if row is None else row.used_memory
