"""The NVML source: the only module that imports ``pynvml`` (from the nvidia-ml-py package).

Every NVML error is turned into either a ``None`` field ("not available"), a per-GPU error
string, or, at start-up, a :class:`NvmlUnavailable` with a one-line message and an exit code.
No NVML exception ever reaches a caller of :meth:`NvmlSource.read`.
"""

from __future__ import annotations

import contextlib
import threading
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

from vramtop.analysis.samples import selects
from vramtop.errors import EXIT_NO_DRIVER, EXIT_NO_GPU, EXIT_NVML, VramtopError
from vramtop.model import GpuSample, MigDeviceSample, ProcessSample, Sample
from vramtop.sources.hostinfo import HostInfo

T = TypeVar("T")

MIG_INTERVAL = 10.0  # seconds between MIG mode queries

# NVML error codes (stable across NVML releases; mirrored here so the fake and the real
# module are interpreted the same way).
ERR_UNINITIALIZED = 1
ERR_NOT_SUPPORTED = 3
ERR_NO_PERMISSION = 4
ERR_NOT_FOUND = 6
ERR_DRIVER_NOT_LOADED = 9
ERR_TIMEOUT = 10
ERR_LIBRARY_NOT_FOUND = 12
ERR_FUNCTION_NOT_FOUND = 13
ERR_GPU_IS_LOST = 15
ERR_RESET_REQUIRED = 16
ERR_LIB_RM_VERSION_MISMATCH = 18
ERR_NO_DATA = 21
ERR_ARGUMENT_VERSION_MISMATCH = 25
ERR_DEPRECATED = 26
ERR_NOT_READY = 27
ERR_GPU_NOT_FOUND = 28

# A field that fails with one of these is simply "not available" on this GPU / driver / user.
_FIELD_UNAVAILABLE = {
    ERR_NOT_SUPPORTED,
    ERR_NO_PERMISSION,
    ERR_NOT_FOUND,
    ERR_NO_DATA,
    ERR_NOT_READY,
    ERR_FUNCTION_NOT_FOUND,
    ERR_DEPRECATED,
}
# NVML itself is gone (a driver unloaded or reloaded under the process): only nvmlInit again helps.
_NVML_GONE = {ERR_UNINITIALIZED, ERR_DRIVER_NOT_LOADED, ERR_LIBRARY_NOT_FOUND, ERR_LIB_RM_VERSION_MISMATCH}
# The API exists in the library but this call signature or version does not: try an older one.
_TRY_OLDER = {ERR_FUNCTION_NOT_FOUND, ERR_ARGUMENT_VERSION_MISMATCH, ERR_NOT_SUPPORTED}

_INIT_MESSAGES = {
    ERR_LIBRARY_NOT_FOUND: (
        "NVIDIA driver not found: libnvidia-ml.so.1 could not be loaded "
        "(is the NVIDIA driver installed, and is this a GPU machine or container?). "
        "No GPU here? `vramtop demo` replays a real training run",
        EXIT_NO_DRIVER,
    ),
    ERR_DRIVER_NOT_LOADED: (
        "the NVIDIA driver is not loaded (nvidia-smi will say the same; load the kernel module "
        "or reboot after installing the driver)",
        EXIT_NO_DRIVER,
    ),
    ERR_NO_PERMISSION: (
        "permission denied by the NVIDIA driver (check the permissions of /dev/nvidia*)",
        EXIT_NVML,
    ),
    ERR_LIB_RM_VERSION_MISMATCH: (
        "the NVIDIA driver library and kernel module versions differ (reboot after a driver "
        "upgrade)",
        EXIT_NO_DRIVER,
    ),
}


class NvmlUnavailable(VramtopError):
    """NVML cannot be used at all: no driver, no GPU, no permission."""


def nvml_error_code(err: BaseException) -> int | None:
    value = getattr(err, "value", None)
    return value if isinstance(value, int) else None


def describe_nvml_error(err: BaseException) -> str:
    """A short, human description of an NVML exception."""
    code = nvml_error_code(err)
    if code == ERR_GPU_IS_LOST:
        return "GPU is lost (fell off the bus or needs a reset)"
    if code == ERR_RESET_REQUIRED:
        return "GPU needs a reset"
    if code == ERR_TIMEOUT:
        return "NVML timed out"
    if code in _INIT_MESSAGES:
        return _INIT_MESSAGES[code][0]
    text = str(err) or type(err).__name__
    if text.startswith("NVML Error with code"):  # nvidia-ml-py has no words for newer codes
        text = f"{type(err).__name__.removeprefix('NVMLError_')} (code {code})"
    return f"NVML error: {text}"


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


@dataclass
class _Device:
    index: int
    uuid: str
    name: str
    handle: Any
    pci_bus_id: str | None
    power_limit: int | None


class NvmlSource:
    """Reads every (selected) GPU through NVML and returns one frozen :class:`Sample` per read.

    Memory, utilisation, temperature and power are read every time. The process list and PCIe
    throughput are read at most every ``process_interval`` / ``pcie_interval`` seconds:
    ``nvmlDeviceGetPcieThroughput`` blocks for ~20 ms per call on an H100, twice per GPU. All of
    them are read at the same time, a thread each (NVML is thread-safe): one after the other,
    eight GPUs held the first sample, and so the first frame, a third of a second.
    """

    def __init__(
        self,
        gpus: Sequence[str] | None = None,
        *,
        nvml: ModuleType | None = None,
        host: HostInfo | None = None,
        process_interval: float = 1.0,
        pcie_interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._selection = list(gpus) if gpus else None
        self._nvml = nvml
        self._host = host or HostInfo()
        self._process_interval = process_interval
        self._pcie_interval = pcie_interval
        self._clock = clock
        self._devices: list[_Device] = []
        self._driver_version: str | None = None
        self._cuda_version: str | None = None
        self._process_fns: dict[str, Callable[[Any], Any] | None] = {}
        self._process_cache: dict[str, tuple[float, tuple[ProcessSample, ...]]] = {}
        self._pcie_cache: dict[str, tuple[float, int | None, int | None]] = {}
        # Read ahead by the threads of one read, taken by that read's GPUs: per (GPU, direction),
        # KB/s or what the call raised.
        self._pcie_ahead: dict[tuple[str, int], int | BaseException | None] = {}
        self._mig_cache: dict[str, tuple[float, bool | None]] = {}
        self._memory_v2 = True
        self._opened = False
        self._gone = False  # a read met an error that only initialising NVML again can mend

    # -- life cycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Initialise NVML and find the GPUs; raises NvmlUnavailable with a clear message."""
        if self._opened:
            return
        nvml = self._nvml or self._import_pynvml()
        self._nvml = nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as err:
            message, code = _INIT_MESSAGES.get(
                nvml_error_code(err) or 0, (f"NVML could not start: {describe_nvml_error(err)}", EXIT_NVML)
            )
            raise NvmlUnavailable(message, code) from None
        except OSError as err:  # some loaders raise before NVML's own error mapping
            raise NvmlUnavailable(_INIT_MESSAGES[ERR_LIBRARY_NOT_FOUND][0], EXIT_NO_DRIVER) from err
        self._opened = True
        try:
            driver = self._optional(nvml.nvmlSystemGetDriverVersion)
            self._driver_version = None if driver is None else _text(driver)
            cuda = self._optional(nvml.nvmlSystemGetCudaDriverVersion_v2)
            self._cuda_version = f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else None
            self._devices = self._select(self._enumerate())
        except NvmlUnavailable:
            self.close()
            raise
        except nvml.NVMLError as err:
            self.close()
            raise NvmlUnavailable(f"cannot list GPUs: {describe_nvml_error(err)}", EXIT_NVML) from None

    def close(self) -> None:
        if self._opened and self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
        self._opened = False

    @staticmethod
    def _import_pynvml() -> ModuleType:
        try:
            import pynvml
        except ImportError:
            raise NvmlUnavailable(
                "the nvidia-ml-py package is not installed (pip install nvidia-ml-py)", EXIT_NO_DRIVER
            ) from None
        return typing.cast(ModuleType, pynvml)

    def _enumerate(self) -> list[_Device]:
        nvml = self._nvml
        assert nvml is not None
        count = nvml.nvmlDeviceGetCount()
        devices = []
        for index in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            pci = self._optional(nvml.nvmlDeviceGetPciInfo, handle)
            devices.append(
                _Device(
                    index=index,
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    handle=handle,
                    pci_bus_id=_text(pci.busId) if pci is not None else None,
                    power_limit=self._optional(nvml.nvmlDeviceGetEnforcedPowerLimit, handle),
                )
            )
        if not devices:
            raise NvmlUnavailable("no NVIDIA GPU found (the driver is loaded but lists no device)", EXIT_NO_GPU)
        return devices

    def _select(self, devices: list[_Device]) -> list[_Device]:
        if not self._selection:
            return devices
        chosen: list[_Device] = []
        for wanted in self._selection:
            match = [d for d in devices if selects(wanted, d.index, d.uuid)]
            if not match:
                known = ", ".join(f"{d.index} ({d.uuid})" for d in devices)
                raise NvmlUnavailable(f"no GPU matches --gpu {wanted!r}; GPUs here: {known}", EXIT_NO_GPU)
            chosen.extend(d for d in match if d not in chosen)
        return chosen

    # -- reading ----------------------------------------------------------------------------

    def read(self) -> Sample:
        """One fresh sample. Never raises an NVML error: failures become fields and messages."""
        self.open()
        now = self._clock()
        self._gone = False
        self._read_pcie_ahead(now)
        gpus = tuple(self._read_gpu(device, now) for device in self._devices)
        self._pcie_ahead.clear()  # a GPU whose read failed before its PCIe did not take it
        if self._gone:
            self.close()  # the next read initialises NVML again (or says why it cannot)
        return Sample(
            time=time.time(),
            host=self._host.host_sample(),
            gpus=gpus,
            driver_version=self._driver_version,
            cuda_driver_version=self._cuda_version,
        )

    def _read_gpu(self, dev: _Device, now: float) -> GpuSample:
        nvml = self._nvml
        assert nvml is not None
        h = dev.handle
        try:
            total, used, free, reserved = self._memory(h)
            util = self._optional(nvml.nvmlDeviceGetUtilizationRates, h)
            mig_enabled = self._mig_mode(dev, now)
            tx, rx = self._pcie(dev, now)
            return GpuSample(
                index=dev.index,
                uuid=dev.uuid,
                name=dev.name,
                memory_total=total,
                memory_used=used,
                memory_free=free,
                memory_reserved=reserved,
                utilization_gpu=None if util is None else int(util.gpu),
                utilization_memory=None if util is None else int(util.memory),
                pcie_tx=tx,
                pcie_rx=rx,
                temperature=self._optional(nvml.nvmlDeviceGetTemperature, h, nvml.NVML_TEMPERATURE_GPU),
                power_usage=self._optional(nvml.nvmlDeviceGetPowerUsage, h),
                power_limit=dev.power_limit,
                pci_bus_id=dev.pci_bus_id,
                mig_enabled=mig_enabled,
                mig_devices=self._mig_devices(h) if mig_enabled else (),
                processes=self._processes(dev, now),
            )
        except nvml.NVMLError as err:
            # A GPU-wide failure (lost, needs reset): report it on this GPU, keep the others.
            self._process_cache.pop(dev.uuid, None)
            self._gone = self._gone or nvml_error_code(err) in _NVML_GONE
            return GpuSample(index=dev.index, uuid=dev.uuid, name=dev.name, error=describe_nvml_error(err))

    def _mig_mode(self, dev: _Device, now: float) -> bool | None:
        """MIG mode changes only with a GPU reset, and the query costs ~170 us: re-read rarely."""
        cached = self._mig_cache.get(dev.uuid)
        if cached is not None and now - cached[0] < MIG_INTERVAL:
            return cached[1]
        nvml = self._nvml
        assert nvml is not None
        mode = self._optional(nvml.nvmlDeviceGetMigMode, dev.handle)
        enabled = None if mode is None else bool(mode[0])
        self._mig_cache[dev.uuid] = (now, enabled)
        return enabled

    def _memory(self, handle: Any) -> tuple[int, int, int, int | None]:
        """(total, used, free, reserved) from nvmlDeviceGetMemoryInfo v2, else v1."""
        nvml = self._nvml
        assert nvml is not None
        without_v2 = False
        if self._memory_v2:
            try:
                m = nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2)
                return int(m.total), int(m.used), int(m.free), int(m.reserved)
            except (TypeError, AttributeError):
                without_v2 = True  # an nvidia-ml-py without the v2 struct
            except nvml.NVMLError as err:
                if nvml_error_code(err) not in _TRY_OLDER:
                    raise
                without_v2 = True  # a driver without v2
        m = nvml.nvmlDeviceGetMemoryInfo(handle)
        # Only once v1 has answered: a GPU failing every call (a passing fault) is no old driver.
        self._memory_v2 = self._memory_v2 and not without_v2
        return int(m.total), int(m.used), int(m.free), None

    def _pcie_due(self, dev: _Device, now: float) -> bool:
        cached = self._pcie_cache.get(dev.uuid)
        return cached is None or now - cached[0] >= self._pcie_interval

    def _pcie(self, dev: _Device, now: float) -> tuple[int | None, int | None]:
        if not self._pcie_due(dev, now):
            cached = self._pcie_cache[dev.uuid]
            return cached[1], cached[2]
        nvml = self._nvml
        assert nvml is not None
        tx = self._read_ahead(dev, nvml.NVML_PCIE_UTIL_TX_BYTES)
        rx = self._read_ahead(dev, nvml.NVML_PCIE_UTIL_RX_BYTES)
        result = (None if tx is None else tx * 1024, None if rx is None else rx * 1024)
        self._pcie_cache[dev.uuid] = (now, *result)
        return result

    def _read_ahead(self, dev: _Device, counter: int) -> int | None:
        """One direction's KB/s, read ahead by this read (every GPU due for it is), or its error."""
        kb = self._pcie_ahead.pop((dev.uuid, counter))
        if isinstance(kb, BaseException):
            raise kb
        return kb

    def _read_pcie_ahead(self, now: float) -> None:
        """Both directions of the PCIe throughput of every GPU due for it, read at once, a thread
        per call: each call sleeps through the driver's 20 ms window (one GPU: 42 ms one call
        after the other on an H200, 21 together). Each GPU's read takes its figures (or raises
        their error) in turn."""
        nvml = self._nvml
        assert nvml is not None
        calls = [(dev, counter) for dev in self._devices if self._pcie_due(dev, now)
                 for counter in (nvml.NVML_PCIE_UTIL_TX_BYTES, nvml.NVML_PCIE_UTIL_RX_BYTES)]

        def read(dev: _Device, counter: int) -> None:
            try:
                kb = self._optional(nvml.nvmlDeviceGetPcieThroughput, dev.handle, counter)
            except BaseException as err:  # raised again by that GPU's read, where it is handled
                kb = err
            self._pcie_ahead[(dev.uuid, counter)] = kb

        threads = [threading.Thread(target=read, args=call, name="vramtop-pcie", daemon=True) for call in calls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _mig_devices(self, handle: Any) -> tuple[MigDeviceSample, ...]:
        nvml = self._nvml
        assert nvml is not None
        count = self._optional(nvml.nvmlDeviceGetMaxMigDeviceCount, handle) or 0
        found = []
        for i in range(count):
            mig = self._optional(nvml.nvmlDeviceGetMigDeviceHandleByIndex, handle, i)
            if mig is None:
                continue
            mem = self._optional(nvml.nvmlDeviceGetMemoryInfo, mig)
            found.append(
                MigDeviceSample(
                    index=i,
                    uuid=_text(nvml.nvmlDeviceGetUUID(mig)),
                    gpu_instance_id=self._optional(nvml.nvmlDeviceGetGpuInstanceId, mig),
                    compute_instance_id=self._optional(nvml.nvmlDeviceGetComputeInstanceId, mig),
                    memory_total=None if mem is None else int(mem.total),
                    memory_used=None if mem is None else int(mem.used),
                    memory_free=None if mem is None else int(mem.free),
                )
            )
        return tuple(found)

    def _processes(self, dev: _Device, now: float) -> tuple[ProcessSample, ...]:
        cached = self._process_cache.get(dev.uuid)
        if cached is not None and now - cached[0] < self._process_interval:
            return cached[1]
        merged: dict[int, tuple[str, Any]] = {}
        for kind in ("C", "G"):
            for info in self._running_processes(kind, dev.handle):
                previous = merged.get(info.pid)
                if previous is None:
                    merged[info.pid] = (kind, info)
                else:  # the same process in both lists: nvidia-smi shows "C+G"
                    merged[info.pid] = ("C+G", previous[1])
        procs = tuple(
            self._host.process_sample(
                pid=pid,
                gpu_uuid=dev.uuid,
                used_memory=_used_memory(info),
                kind=kind,
                gpu_instance_id=_mig_id(getattr(info, "gpuInstanceId", None)),
                compute_instance_id=_mig_id(getattr(info, "computeInstanceId", None)),
            )
            for pid, (kind, info) in sorted(merged.items())
        )
        self._process_cache[dev.uuid] = (now, procs)
        return procs

    def _running_processes(self, kind: str, handle: Any) -> list[Any]:
        """The compute ("C") or graphics ("G") process list, trying v3, v2, then v1."""
        nvml = self._nvml
        assert nvml is not None
        base = "nvmlDeviceGetComputeRunningProcesses" if kind == "C" else "nvmlDeviceGetGraphicsRunningProcesses"
        if base in self._process_fns:
            fn = self._process_fns[base]
            if fn is None:
                return []
            try:
                return list(fn(handle))
            except nvml.NVMLError as err:
                if nvml_error_code(err) in _FIELD_UNAVAILABLE:
                    return []
                raise
        for suffix in ("_v3", "_v2", ""):
            fn = getattr(nvml, base + suffix, None)
            if fn is None:
                continue
            try:
                result = list(fn(handle))
            except nvml.NVMLError as err:
                if nvml_error_code(err) in _TRY_OLDER:
                    continue
                if nvml_error_code(err) in _FIELD_UNAVAILABLE:
                    return []
                raise
            self._process_fns[base] = fn
            return result
        self._process_fns[base] = None
        return []

    def _optional(self, call: Callable[..., T], *args: Any) -> T | None:
        """``call(*args)``, or None when NVML says the value is not available here."""
        nvml = self._nvml
        assert nvml is not None
        try:
            return call(*args)
        except nvml.NVMLError as err:
            if nvml_error_code(err) in _FIELD_UNAVAILABLE:
                return None
            raise


def _used_memory(info: Any) -> int | None:
    value = getattr(info, "usedGpuMemory", None)
    # nvidia-ml-py maps NVML_VALUE_NOT_AVAILABLE to None already; older versions did not.
    if value is None or value >= (1 << 64) - 1:
        return None
    return int(value)


def _mig_id(value: Any) -> int | None:
    # 0xFFFFFFFF means "not a MIG process".
    if value is None or value >= 0xFFFFFFFF:
        return None
    return int(value)
