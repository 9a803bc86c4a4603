"""Wall and CPU time of each NVML call vramtop makes, on this machine's GPU 0.

CPU time (process_time) shows whether a slow call sleeps or spins: a call that spins costs
the monitor CPU at every refresh, which decides how often it may be made.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pynvml as nvml


def measure(fn, reps):  # type: ignore[no-untyped-def]
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - wall0) / reps * 1e6, (time.process_time() - cpu0) / reps * 1e6


def main() -> int:
    t0 = time.perf_counter()
    nvml.nvmlInit()
    init_ms = (time.perf_counter() - t0) * 1e3
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    calls = {
        "nvmlDeviceGetMemoryInfo(v2)": (lambda: nvml.nvmlDeviceGetMemoryInfo(h, version=nvml.nvmlMemory_v2), 200),
        "nvmlDeviceGetUtilizationRates": (lambda: nvml.nvmlDeviceGetUtilizationRates(h), 200),
        "nvmlDeviceGetTemperature": (lambda: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU), 200),
        "nvmlDeviceGetPowerUsage": (lambda: nvml.nvmlDeviceGetPowerUsage(h), 200),
        "nvmlDeviceGetMigMode": (lambda: nvml.nvmlDeviceGetMigMode(h), 200),
        "nvmlDeviceGetComputeRunningProcesses_v3": (lambda: nvml.nvmlDeviceGetComputeRunningProcesses_v3(h), 200),
        "nvmlDeviceGetGraphicsRunningProcesses_v3": (lambda: nvml.nvmlDeviceGetGraphicsRunningProcesses_v3(h), 200),
        "nvmlDeviceGetPcieThroughput(TX)": (
            lambda: nvml.nvmlDeviceGetPcieThroughput(h, nvml.NVML_PCIE_UTIL_TX_BYTES), 10),
    }
    # Both directions as vramtop reads them (at once, a thread per call), against one after the
    # other: each call sleeps through the driver's 20 ms window.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from vramtop.sources.nvml import NvmlSource

    source = NvmlSource(["0"], nvml=nvml)  # GPU 0, as the calls above
    source.open()
    calls["PCIe TX then RX, one after the other"] = (
        lambda: (nvml.nvmlDeviceGetPcieThroughput(h, nvml.NVML_PCIE_UTIL_TX_BYTES),
                 nvml.nvmlDeviceGetPcieThroughput(h, nvml.NVML_PCIE_UTIL_RX_BYTES)), 10)
    calls["PCIe TX and RX at once (vramtop's read)"] = (lambda: source._read_pcie_ahead(0.0), 10)
    rows = {name: measure(fn, reps) for name, (fn, reps) in calls.items()}
    print(f"nvmlInit: {init_ms:.1f} ms")
    print("| call | wall µs | CPU µs |\n|---|---|---|")
    for name, (wall, cpu) in rows.items():
        print(f"| {name} | {wall:.1f} | {cpu:.1f} |")
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump({"nvmlInit_ms": init_ms, "calls_us": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
