"""NvmlSource against FakeNvml: every number, every fallback, every failure NVML can produce."""

from __future__ import annotations

import os
import threading
import time

import psutil
import pynvml
import pytest

from tests.fakes.fake_nvml import FakeGpu, FakeMig, FakeNvml, FakeProc, MiB, two_gpu_box
from vramtop.errors import EXIT_NO_DRIVER, EXIT_NO_GPU, EXIT_NVML, VramtopError
from vramtop.model import MISMATCH, NOT_VISIBLE, VISIBLE
from vramtop.sources.hostinfo import HostInfo
from vramtop.sources.nvml import NvmlSource, NvmlUnavailable
from vramtop.sources.poller import DeadlineReader


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def source(fake: FakeNvml, **kwargs) -> NvmlSource:
    kwargs.setdefault("host", HostInfo(holds_gpu=lambda pid: True))
    return NvmlSource(nvml=fake, **kwargs)


def test_memory_fields_are_the_exact_bytes_nvml_reports():
    fake = two_gpu_box()
    sample = source(fake).read()
    gpu = sample.gpus[0]
    real = fake.gpus[0]
    assert (gpu.memory_total, gpu.memory_used, gpu.memory_free, gpu.memory_reserved) == (
        real.total, real.used, real.free, real.reserved)
    assert gpu.uuid == real.uuid and gpu.index == 0 and gpu.name == "NVIDIA H100 80GB HBM3"
    assert (gpu.utilization_gpu, gpu.utilization_memory) == (97, 61)
    assert (gpu.pcie_tx, gpu.pcie_rx) == (1000 * 1024, 2000 * 1024)  # KB/s -> bytes/s
    assert (gpu.temperature, gpu.power_usage, gpu.power_limit) == (36, 104_000, 700_000)
    assert sample.driver_version == "580.159.04" and sample.cuda_driver_version == "13.0"
    assert sample.host.memory_total > 0 and sample.host.hostname


def test_memory_falls_back_to_v1_without_reserved_when_driver_lacks_v2():
    fake = two_gpu_box(memory_v2=False)
    gpu = source(fake).read().gpus[0]
    assert gpu.memory_reserved is None
    assert gpu.memory_used == fake.gpus[0].used + fake.gpus[0].reserved  # v1's meaning of used


@pytest.mark.parametrize("api", ["v3", "v2", "v1"])
def test_process_list_falls_back_across_api_versions(api):
    fake = two_gpu_box(process_api=api)
    procs = source(fake).read().gpus[0].processes
    assert [(p.pid, p.used_memory, p.kind) for p in procs] == [(os.getpid(), 39800 * MiB, "C")]


def test_process_in_both_lists_is_c_plus_g_and_na_memory_is_none():
    fake = FakeNvml([FakeGpu(uuid="GPU-a", compute=[FakeProc(os.getpid(), None)],
                             graphics=[FakeProc(os.getpid(), None)])])
    (proc,) = source(fake).read().gpus[0].processes
    assert proc.kind == "C+G" and proc.used_memory is None


def test_process_identity_comes_from_the_host():
    fake = two_gpu_box()
    (proc,) = source(fake).read().gpus[0].processes
    assert proc.visibility == VISIBLE
    assert "pytest" in (proc.command or "") or "python" in (proc.command or "")
    assert proc.host_rss and proc.host_rss > 0 and proc.user and proc.create_time


def test_pid_missing_here_is_shown_as_not_visible_not_dropped():
    fake = FakeNvml([FakeGpu(uuid="GPU-a", compute=[FakeProc(4_000_000, 100 * MiB)])])
    (proc,) = source(fake).read().gpus[0].processes
    assert proc.visibility == NOT_VISIBLE and proc.used_memory == 100 * MiB and proc.command is None


def test_pid_of_a_local_process_without_gpu_devices_is_a_mismatch():
    # The real check: this test process holds no /dev/nvidia*, so NVML's PID is someone else's.
    fake = two_gpu_box()
    (proc,) = NvmlSource(nvml=fake).read().gpus[0].processes
    assert proc.visibility == MISMATCH


def test_slow_queries_are_polled_less_often_than_memory():
    fake = two_gpu_box()
    clock = Clock()
    src = source(fake, clock=clock, process_interval=1.0, pcie_interval=2.0)
    for _ in range(10):  # 10 reads in 1 s
        src.read()
        clock.now += 0.1
    assert fake.calls["nvmlDeviceGetMemoryInfo"] == 20  # every read, both GPUs
    assert fake.calls["nvmlDeviceGetPcieThroughput"] == 4  # once per GPU, TX and RX
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 2
    clock.now += 2.0
    src.read()
    assert fake.calls["nvmlDeviceGetPcieThroughput"] == 8


@pytest.mark.parametrize(
    ("code", "exit_code", "words"),
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, EXIT_NO_DRIVER, "driver not found"),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, EXIT_NO_DRIVER, "driver is not loaded"),
        (pynvml.NVML_ERROR_NO_PERMISSION, EXIT_NVML, "permission denied"),
        (pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, EXIT_NO_DRIVER, "versions differ"),
        (pynvml.NVML_ERROR_UNKNOWN, EXIT_NVML, "NVML could not start"),
    ],
)
def test_init_failures_are_one_clear_line_with_an_exit_code(code, exit_code, words):
    with pytest.raises(NvmlUnavailable) as info:
        source(two_gpu_box(init_error=code)).open()
    assert info.value.exit_code == exit_code
    assert words in info.value.message and "\n" not in info.value.message


def test_no_gpu_is_its_own_error():
    with pytest.raises(NvmlUnavailable) as info:
        source(FakeNvml([])).open()
    assert info.value.exit_code == EXIT_NO_GPU and "no NVIDIA GPU" in info.value.message


def test_gpu_selection_by_index_and_uuid_prefix():
    fake = two_gpu_box()
    assert [g.index for g in source(fake, gpus=["1"]).read().gpus] == [1]
    assert [g.index for g in source(fake, gpus=["gpu-c597"]).read().gpus] == [0]
    with pytest.raises(NvmlUnavailable) as info:
        source(fake, gpus=["7"]).open()
    assert info.value.exit_code == EXIT_NO_GPU and "GPU-0b7e13d2" in info.value.message


class PcieTogether(FakeNvml):
    """Each GPU's PCIe TX read waits until every GPU's is under way: read one after the other,
    the first would wait for ever (here: until the barrier's timeout breaks it)."""

    def __init__(self, gpus: list[FakeGpu]) -> None:
        super().__init__(gpus)
        self.together = threading.Barrier(len(gpus), timeout=10)

    def nvmlDeviceGetPcieThroughput(self, handle, counter):
        if counter == self.NVML_PCIE_UTIL_TX_BYTES:
            self.together.wait()
        return super().nvmlDeviceGetPcieThroughput(handle, counter)


def test_the_pcie_throughput_of_several_gpus_is_read_at_once():
    # ~20 ms asleep in the driver per call, two calls per GPU: one after the other, eight GPUs
    # held the first sample (and the first frame) a third of a second.
    fake = PcieTogether(two_gpu_box().gpus)
    sample = source(fake).read()
    assert [(g.pcie_tx, g.pcie_rx) for g in sample.gpus] == [
        (g.pcie_kb[0] * 1024, g.pcie_kb[1] * 1024) for g in fake.gpus]
    assert all(g.error is None for g in sample.gpus)


class PcieBothWays(FakeNvml):
    """Each direction's read waits for the other one's: read one after the other, the first
    would wait for ever (here: until the barrier's timeout breaks it)."""

    def __init__(self, gpus: list[FakeGpu]) -> None:
        super().__init__(gpus)
        self.together = threading.Barrier(2, timeout=10)

    def nvmlDeviceGetPcieThroughput(self, handle, counter):
        self.together.wait()
        return super().nvmlDeviceGetPcieThroughput(handle, counter)


def test_a_gpus_pcie_throughput_is_read_both_ways_at_once():
    # 21 ms asleep in the driver per call on an H200: 42 ms one after the other, 21 together.
    fake = PcieBothWays(two_gpu_box().gpus[:1])
    gpu = source(fake).read().gpus[0]
    assert gpu.error is None
    assert (gpu.pcie_tx, gpu.pcie_rx) == (fake.gpus[0].pcie_kb[0] * 1024, fake.gpus[0].pcie_kb[1] * 1024)


class PcieRxLost(FakeNvml):
    def nvmlDeviceGetPcieThroughput(self, handle, counter):
        if counter == self.NVML_PCIE_UTIL_RX_BYTES:
            self._enter("nvmlDeviceGetPcieThroughput")
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return super().nvmlDeviceGetPcieThroughput(handle, counter)


def test_an_error_reading_the_received_side_is_the_gpus_error_on_the_reading_thread():
    fake = PcieRxLost(two_gpu_box().gpus[:1])
    gpu = source(fake).read().gpus[0]
    assert gpu.error and "lost" in gpu.error


class PcieLost(FakeNvml):
    def nvmlDeviceGetPcieThroughput(self, handle, counter):
        if handle.index == 1:
            self._enter("nvmlDeviceGetPcieThroughput")
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return super().nvmlDeviceGetPcieThroughput(handle, counter)


def test_an_error_in_one_gpus_pcie_read_is_that_gpus_error():
    fake = PcieLost(two_gpu_box().gpus)
    sample = source(fake).read()
    assert sample.gpus[1].error and "lost" in sample.gpus[1].error
    assert sample.gpus[0].error is None and sample.gpus[0].pcie_tx == fake.gpus[0].pcie_kb[0] * 1024


def test_a_lost_gpu_is_reported_on_that_gpu_and_the_others_still_read():
    fake = two_gpu_box()
    src = source(fake)
    src.read()
    fake.gpus[1].lost = True
    sample = src.read()
    assert sample.gpus[1].error and "lost" in sample.gpus[1].error
    assert sample.gpus[1].memory_used is None
    assert sample.gpus[0].error is None and sample.gpus[0].memory_used == fake.gpus[0].used


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_NO_PERMISSION])
def test_unsupported_fields_are_none_not_zero(code):
    fake = two_gpu_box(fail={"nvmlDeviceGetPowerUsage": code, "nvmlDeviceGetPcieThroughput": code,
                             "nvmlDeviceGetUtilizationRates": code})
    gpu = source(fake).read().gpus[0]
    assert gpu.power_usage is None and gpu.pcie_tx is None and gpu.utilization_gpu is None
    assert gpu.memory_used == fake.gpus[0].used


def test_process_list_permission_denied_gives_no_processes_but_memory_still_reads():
    fake = two_gpu_box(fail={"nvmlDeviceGetComputeRunningProcesses_v3": pynvml.NVML_ERROR_NO_PERMISSION})
    gpu = source(fake).read().gpus[0]
    assert gpu.processes == () and gpu.memory_used == fake.gpus[0].used


def test_mig_devices_are_listed_with_their_instances():
    fake = FakeNvml([FakeGpu(uuid="GPU-a", mig=[FakeMig("MIG-1", 1, 0, 10 * 1024 * MiB, 512 * MiB),
                                                FakeMig("MIG-2", 2, 0, 10 * 1024 * MiB, 0)],
                             compute=[FakeProc(4_000_000, 500 * MiB, gi=1, ci=0)])])
    gpu = source(fake).read().gpus[0]
    assert gpu.mig_enabled is True
    assert [(m.uuid, m.gpu_instance_id, m.memory_used) for m in gpu.mig_devices] == [
        ("MIG-1", 1, 512 * MiB), ("MIG-2", 2, 0)]
    assert (gpu.processes[0].gpu_instance_id, gpu.processes[0].compute_instance_id) == (1, 0)


def test_a_hung_call_gives_the_last_sample_marked_stale_within_the_deadline():
    fake = two_gpu_box()
    reader = DeadlineReader(source(fake), deadline=0.2)
    fresh = reader.read()
    fake.hang.set()
    started = time.monotonic()
    stale = reader.read()
    assert time.monotonic() - started < 1.0
    assert stale.stale and "not answered" in (stale.error or "")
    assert stale.gpus == fresh.gpus and stale.stale_since == fresh.time
    # While the call is still hung, no second call piles up behind it.
    reader.read()
    assert fake.calls["nvmlDeviceGetMemoryInfo"] == 3  # 2 GPUs fresh + the 1 stuck call
    fake.release.set()
    fake.hang.clear()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        sample = reader.read()
        if not sample.stale:
            break
    assert not sample.stale


def test_a_hang_before_any_sample_is_an_error_not_a_freeze():
    fake = two_gpu_box()
    fake.hang.set()
    reader = DeadlineReader(source(fake), deadline=0.1)
    with pytest.raises(VramtopError) as info:
        reader.read()
    assert info.value.exit_code == EXIT_NVML and "not answered" in info.value.message
    fake.release.set()


def test_close_shuts_nvml_down_and_read_reopens():
    fake = two_gpu_box()
    src = source(fake)
    src.read()
    src.close()
    assert not fake.initialised
    src.read()
    assert fake.initialised


def test_reads_from_another_thread_work():
    fake = two_gpu_box()
    src = source(fake)
    out = []
    t = threading.Thread(target=lambda: out.append(src.read()))
    t.start()
    t.join()
    assert out[0].gpus[0].memory_used == fake.gpus[0].used


def test_the_first_read_starts_as_soon_as_the_source_is_open_and_is_the_one_read_returns():
    fake = two_gpu_box()
    reader = DeadlineReader(source(fake), deadline=5)
    reader.open_in_background()()
    deadline = time.monotonic() + 5
    while fake.calls["nvmlDeviceGetMemoryInfo"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.calls["nvmlDeviceGetMemoryInfo"] == 2  # both GPUs read before anyone asked
    first = reader.read()
    assert not first.stale and fake.calls["nvmlDeviceGetMemoryInfo"] == 2  # that read, not another
    reader.read()
    assert fake.calls["nvmlDeviceGetMemoryInfo"] == 4



class ThreadNoting:
    """A source that notes the thread each read ran on; ``open`` can be made to hang."""

    def __init__(self, fake: FakeNvml) -> None:
        self.inner = source(fake)
        self.threads: list[threading.Thread] = []
        self.hang_open = threading.Event()
        self.release = threading.Event()

    def open(self) -> None:
        if self.hang_open.is_set():
            self.release.wait(10)
        self.inner.open()

    def read(self):
        self.threads.append(threading.current_thread())
        return self.inner.read()

    def close(self) -> None:
        self.inner.close()


def test_reads_run_on_one_long_lived_thread():
    noting = ThreadNoting(two_gpu_box())
    reader = DeadlineReader(noting, deadline=5)
    reader.open_in_background()()
    for _ in range(20):
        assert not reader.read().stale
    assert len(noting.threads) == 20 and len(set(noting.threads)) == 1


def test_reads_go_on_after_a_hung_read_returns_on_the_same_thread():
    fake = two_gpu_box()
    noting = ThreadNoting(fake)
    reader = DeadlineReader(noting, deadline=0.1)
    reader.read()
    fake.hang.set()
    assert reader.read().stale
    fake.release.set()
    fake.hang.clear()
    deadline = time.monotonic() + 2
    while reader.read().stale and time.monotonic() < deadline:
        pass
    assert not reader.read().stale and len(set(noting.threads)) == 1


def test_a_worker_stuck_in_a_call_is_left_to_it_and_the_next_read_runs_on_a_new_one():
    noting = ThreadNoting(two_gpu_box())
    noting.hang_open.set()
    reader = DeadlineReader(noting, deadline=1)
    with pytest.raises(VramtopError):
        reader.open_in_background(deadline=0.1)()
    started = time.monotonic()
    sample = reader.read()  # not queued behind the hung open
    assert not sample.stale and time.monotonic() - started < 1
    noting.release.set()


def test_a_stopped_poller_leaves_no_reader_thread_behind():
    from vramtop.sources.poller import Poller

    def readers():
        return [t for t in threading.enumerate() if t.name == "vramtop-read"]

    before = readers()
    got = threading.Event()
    poller = Poller(DeadlineReader(source(two_gpu_box()), deadline=5), 0.05, deliver=lambda s: got.set(),
                    on_error=lambda e: None)
    poller.start()
    assert got.wait(5)
    poller.stop()
    deadline = time.monotonic() + 5
    while len(readers()) > len(before) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(readers()) == len(before)
MEMINFO = b"""MemTotal:       24683792 kB
MemFree:        22855816 kB
MemAvailable:   23653164 kB
Buffers:            9072 kB
SwapCached:            0 kB
SwapTotal:       2097148 kB
SwapFree:        1048572 kB
HugePages_Total:       0
"""


def test_host_memory_comes_from_one_read_of_meminfo(tmp_path, monkeypatch):
    from vramtop.sources import hostinfo

    path = tmp_path / "meminfo"
    path.write_bytes(MEMINFO)
    monkeypatch.setattr(hostinfo, "MEMINFO", str(path))
    host = HostInfo(holds_gpu=lambda pid: True).host_sample()
    kib = 1024
    assert (host.memory_total, host.memory_used) == (24683792 * kib, (24683792 - 23653164) * kib)
    assert (host.swap_total, host.swap_used) == (2097148 * kib, (2097148 - 1048572) * kib)


@pytest.mark.parametrize("drop", [b"MemAvailable:", b"SwapFree:"])
def test_a_meminfo_without_a_figure_is_left_to_psutil(tmp_path, monkeypatch, drop):
    from vramtop.sources import hostinfo

    path = tmp_path / "meminfo"
    path.write_bytes(b"".join(line for line in MEMINFO.splitlines(keepends=True) if not line.startswith(drop)))
    monkeypatch.setattr(hostinfo, "MEMINFO", str(path))
    assert hostinfo.read_meminfo() is None
    host = HostInfo(holds_gpu=lambda pid: True).host_sample()
    assert host.memory_total == psutil.virtual_memory().total and host.swap_total == psutil.swap_memory().total


def with_line(field: bytes, value: bytes | None) -> bytes:
    """MEMINFO with ``field``'s line given ``value`` (None: without the line)."""
    lines = MEMINFO.splitlines(keepends=True)
    return b"".join((b"" if value is None else field + b":" + value + b"\n") if line.startswith(field + b":")
                    else line for line in lines)


@pytest.mark.parametrize(("field", "value"), [
    (b"MemTotal", b""),  # once raised IndexError
    (b"MemTotal", b"   "),
    (b"MemAvailable", b"  lots kB"),  # once raised ValueError
    (b"SwapTotal", b"  2097148"),  # no unit: not a figure in kB
    (b"SwapFree", b"  1048572 MB"),
    (b"SwapFree", b"  -1 kB"),
    (b"MemTotal", b"  2.5e7 kB"),
    (b"MemTotal", b"  24683792 kB extra"),
    (b"SwapFree", b"  4194296 kB"),  # more free than there is
    (b"MemTotal", None),
    (b"SwapTotal", None),
])
def test_a_meminfo_with_an_odd_or_missing_figure_reads_as_none(tmp_path, field, value):
    from vramtop.sources.hostinfo import read_meminfo

    path = tmp_path / "meminfo"
    path.write_bytes(with_line(field, value))
    assert read_meminfo(str(path)) is None


@pytest.mark.parametrize("text", [b"", b"\n\n", b":::\n", b"\xff\xfe kB\n", MEMINFO.replace(b":", b"")])
def test_a_meminfo_that_is_not_a_meminfo_reads_as_none(tmp_path, text):
    from vramtop.sources.hostinfo import read_meminfo

    path = tmp_path / "meminfo"
    path.write_bytes(text)
    assert read_meminfo(str(path)) is None


def test_a_meminfo_with_tabs_and_lines_in_another_order_still_reads(tmp_path):
    from vramtop.sources.hostinfo import read_meminfo

    path = tmp_path / "meminfo"
    path.write_bytes(b"".join(reversed(MEMINFO.replace(b"  ", b"\t").splitlines(keepends=True))))
    assert read_meminfo(str(path)) == (24683792 * 1024, 23653164 * 1024, 2097148 * 1024, 1048572 * 1024)


def test_this_hosts_meminfo_reads_as_psutil_reads_it():
    from vramtop.sources.hostinfo import read_meminfo

    read = read_meminfo()
    assert read is not None
    total, available, swap_total, _ = read
    assert total == psutil.virtual_memory().total and swap_total == psutil.swap_memory().total
    assert 0 < available <= total
