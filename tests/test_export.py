"""`vramtop export`: the metric families of fake samples against golden files, parsed back with
prometheus_client's own parser; the cardinality bounds; one failing part; a hung NVML."""

from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from vramtop.analysis.risk import RiskTracker
from vramtop.errors import VramtopError
from vramtop.export import frame as frame_module
from vramtop.export.collector import SampleCollector
from vramtop.export.frame import FrameBuilder, Options
from vramtop.export.series import COMMAND_CHARS, MAX_SERIES_PER_GPU
from vramtop.export.server import exposure_warning, parse_listen
from vramtop.model import (
    AgentDevice,
    AgentSample,
    AllocatorStats,
    GpuSample,
    HostSample,
    ProcessSample,
    Sample,
    StepPeak,
    TensorCensus,
)
from vramtop.units import mib

GOLDEN = Path(__file__).parent / "golden"
MiB, GiB = 1 << 20, 1 << 30
UUID0, UUID1, UUID2 = "GPU-aaaa0000", "GPU-bbbb1111", "GPU-cccc2222"
TRAINER, OTHER = 4242, 5151
NON_PT = 512 * MiB


def training_sample(t: float = 100.0, *, retries: int = 0, step: int = 40) -> Sample:
    """A host with three GPUs: 0 trains (rank 0, with the agent) beside another user's process,
    1 is idle, 2 fell off the bus."""
    stats = AllocatorStats(allocated=30 * GiB, reserved=34 * GiB, active=30 * GiB, requested=29 * GiB,
                           inactive_split=GiB, allocated_peak=50 * GiB, reserved_peak=52 * GiB,
                           num_alloc_retries=retries, num_ooms=0, largest_free_block=3 * GiB,
                           free_in_segments=4 * GiB)
    census = TensorCensus(parameters_trainable=4 * GiB, parameters_frozen=GiB, gradients=4 * GiB,
                          optimizer_state=8 * GiB, time=t - 1, seen="1 optimizer (AdamW)", gradients_peak=4 * GiB)
    last = StepPeak(step=step, duration=0.5, peak_allocated=50 * GiB, peak_reserved=52 * GiB,
                    persistent=19 * GiB, exact=True)
    device = AgentDevice(index=0, uuid=UUID0, name="H100", stats=stats, census=census, last_step=last,
                         peak_step=step)
    own = stats.reserved + NON_PT
    procs = (ProcessSample(TRAINER, UUID0, own, "C", name="python", command="torchrun --nproc-per-node 1 train.py",
                           user="alice"),
             ProcessSample(OTHER, UUID0, 2 * GiB, "C", name="python", command="python serve.py", user="bob"))
    used = own + 2 * GiB
    total, driver = 80 * GiB, 512 * MiB
    gpus = (
        GpuSample(index=0, uuid=UUID0, name="NVIDIA H100 80GB HBM3", memory_total=total, memory_used=used,
                  memory_free=total - used - driver, memory_reserved=driver, utilization_gpu=97, temperature=61,
                  power_usage=512_000, pci_bus_id="00000000:18:00.0", processes=procs),
        GpuSample(index=1, uuid=UUID1, name="NVIDIA H100 80GB HBM3", memory_total=total, memory_used=0,
                  memory_free=total - driver, memory_reserved=driver, utilization_gpu=0, temperature=33,
                  power_usage=70_000, pci_bus_id="00000000:2a:00.0"),
        GpuSample(index=2, uuid=UUID2, name="NVIDIA H100 80GB HBM3", error="GPU is lost"),
    )
    agent = AgentSample(pid=TRAINER, time=t, torch_version="2.5.0", devices=(device,), step=step, rank=0,
                        world_size=1)
    return Sample(time=t, host=HostSample("node-7", 512 * GiB, 64 * GiB), gpus=gpus, driver_version="580.159.04",
                  cuda_driver_version="13.0", agents=(agent,))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def exporter(options: Options | None = None, clock: Clock | None = None) -> tuple[SampleCollector, CollectorRegistry]:
    collector = SampleCollector(FrameBuilder(RiskTracker(), options or Options(), report=lambda line: None), max_age=10,
                                clock=clock or Clock())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return collector, registry


def scrape(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def parsed(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """name -> [(labels, value)] as Prometheus' text parser reads the exposition."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def check_golden(name: str, text: str) -> None:
    text = re.sub(r'([{,])version="[^"]*"', r'\1version="X"', text)  # vramtop's own version moves
    path = GOLDEN / name
    if os.environ.get("VRAMTOP_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"exposition differs from {path} (VRAMTOP_UPDATE_GOLDEN=1 rewrites it)"


def test_every_figure_of_a_training_host_against_the_golden_file():
    collector, registry = exporter(Options(per_process=True, dcgm_compat=True))
    collector.take(training_sample())
    text = scrape(registry)
    check_golden("export_training.prom", text)
    m = parsed(text)
    assert m["vramtop_up"] == [({}, 1.0)]
    used = {s[0]["gpu"]: s[1] for s in m["vramtop_gpu_memory_used_bytes"]}
    assert used == {"0": 34 * GiB + NON_PT + 2 * GiB, "1": 0}  # GPU 2 failed: no series, not a zero
    assert {s[0]["gpu"]: s[1] for s in m["vramtop_gpu_up"]} == {"0": 1, "1": 1, "2": 0}
    procs = {s[0]["pid"]: s for s in m["vramtop_process_gpu_memory_bytes"]}
    assert procs[str(OTHER)][0] == {"gpu": "0", "uuid": UUID0, "pid": str(OTHER), "command": "python serve.py",
                                    "user": "bob"}
    torch_labels = {"gpu": "0", "pid": str(TRAINER), "rank": "0"}
    assert m["vramtop_torch_memory_allocated_bytes"] == [(torch_labels, 30 * GiB)]
    assert m["vramtop_torch_alloc_retries_total"] == [(torch_labels, 0)]
    assert m["vramtop_torch_fragmentation_ratio"] == [(torch_labels, pytest.approx(0.25))]
    assert m["vramtop_step"] == [({"pid": str(TRAINER), "rank": "0"}, 40)]


def test_the_bill_categories_sum_to_the_process_figure_nvml_reports():
    collector, registry = exporter()
    collector.take(training_sample())
    bill = {labels["category"]: v for labels, v in parsed(scrape(registry))["vramtop_bill_bytes"]}
    assert set(bill) == {"parameters_trainable", "parameters_frozen", "gradients", "optimizer_state",
                         "other_persistent", "activations", "allocator_cache", "non_pytorch"}
    assert sum(bill.values()) == 34 * GiB + NON_PT  # the trainer's used_memory in the NVML row
    assert bill["allocator_cache"] == 4 * GiB and bill["non_pytorch"] == NON_PT
    assert bill["other_persistent"] == 19 * GiB - 13 * GiB - 4 * GiB  # persistent minus what was counted


def test_headroom_is_what_is_left_under_the_projected_step_peak():
    collector, registry = exporter()
    collector.take(training_sample())
    [(_, headroom)] = parsed(scrape(registry))["vramtop_headroom_bytes"]
    projected = 52 * GiB + NON_PT + 2 * GiB + 512 * MiB  # reserved at peak + non-PyTorch + others + driver
    assert headroom == 80 * GiB - projected


def test_warnings_are_exported_with_kind_level_gpu_and_pid():
    collector, registry = exporter()
    collector.take(training_sample(100.0, retries=0))
    collector.take(training_sample(101.0, retries=3))  # the allocator retried: a warning at once
    warnings = parsed(scrape(registry))["vramtop_warning"]
    assert ({"kind": "retries", "level": "warning", "gpu": "0", "pid": str(TRAINER)}, 1.0) in warnings


def test_options_leave_out_per_process_and_dcgm_series_by_default():
    collector, registry = exporter()
    collector.take(training_sample())
    names = set(parsed(scrape(registry)))
    assert "vramtop_process_gpu_memory_bytes" not in names
    assert not any(n.startswith("DCGM_") for n in names)


def test_before_any_sample_only_up_zero_and_build_info():
    _, registry = exporter()
    m = parsed(scrape(registry))
    assert m["vramtop_up"] == [({}, 0.0)]
    assert set(m) == {"vramtop_up", "vramtop_build_info"}


def test_a_stale_sample_is_served_with_up_zero_and_an_old_frame_counts_as_stale():
    clock = Clock()
    collector, registry = exporter(clock=clock)
    collector.take(training_sample())
    assert parsed(scrape(registry))["vramtop_up"] == [({}, 1.0)]
    clock.now += 11  # the poller delivered nothing for longer than max_age
    assert parsed(scrape(registry))["vramtop_up"] == [({}, 0.0)]
    collector.take(training_sample().as_stale("NVML has not answered for 5 s"))
    m = parsed(scrape(registry))
    assert m["vramtop_up"] == [({}, 0.0)]
    assert m["vramtop_gpu_memory_used_bytes"]  # the last figures read, still served



def test_a_source_that_never_answers_is_said_once_and_served_as_up_zero():
    said: list[str] = []
    collector = SampleCollector(FrameBuilder(RiskTracker(), Options()), max_age=10, report=said.append)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    for _ in range(3):  # the poller retries every interval
        collector.failed(VramtopError("NVML did not answer"))
    assert parsed(scrape(registry))["vramtop_up"] == [({}, 0.0)]
    assert len(said) == 1 and "NVML did not answer" in said[0]


# -- bounds and failures -------------------------------------------------------------------------

DOCUMENTED_LABELS = {
    "vramtop_gpu_memory_used_bytes": {"gpu", "uuid", "hostname"},
    "vramtop_gpu_up": {"gpu", "uuid", "hostname"},
    "vramtop_process_gpu_memory_bytes": {"gpu", "uuid", "pid", "command", "user"},
    "vramtop_torch_memory_allocated_bytes": {"gpu", "pid", "rank"},
    "vramtop_bill_bytes": {"gpu", "pid", "rank", "category"},
    "vramtop_headroom_bytes": {"gpu", "pid", "rank"},
    "vramtop_warning": {"kind", "level", "gpu", "pid"},
    "vramtop_step": {"pid", "rank"},
    "vramtop_job_info": {"pid", "rank", "world_size", "run_id", "master"},
}


def crowded_sample(processes: int) -> Sample:
    """One GPU shared by ``processes`` processes with long command lines."""
    base = training_sample()
    gpu = base.gpus[0]
    rows = tuple(ProcessSample(10_000 + i, UUID0, (i + 1) * MiB, "C", command="python " + "x" * 500 + f" {i}",
                               user="u") for i in range(processes))
    return replace(base, gpus=(replace(gpu, processes=rows),), agents=())


def test_label_sets_are_bounded_and_what_is_left_out_is_counted():
    collector, registry = exporter(Options(per_process=True))
    collector.take(crowded_sample(MAX_SERIES_PER_GPU + 40))
    m = parsed(scrape(registry))
    procs = m["vramtop_process_gpu_memory_bytes"]
    assert len(procs) == MAX_SERIES_PER_GPU
    assert min(v for _, v in procs) == 41 * MiB  # the biggest are kept, the smallest left out
    assert all(len(labels["command"]) <= COMMAND_CHARS for labels, _ in procs)
    assert m["vramtop_export_dropped_series_total"] == [({"metric": "vramtop_process_gpu_memory_bytes"}, 40)]
    collector.take(crowded_sample(MAX_SERIES_PER_GPU + 40))
    dropped = parsed(scrape(registry))["vramtop_export_dropped_series_total"]
    assert dropped == [({"metric": "vramtop_process_gpu_memory_bytes"}, 80)]  # a counter: it adds up


def test_every_series_carries_exactly_its_documented_labels():
    collector, registry = exporter(Options(per_process=True))
    collector.take(training_sample(100.0))
    collector.take(training_sample(101.0, retries=2))
    m = parsed(scrape(registry))
    for name, labels in DOCUMENTED_LABELS.items():
        assert m.get(name), f"{name} missing"
        assert all(set(found) == labels for found, _ in m[name]), name
    doc = (Path(__file__).parents[1] / "docs" / "exporter.md").read_text()
    for name in m:
        base = re.sub(r"_(total|info)$", "", name)
        assert base in doc, f"{name} is not documented in docs/exporter.md"


def test_an_agent_gone_takes_its_series_and_leaves_the_rest():
    collector, registry = exporter()
    collector.take(training_sample(100.0))
    collector.take(replace(training_sample(101.0), agents=()))
    m = parsed(scrape(registry))
    assert "vramtop_bill_bytes" not in m and "vramtop_torch_memory_allocated_bytes" not in m
    assert len(m["vramtop_gpu_memory_used_bytes"]) == 2


def test_one_part_that_fails_costs_only_its_own_series(monkeypatch):
    def broken(*args: object) -> None:
        raise KeyError("unforeseen")

    monkeypatch.setattr(frame_module, "torch_families", broken)
    reported: list[str] = []
    collector = SampleCollector(FrameBuilder(RiskTracker(), Options(), report=reported.append), max_age=10)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    collector.take(training_sample(100.0))
    collector.take(training_sample(101.0))
    m = parsed(scrape(registry))
    assert m["vramtop_up"] == [({}, 1.0)] and len(m["vramtop_gpu_memory_used_bytes"]) == 2
    assert "vramtop_bill_bytes" not in m
    assert m["vramtop_export_errors_total"] == [({"part": "torch"}, 2)]
    assert len(reported) == 1 and "torch failed" in reported[0]  # said once, counted every time


# -- dcgm-exporter's names -----------------------------------------------------------------------

# dcgm-exporter's etc/default-counters.csv (field, type, help) and the labels on its device series.
DCGM_DOCUMENTED = {
    "DCGM_FI_DEV_FB_FREE": ("gauge", "Framebuffer memory free (in MiB)."),
    "DCGM_FI_DEV_FB_USED": ("gauge", "Framebuffer memory used (in MiB)."),
    "DCGM_FI_DEV_FB_RESERVED": ("gauge", "Framebuffer memory reserved (in MiB)."),
    "DCGM_FI_DEV_GPU_TEMP": ("gauge", "GPU temperature (in C)."),
    "DCGM_FI_DEV_POWER_USAGE": ("gauge", "Power draw (in W)."),
    "DCGM_FI_DEV_GPU_UTIL": ("gauge", "GPU utilization (in %)."),
}
DCGM_LABELS = {"gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION"}


def test_dcgm_compat_names_units_and_labels_are_dcgm_exporters():
    collector, registry = exporter(Options(dcgm_compat=True))
    sample = training_sample()
    collector.take(sample)
    families = {f.name: f for f in text_string_to_metric_families(scrape(registry))}
    for name, (kind, help_text) in DCGM_DOCUMENTED.items():
        assert families[name].type == kind and families[name].documentation == help_text
        assert all(set(s.labels) == DCGM_LABELS for s in families[name].samples)
    gpu0 = sample.gpus[0]
    fb = {s.name: s for s in families["DCGM_FI_DEV_FB_USED"].samples if s.labels["gpu"] == "0"}
    sample0 = fb["DCGM_FI_DEV_FB_USED"]
    assert sample0.value == mib(gpu0.memory_used or 0)  # MiB, as nvidia-smi and dcgm-exporter show it
    assert sample0.labels["UUID"] == UUID0 and sample0.labels["device"] == "nvidia0"
    assert sample0.labels["modelName"] == gpu0.name and sample0.labels["Hostname"] == "node-7"
    assert sample0.labels["DCGM_FI_DRIVER_VERSION"] == "580.159.04"
    power = [s.value for s in families["DCGM_FI_DEV_POWER_USAGE"].samples if s.labels["gpu"] == "0"]
    assert power == [512.0]  # watts, from NVML's milliwatts


# -- the listener --------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "host", "port", "loopback"), [
    ("127.0.0.1:9400", "127.0.0.1", 9400, True),
    ("localhost:0", "localhost", 0, True),
    ("[::1]:9400", "::1", 9400, True),
    ("0.0.0.0:9400", "0.0.0.0", 9400, False),
    (":9400", "0.0.0.0", 9400, False),
    ("gpu-node-3:9400", "gpu-node-3", 9400, False),
])
def test_listen_addresses_and_which_are_loopback(text, host, port, loopback):
    address = parse_listen(text)
    assert (address.host, address.port, address.loopback) == (host, port, loopback)
    warning = exposure_warning(address)
    assert (warning is None) == loopback
    assert warning is None or "\n" not in warning


@pytest.mark.parametrize("text", ["9400", "host:", "host:http", "127.0.0.1:70000"])
def test_bad_listen_addresses_are_usage_errors(text):
    with pytest.raises(VramtopError) as err:
        parse_listen(text)
    assert err.value.exit_code == 2


# -- a hung NVML ---------------------------------------------------------------------------------

def test_a_hung_nvml_gives_up_zero_within_the_deadline_and_keeps_serving(fake_pynvml):
    from vramtop.sources.hostinfo import HostInfo
    from vramtop.sources.monitor import MonitorSource
    from vramtop.sources.nvml import NvmlSource
    from vramtop.sources.poller import DeadlineReader, Poller

    fake = fake_pynvml()
    source = MonitorSource(NvmlSource(nvml=fake, host=HostInfo(holds_gpu=lambda pid: True)), None)
    source.open()
    deadline, interval = 0.5, 0.1
    collector = SampleCollector(FrameBuilder(RiskTracker(), Options()), max_age=2 * (interval + deadline) + 1)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    poller = Poller(DeadlineReader(source, deadline), interval, deliver=collector.take, on_error=collector.failed)
    poller.start()
    try:
        assert _until(lambda: parsed(scrape(registry))["vramtop_up"] == [({}, 1.0)], 5), "never up"
        fake.hang_in.add("nvmlDeviceGetMemoryInfo")
        hung = time.monotonic()
        assert _until(lambda: parsed(scrape(registry))["vramtop_up"] == [({}, 0.0)], deadline + interval + 1.0)
        assert time.monotonic() - hung <= deadline + interval + 1.0
        started = time.monotonic()
        m = parsed(scrape(registry))  # a scrape does not wait for the hung call
        assert time.monotonic() - started < 0.5
        assert len(m["vramtop_gpu_memory_used_bytes"]) == 2  # the last figures, served as stale
    finally:
        fake.release.set()
        poller.stop()
        source.close()


def _until(condition, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def test_scrapes_from_many_threads_while_samples_arrive_never_fail():
    collector, registry = exporter(Options(per_process=True, dcgm_compat=True))
    collector.take(training_sample(100.0))
    failures: Counter[str] = Counter()

    def scrape_often() -> None:
        for _ in range(30):
            try:
                parsed(scrape(registry))
            except Exception as err:  # pragma: no cover - what the test looks for
                failures[type(err).__name__] += 1

    threads = [threading.Thread(target=scrape_often) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(30):
        collector.take(training_sample(101.0 + i, retries=i))
    for t in threads:
        t.join()
    assert not failures


def test_many_processes_with_the_agent_on_one_gpu_keep_whole_bills_within_the_bound():
    base = training_sample()
    agent = base.agents[0]
    agents = tuple(replace(agent, pid=20_000 + i, host_pid=None) for i in range(MAX_SERIES_PER_GPU + 8))
    rows = tuple(ProcessSample(a.pid, UUID0, 34 * GiB + NON_PT, "C", command="python train.py") for a in agents)
    gpu = replace(base.gpus[0], processes=rows)
    collector, registry = exporter()
    collector.take(replace(base, gpus=(gpu, *base.gpus[1:]), agents=agents))
    m = parsed(scrape(registry))
    assert len(m["vramtop_torch_memory_allocated_bytes"]) == MAX_SERIES_PER_GPU
    bills = Counter(labels["pid"] for labels, _ in m["vramtop_bill_bytes"])
    assert len(bills) == MAX_SERIES_PER_GPU and set(bills.values()) == {8}  # each bill whole
    dropped = {labels["metric"]: v for labels, v in m["vramtop_export_dropped_series_total"]}
    assert dropped["vramtop_torch_memory_allocated_bytes"] == 8 and dropped["vramtop_bill_bytes"] == 8 * 8


def test_the_command_refuses_a_bad_listen_address_before_touching_nvml(capsys):
    from vramtop.cli import main

    assert main(["export", "--listen", "9400"]) == 2
    assert "--listen wants HOST:PORT" in capsys.readouterr().err
