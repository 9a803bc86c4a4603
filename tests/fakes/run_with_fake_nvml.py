"""Run the vramtop CLI with FakeNvml installed as ``pynvml``: for driving the real TUI in tmux
on machines without a GPU. Usage: python -m tests.fakes.run_with_fake_nvml [vramtop args...]"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from tests.fakes.fake_nvml import FakeGpu, FakeNvml, FakeProc, MiB, two_gpu_box


def big_box(agent_pids: list[int], per_gpu: int = 8) -> FakeNvml:
    """FAKE_NVML_SCALE=p1,...: one GPU per PID, each with that process (an agent's, 62 GiB) and
    ``per_gpu - 1`` others (a distributed job's box with its neighbours), for bench/monitor_scale.py."""
    gpus = []
    for i, pid in enumerate(agent_pids):
        others = [FakeProc(100000 + i * 100 + j, (j + 1) * 256 * MiB) for j in range(per_gpu - 1)]
        procs = [FakeProc(pid, 62 * 1024 * MiB), *others]
        gpus.append(FakeGpu(uuid=f"GPU-{i:08x}-0000-0000-0000-000000000000", util=(90, 50), compute=procs,
                            used=sum(p.used or 0 for p in procs) + 200 * MiB))
    return FakeNvml(gpus)


# A real driver's latencies (bench/RESULTS.md, "NVML call costs", an H100): seconds per call.
DRIVER_LATENCY = {"nvmlInit": 0.012, "nvmlDeviceGetPcieThroughput": 0.021, "nvmlDeviceGetMigMode": 0.00017}
OTHER_CALL_LATENCY = 0.00002


def with_driver_latency(fake: FakeNvml) -> None:
    """FAKE_NVML_LATENCY=1: each call of ``fake`` first sleeps as long as the driver's takes (the
    GIL released, as ctypes releases it): the first sample's cost on a box of many GPUs."""
    for name in dir(fake):
        if name.startswith("nvml") and callable(getattr(fake, name)):
            setattr(fake, name, _slowed(getattr(fake, name), DRIVER_LATENCY.get(name, OTHER_CALL_LATENCY)))


def _slowed(call: Callable[..., Any], delay: float) -> Callable[..., Any]:
    def slowed(*args: Any, **kwargs: Any) -> Any:
        time.sleep(delay)
        return call(*args, **kwargs)

    return slowed


def main() -> int:
    scale = [int(p) for p in os.environ.get("FAKE_NVML_SCALE", "").split(",") if p]
    # FAKE_NVML_PER_GPU=1: each big-box GPU has its agent's process only (a job's box to itself).
    fake = big_box(scale, int(os.environ.get("FAKE_NVML_PER_GPU", "8"))) if scale else two_gpu_box()
    # FAKE_NVML_PIDS=1,2: the busy GPU's compute processes (a soak's real training process).
    pids = [int(p) for p in os.environ.get("FAKE_NVML_PIDS", "").split(",") if p]
    if pids:
        fake.gpus[0].compute = [FakeProc(pid, 39800 * MiB // len(pids)) for pid in pids]
    # FAKE_NVML_HOST=abcd: other GPUs (their UUIDs start GPU-abcd), as on another host, for a
    # monitor and an exporter on one machine that must not take each other's GPUs for their own.
    other_host = os.environ.get("FAKE_NVML_HOST", "")
    for gpu in fake.gpus if other_host else ():
        gpu.uuid = f"GPU-{other_host}{gpu.uuid[4 + len(other_host):]}"
    # A memory figure that changes from read to read, so the sparkline and refresh are visible.
    real = type(fake).nvmlDeviceGetMemoryInfo
    reads = {"n": 0}

    def growing(self, handle, version=None):  # type: ignore[no-untyped-def]
        reads["n"] += 1
        if handle.index == 0 and os.environ.get("FAKE_NVML_GROW"):
            fake.gpus[0].used = min(fake.gpus[0].total - fake.gpus[0].reserved, 20000 * MiB + reads["n"] * 997 * MiB)
        return real(self, handle, version)

    type(fake).nvmlDeviceGetMemoryInfo = growing  # type: ignore[method-assign]
    if os.environ.get("FAKE_NVML_LATENCY"):
        with_driver_latency(fake)
    sys.modules["pynvml"] = fake  # type: ignore[assignment]
    from vramtop.cli import main as vramtop_main

    return vramtop_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
