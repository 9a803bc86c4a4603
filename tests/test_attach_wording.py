"""What the bill says before anything is counted, for an agent started by `vramtop attach` and
for one started with the program."""

from __future__ import annotations

from dataclasses import replace

import pytest

from vramtop.model import AgentDevice, AgentSample, AllocatorStats, GpuSample, HostSample, ProcessSample, Sample
from vramtop.sinks.once import render_text

MiB = 1 << 20


def sample(attached: bool) -> Sample:
    stats = AllocatorStats(allocated=123 * MiB, reserved=256 * MiB, active=123 * MiB, requested=120 * MiB,
                           inactive_split=0, allocated_peak=300 * MiB, reserved_peak=512 * MiB,
                           num_alloc_retries=0, num_ooms=0)
    agent = AgentSample(pid=70, time=1_800_000_000.0, torch_version="2.13.0", step=0, host_pid=70,
                        devices=(AgentDevice(index=0, uuid="GPU-a", name="G", stats=stats),), attached=attached)
    gpu = GpuSample(index=0, uuid="GPU-a", name="G", memory_total=80 << 30, memory_used=1 << 30,
                    processes=(ProcessSample(pid=70, gpu_uuid="GPU-a", used_memory=800 * MiB, kind="C",
                                             command="python t.py"),))
    return Sample(time=1_800_000_001.0, host=HostSample("h", 1 << 40, 1 << 39, 7, 3), gpus=(gpu,), agents=(agent,))


@pytest.mark.parametrize(("attached", "words"), [
    (True, "Attached late: parameters, gradients and optimizer state are counted from the next optimizer step"),
    (False, "No parameters counted yet (no optimizer step or model seen)."),
])
def test_once_says_why_nothing_is_counted_yet(attached, words):
    text = render_text(sample(attached))
    assert "PID 70 torch: allocated 123 MiB" in text
    assert words in text


def test_once_says_nothing_of_it_once_the_census_exists():
    from vramtop.model import TensorCensus

    counted = sample(True)
    census = TensorCensus(parameters_trainable=4 * MiB, parameters_frozen=0, gradients=4 * MiB,
                          optimizer_state=8 * MiB, time=1_800_000_000.0, seen="1 optimizer", complete=True)
    device = replace(counted.agents[0].devices[0], census=census)
    counted = replace(counted, agents=(replace(counted.agents[0], devices=(device,)),))
    assert "Attached late" not in render_text(counted)
