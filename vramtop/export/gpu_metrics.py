"""The GPUs and their processes as NVML reports them (nvidia-smi's figures, in bytes)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import InfoMetricFamily, Metric

from vramtop import __version__
from vramtop.export.series import Series, command_label
from vramtop.model import Sample

GPU_LABELS = ("gpu", "uuid", "hostname")
PROCESS_LABELS = ("gpu", "uuid", "pid", "command", "user")

# (name, HELP, the GpuSample field it reads): each equals the nvidia-smi field named.
GPU_MEMORY = (
    ("vramtop_gpu_memory_used_bytes", "GPU memory in use (nvidia-smi memory.used), bytes.", "memory_used"),
    ("vramtop_gpu_memory_free_bytes", "GPU memory free (nvidia-smi memory.free), bytes.", "memory_free"),
    ("vramtop_gpu_memory_total_bytes", "GPU memory in all (nvidia-smi memory.total), bytes.", "memory_total"),
    ("vramtop_gpu_memory_reserved_bytes",
     "GPU memory reserved by the driver and firmware (nvidia-smi memory.reserved), bytes.", "memory_reserved"),
)


def gpu_families(sample: Sample, dropped: Counter[str]) -> Iterator[Metric]:
    """Memory of each GPU that could be read; a GPU that failed has no memory series (and
    ``vramtop_gpu_up`` 0), the others are unaffected."""
    host = sample.host.hostname
    up = Series("vramtop_gpu_up", "1 when the GPU could be read at the last sample, 0 when NVML failed on it.",
                GPU_LABELS, dropped)
    memory = [(Series(name, doc, GPU_LABELS, dropped), field) for name, doc, field in GPU_MEMORY]
    for gpu in sample.gpus:
        labels = (str(gpu.index), gpu.uuid, host)
        up.add(labels, 0 if gpu.error else 1)
        if gpu.error:
            continue
        for series, field in memory:
            series.add(labels, getattr(gpu, field))
    yield up.family
    for series, _ in memory:
        yield series.family


def process_families(sample: Sample, dropped: Counter[str]) -> Iterator[Metric]:
    """Each process's GPU memory (``--per-process``): the biggest users of each GPU first, so
    the per-GPU bound leaves out the smallest."""
    series = Series("vramtop_process_gpu_memory_bytes",
                    "GPU memory of one process (nvidia-smi --query-compute-apps used_memory), bytes.",
                    PROCESS_LABELS, dropped)
    for gpu in sample.gpus:
        if gpu.error:
            continue
        for proc in sorted(gpu.processes, key=lambda p: -(p.used_memory or 0)):
            series.add((str(gpu.index), gpu.uuid, str(proc.pid), command_label(proc.command or proc.name),
                        proc.user or ""), proc.used_memory)
    yield series.family


def build_info(sample: Sample | None) -> Metric:
    info = InfoMetricFamily("vramtop_build", "vramtop's version and the driver it reads (value 1).")
    info.add_metric([], {
        "version": __version__,
        "driver_version": (sample.driver_version or "") if sample else "",
        "cuda_driver_version": (sample.cuda_driver_version or "") if sample else "",
    })
    return info
