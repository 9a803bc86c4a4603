"""The whole chain on the CPU: a training loop whose persistent memory grows, the real agent
and socket, the monitor's sources, and the risk rules raising a leak warning in time.

Fakes: the CUDA allocator (FakeCudaTorch) and the driver (FakeNvml); everything between is real.
"""

from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch")

from tests.fakes.fake_cuda import FakeCudaTorch  # noqa: E402
from tests.fakes.fake_nvml import two_gpu_box  # noqa: E402
from vramtop.agent._runtime import Agent  # noqa: E402
from vramtop.analysis.risk import RiskTracker, Thresholds  # noqa: E402
from vramtop.sources.agent import AgentSource, MonitorSource  # noqa: E402
from vramtop.sources.hostinfo import HostInfo  # noqa: E402
from vramtop.sources.nvml import NvmlSource  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30


def test_a_growing_persistent_memory_is_flagged_as_a_leak_with_a_time_to_oom(tmp_path):
    fake = FakeCudaTorch(torch)
    fake.initialized = True
    fake.allocator.set(4 * GiB, 6 * GiB)
    agent = Agent(interval=0.02, directory=tmp_path / "run", torch=fake, device_type="cpu")
    agent.start()
    source = MonitorSource(NvmlSource(nvml=two_gpu_box(), host=HostInfo(holds_gpu=lambda pid: True)),
                           AgentSource(tmp_path / "run"))
    # The default rules want minutes of history; the same rules, on a faster clock.
    tracker = RiskTracker(Thresholds(leak_warmup_steps=5, leak_point_gap=0.05, leak_min_span=1.0,
                                     leak_min_rate=1.0))
    model = torch.nn.Linear(64, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 64)
    leak = None
    try:
        source.open()
        deadline = time.monotonic() + 30
        step = 0
        while time.monotonic() < deadline and leak is None:
            step += 1
            fake.allocator.set(4 * GiB + 8 * GiB)  # the step's activations
            model(x).sum().backward()
            fake.allocator.set(4 * GiB + step * 64 * MiB)  # what stays after the step: 64 MiB more each time
            opt.step()
            opt.zero_grad()
            time.sleep(0.03)
            if step % 3 == 0:
                warnings = tracker.update(source.read())
                leak = next((w for w in warnings if w.kind == "leak"), None)
        assert leak is not None, "no leak warning"
        assert leak.evidence["per_step"] == pytest.approx(64 * MiB, rel=0.15)
        assert leak.evidence["seconds_to_oom"] > 0 and "steps" in leak.sentence
        assert "list" in leak.action  # what to look for: tensors kept across steps
    finally:
        source.close()
        agent.stop()


def test_a_flat_run_through_the_same_chain_raises_no_leak(tmp_path):
    fake = FakeCudaTorch(torch)
    fake.initialized = True
    agent = Agent(interval=0.02, directory=tmp_path / "run", torch=fake, device_type="cpu")
    agent.start()
    source = MonitorSource(NvmlSource(nvml=two_gpu_box(), host=HostInfo(holds_gpu=lambda pid: True)),
                           AgentSource(tmp_path / "run"))
    tracker = RiskTracker(Thresholds(leak_warmup_steps=5, leak_point_gap=0.05, leak_min_span=1.0,
                                     leak_min_rate=1.0))
    model = torch.nn.Linear(64, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 64)
    kinds: set[str] = set()
    try:
        source.open()
        for step in range(120):
            fake.allocator.set(12 * GiB)
            model(x).sum().backward()
            fake.allocator.set(4 * GiB + (step % 3) * MiB)  # steady, with allocator jitter
            opt.step()
            opt.zero_grad()
            time.sleep(0.03)
            if step % 3 == 0:
                kinds |= {w.kind for w in tracker.update(source.read())}
        assert "leak" not in kinds
    finally:
        source.close()
        agent.stop()
