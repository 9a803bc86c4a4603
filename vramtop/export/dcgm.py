"""``--dcgm-compat``: the GPU figures under dcgm-exporter's names, units and labels, so dashboards
built for it (NVIDIA's Grafana dashboard 12239) read vramtop unchanged.

dcgm-exporter's default counters (etc/default-counters.csv) and the labels it puts on every
device series: gpu, UUID, pci_bus_id, device, modelName, Hostname, DCGM_FI_DRIVER_VERSION.
Memory is in whole MiB (as nvidia-smi shows it), power in W, temperature in C, utilisation in %.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client.core import Metric

from vramtop.export.series import Series
from vramtop.model import GpuSample, Sample
from vramtop.units import mib

DCGM_LABELS = ("gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION")


def _in_mib(value: int | None) -> int | None:
    return None if value is None else mib(value)


def _watts(milliwatts: int | None) -> float | None:
    return None if milliwatts is None else milliwatts / 1000


# (name, dcgm-exporter's HELP text, the figure in dcgm-exporter's unit)
DCGM_FIELDS: tuple[tuple[str, str, Callable[[GpuSample], float | None]], ...] = (
    ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", lambda g: _in_mib(g.memory_free)),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", lambda g: _in_mib(g.memory_used)),
    ("DCGM_FI_DEV_FB_RESERVED", "Framebuffer memory reserved (in MiB).", lambda g: _in_mib(g.memory_reserved)),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", lambda g: g.temperature),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", lambda g: _watts(g.power_usage)),
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", lambda g: g.utilization_gpu),
)


def dcgm_families(sample: Sample, dropped: Counter[str]) -> Iterator[Metric]:
    series = [(Series(name, doc, DCGM_LABELS, dropped), figure) for name, doc, figure in DCGM_FIELDS]
    for gpu in sample.gpus:
        if gpu.error:
            continue
        # ``device`` is the /dev/nvidiaN node; NVML's index is the usual minor number.
        labels = (str(gpu.index), gpu.uuid, gpu.pci_bus_id or "", f"nvidia{gpu.index}", gpu.name,
                  sample.host.hostname, sample.driver_version or "")
        for s, figure in series:
            s.add(labels, figure(gpu))
    for s, _ in series:
        yield s.family
