"""The NVML fault matrix of bench/nvml_faults.py, through the real UI with FakeNvml: every NVML
error code in every read, a hung read, the library vanishing mid-run (and coming back hung in
nvmlInit or the device count), hangs at start-up. Behaviour only: the message is on screen,
stale data is marked, every key is handled while NVML fails, the monitor recovers when NVML
does. (The timings are the benchmark's, bench/RESULTS.md.)"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pynvml
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import nvml_faults as nf

from tests.fakes.fake_nvml import two_gpu_box
from vramtop.errors import EXIT_NO_DRIVER, EXIT_NVML, VramtopError
from vramtop.sources.hostinfo import HostInfo
from vramtop.sources.nvml import NvmlSource, describe_nvml_error

DEADLINE = 0.3


@pytest.fixture(scope="module")
def outcomes():
    matrix = nf.faults()
    results = asyncio.run(nf.run_matrix(matrix, interval=0.05, deadline=DEADLINE, timeout=10))
    return {o.name: o for o in results}


def test_every_error_code_in_reads_is_shown_on_the_gpu_and_the_monitor_recovers(outcomes):
    for code in nf.CODES:
        o = outcomes[f"{nf.code_name(code)} ({code}) in every read"]
        assert o.error is None, o
        assert "!" in o.messages[0] and nf._shown(code) in o.messages[0], o
        assert o.keys_ms and o.keys_handled, o
        assert o.recovered_s is not None, o


def test_a_hung_read_marks_the_data_stale_keeps_the_keys_and_recovers(outcomes):
    o = outcomes["a read hangs (memory info)"]
    assert o.error is None and o.stale_marked == [True] and "driver hung?" in o.messages[0], o
    assert o.keys_handled and o.recovered_s is not None, o


@pytest.mark.parametrize("name", ["the library vanishes mid-run", "… and comes back hung in nvmlInit",
                                  "… and comes back hung in nvmlDeviceGetCount"])
def test_a_vanished_library_is_said_and_initialised_again_when_it_is_back(outcomes, name):
    o = outcomes[name]
    assert o.error is None, o
    assert "driver not found" in o.messages[0] and all(o.stale_marked), o
    assert o.keys_handled and o.recovered_s is not None, o


def test_hangs_at_start_end_with_a_clear_message():
    for row in nf.startup_hangs(DEADLINE):
        assert row["exit_code"] == EXIT_NVML and "did not answer" in row["message"], row


def source(fake):
    return NvmlSource(nvml=fake, host=HostInfo(holds_gpu=lambda pid: True))


def test_a_passing_failure_of_memory_v2_does_not_downgrade_to_v1_for_good():
    fake = two_gpu_box()
    nvml = source(fake)
    fake.fail["nvmlDeviceGetMemoryInfo"] = pynvml.NVML_ERROR_NOT_SUPPORTED  # v1 fails too: no old driver
    assert nvml.read().gpus[0].error
    fake.fail.clear()
    assert nvml.read().gpus[0].memory_reserved == fake.gpus[0].reserved


def test_a_driver_without_memory_v2_still_reads_v1():
    fake = two_gpu_box(memory_v2=False)
    gpu = source(fake).read().gpus[0]
    assert gpu.error is None and gpu.memory_reserved is None and gpu.memory_total == fake.gpus[0].total


def test_the_source_initialises_nvml_again_after_the_library_vanished():
    fake = two_gpu_box()
    nvml = source(fake)
    nvml.read()
    fake.vanish()
    assert all(g.error for g in nvml.read().gpus)
    with pytest.raises(VramtopError, match="driver not found") as gone:
        nvml.read()
    assert gone.value.exit_code == EXIT_NO_DRIVER
    fake.come_back()
    assert not any(g.error for g in nvml.read().gpus)
    assert fake.calls["nvmlInit"] == 3  # the first, the failed one, the one that mended it


def test_codes_nvidia_ml_py_has_no_words_for_are_named():
    assert describe_nvml_error(pynvml.NVMLError(pynvml.NVML_ERROR_GPU_NOT_FOUND)) == "NVML error: GpuNotFound (code 28)"
