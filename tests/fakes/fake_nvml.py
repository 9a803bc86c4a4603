"""FakeNvml: a stand-in for the ``pynvml`` module that can fail in every way NVML does.

It raises the *real* ``pynvml.NVMLError`` subclasses (importing pynvml does not load the
driver library), so the source under test sees exactly the exceptions it would on a GPU.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml

MiB = 1024 * 1024


@dataclass
class FakeProc:
    pid: int
    used: int | None  # bytes; None = N/A
    gi: int = 0xFFFFFFFF
    ci: int = 0xFFFFFFFF


@dataclass
class FakeMig:
    uuid: str
    gi: int
    ci: int
    total: int
    used: int


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    total: int = 81559 * MiB
    used: int = 0
    reserved: int = 480 * MiB
    util: tuple[int, int] = (0, 0)
    temperature: int = 36
    power: int = 104_000  # mW
    power_limit: int = 700_000
    pcie_kb: tuple[int, int] = (1000, 2000)  # KB/s, as NVML reports
    compute: list[FakeProc] = field(default_factory=list)
    graphics: list[FakeProc] = field(default_factory=list)
    mig: list[FakeMig] | None = None
    lost: bool = False

    @property
    def free(self) -> int:
        return self.total - self.used - self.reserved


def err(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


class FakeNvml:
    """Module-like object. ``fail`` maps a function name to an NVML error code it raises."""

    NVMLError = pynvml.NVMLError
    nvmlMemory_v2 = pynvml.nvmlMemory_v2
    NVML_PCIE_UTIL_TX_BYTES = pynvml.NVML_PCIE_UTIL_TX_BYTES
    NVML_PCIE_UTIL_RX_BYTES = pynvml.NVML_PCIE_UTIL_RX_BYTES
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU

    def __init__(self, gpus: list[FakeGpu], *, driver: str = "580.159.04", cuda: int = 13000,
                 init_error: int | None = None, memory_v2: bool = True,
                 process_api: str = "v3", fail: dict[str, int] | None = None) -> None:
        self.gpus = gpus
        self.driver = driver
        self.cuda = cuda
        self.init_error = init_error
        self.memory_v2 = memory_v2
        self.process_api = process_api
        self.fail = dict(fail or {})
        self.calls: Counter[str] = Counter()
        self._counting = threading.Lock()  # calls come from several threads (PCIe, a GPU each)
        self.hang = threading.Event()  # set -> memory reads block until release is set
        self.release = threading.Event()
        self.hang_in: set[str] = set()  # these calls block until release is set
        # The library gone (a driver unloaded under the process): every call fails; once back,
        # calls fail as uninitialised until nvmlInit is called again, as a reloaded library would.
        self.vanished = False
        self.needs_init = False  # back after vanishing, not initialised again yet
        self.initialised = False

    def _enter(self, name: str) -> None:
        with self._counting:
            self.calls[name] += 1
        if name in self.hang_in:
            self.release.wait()
        if self.vanished:
            raise err(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND if name == "nvmlInit" else pynvml.NVML_ERROR_UNINITIALIZED)
        if name in self.fail:
            raise err(self.fail[name])
        if self.needs_init and name not in ("nvmlInit", "nvmlShutdown"):
            raise err(pynvml.NVML_ERROR_UNINITIALIZED)

    def vanish(self) -> None:
        self.vanished = True
        self.initialised = False

    def come_back(self) -> None:
        self.vanished = False
        self.needs_init = True

    def _gpu(self, handle: Any) -> FakeGpu:
        gpu = self.gpus[handle.index]
        if gpu.lost:
            raise err(pynvml.NVML_ERROR_GPU_IS_LOST)
        return gpu

    # -- system -------------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self._enter("nvmlInit")
        if self.init_error is not None:
            raise err(self.init_error)
        self.initialised = True
        self.needs_init = False

    def nvmlShutdown(self) -> None:
        self.calls["nvmlShutdown"] += 1
        self.initialised = False

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return self.driver

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        self._enter("nvmlSystemGetCudaDriverVersion_v2")
        return self.cuda

    # -- devices ------------------------------------------------------------------------------
    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self._enter("nvmlDeviceGetHandleByIndex")
        return SimpleNamespace(index=index, mig=None)

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        self._enter("nvmlDeviceGetUUID")
        if handle.mig is not None:
            return handle.mig.uuid
        return self.gpus[handle.index].uuid

    def nvmlDeviceGetName(self, handle: Any) -> str:
        self._enter("nvmlDeviceGetName")
        return self.gpus[handle.index].name

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any:
        self._enter("nvmlDeviceGetPciInfo")
        return SimpleNamespace(busId=f"00000000:{handle.index:02X}:00.0")

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:
        self._enter("nvmlDeviceGetEnforcedPowerLimit")
        return self.gpus[handle.index].power_limit

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any:
        self._enter("nvmlDeviceGetMemoryInfo")
        if self.hang.is_set():
            self.release.wait()
        if handle.mig is not None:
            m = handle.mig
            return SimpleNamespace(total=m.total, used=m.used, free=m.total - m.used)
        gpu = self._gpu(handle)
        if version is not None:
            if not self.memory_v2:
                raise err(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
            return SimpleNamespace(total=gpu.total, reserved=gpu.reserved, used=gpu.used, free=gpu.free)
        # v1 counts driver-reserved memory as used.
        return SimpleNamespace(total=gpu.total, used=gpu.used + gpu.reserved, free=gpu.free)

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        self._enter("nvmlDeviceGetUtilizationRates")
        gpu = self._gpu(handle)
        return SimpleNamespace(gpu=gpu.util[0], memory=gpu.util[1])

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        self._enter("nvmlDeviceGetTemperature")
        return self._gpu(handle).temperature

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        self._enter("nvmlDeviceGetPowerUsage")
        return self._gpu(handle).power

    def nvmlDeviceGetPcieThroughput(self, handle: Any, counter: int) -> int:
        self._enter("nvmlDeviceGetPcieThroughput")
        gpu = self._gpu(handle)
        return gpu.pcie_kb[0] if counter == self.NVML_PCIE_UTIL_TX_BYTES else gpu.pcie_kb[1]

    def nvmlDeviceGetMigMode(self, handle: Any) -> list[int]:
        self._enter("nvmlDeviceGetMigMode")
        gpu = self._gpu(handle)
        if gpu.mig is None:
            raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return [1, 1]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int:
        self._enter("nvmlDeviceGetMaxMigDeviceCount")
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: int) -> Any:
        self._enter("nvmlDeviceGetMigDeviceHandleByIndex")
        migs = self.gpus[handle.index].mig or []
        if index >= len(migs):
            raise err(pynvml.NVML_ERROR_NOT_FOUND)
        return SimpleNamespace(index=handle.index, mig=migs[index])

    def nvmlDeviceGetGpuInstanceId(self, handle: Any) -> int:
        return int(handle.mig.gi)

    def nvmlDeviceGetComputeInstanceId(self, handle: Any) -> int:
        return int(handle.mig.ci)

    # -- processes: v3 / v2 / v1, as the driver supports ------------------------------------
    def _procs(self, name: str, handle: Any, procs_of: str, api: str) -> list[Any]:
        self._enter(name)
        versions = {"v3": 3, "v2": 2, "v1": 1}
        if versions[api] > versions[self.process_api]:
            raise err(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        gpu = self._gpu(handle)
        return [
            SimpleNamespace(pid=p.pid, usedGpuMemory=p.used, gpuInstanceId=p.gi, computeInstanceId=p.ci)
            for p in getattr(gpu, procs_of)
        ]

    def nvmlDeviceGetComputeRunningProcesses_v3(self, h: Any) -> list[Any]:
        return self._procs("nvmlDeviceGetComputeRunningProcesses_v3", h, "compute", "v3")

    def nvmlDeviceGetComputeRunningProcesses_v2(self, h: Any) -> list[Any]:
        return self._procs("nvmlDeviceGetComputeRunningProcesses_v2", h, "compute", "v2")

    def nvmlDeviceGetComputeRunningProcesses(self, h: Any) -> list[Any]:
        return self._procs("nvmlDeviceGetComputeRunningProcesses", h, "compute", "v1")

    def nvmlDeviceGetGraphicsRunningProcesses_v3(self, h: Any) -> list[Any]:
        return self._procs("nvmlDeviceGetGraphicsRunningProcesses_v3", h, "graphics", "v3")

    def nvmlDeviceGetGraphicsRunningProcesses_v2(self, h: Any) -> list[Any]:
        return self._procs("nvmlDeviceGetGraphicsRunningProcesses_v2", h, "graphics", "v2")

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: Any) -> list[Any]:
        return self._procs("nvmlDeviceGetGraphicsRunningProcesses", h, "graphics", "v1")


def two_gpu_box(**kwargs: Any) -> FakeNvml:
    """A typical training box: GPU 0 busy with one job, GPU 1 idle."""
    import os

    gpus = [
        FakeGpu(uuid="GPU-c597915a-9fc3-3bb6-c3bc-f3d5a34ccdee", used=40123 * MiB + 200 * 1024,
                util=(97, 61), compute=[FakeProc(os.getpid(), 39800 * MiB)]),
        FakeGpu(uuid="GPU-0b7e13d2-1111-2222-3333-444455556666"),
    ]
    return FakeNvml(gpus, **kwargs)
