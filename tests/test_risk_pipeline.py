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
from vramtop.analysis.risk import RiskTracker  # noqa: E402
from vramtop.analysis.thresholds import Thresholds  # noqa: E402
from vramtop.sources.agent import AgentSource  # noqa: E402
from vramtop.sources.hostinfo import HostInfo  # noqa: E402
from vramtop.sources.monitor import MonitorSource  # noqa: E402
from vramtop.sources.nvml import NvmlSource  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30


class Chain:
    """A training loop with the agent, and the monitor's side reading it through the socket."""

    def __init__(self, directory) -> None:
        self.fake = FakeCudaTorch(torch)
        self.fake.initialized = True
        self.agent = Agent(interval=0.02, directory=directory, torch=self.fake, device_type="cpu")
        self.source = MonitorSource(NvmlSource(nvml=two_gpu_box(), host=HostInfo(holds_gpu=lambda pid: True)),
                                    AgentSource(directory))
        # The default rules want minutes of history; the same rules, on a faster clock.
        self.tracker = RiskTracker(Thresholds(leak_warmup_steps=5, leak_point_gap=0.05, leak_min_span=1.0,
                                              leak_min_rate=1.0))
        self.model = torch.nn.Linear(64, 64)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.x = torch.randn(8, 64)
        self.agent.start()
        self.source.open()

    def step(self, peak: int, persistent: int) -> None:
        """One optimizer step: ``peak`` bytes allocated in it, ``persistent`` left after it."""
        self.fake.allocator.set(peak)
        self.model(self.x).sum().backward()
        self.fake.allocator.set(persistent)
        self.opt.step()
        self.opt.zero_grad()
        time.sleep(0.03)

    def warnings(self):  # type: ignore[no-untyped-def]
        return self.tracker.update(self.source.read())

    def close(self) -> None:
        self.source.close()
        self.agent.stop()


@pytest.fixture
def chain(tmp_path):
    c = Chain(tmp_path / "run")
    yield c
    c.close()


def test_a_growing_persistent_memory_is_flagged_as_a_leak_with_a_time_to_oom(chain):
    leak = None
    deadline = time.monotonic() + 30
    step = 0
    while time.monotonic() < deadline and leak is None:
        step += 1
        # 64 MiB more stays allocated after every step.
        chain.step(peak=12 * GiB, persistent=4 * GiB + step * 64 * MiB)
        if step % 3 == 0:
            leak = next((w for w in chain.warnings() if w.kind == "leak"), None)
    assert leak is not None, "no leak warning"
    assert leak.evidence["per_step"] == pytest.approx(64 * MiB, rel=0.15)
    assert leak.evidence["seconds_to_oom"] > 0 and "steps" in leak.sentence
    assert "list" in leak.action  # what to look for: tensors kept across steps


def test_a_flat_run_through_the_same_chain_raises_no_leak(chain):
    kinds: set[str] = set()
    for step in range(120):
        chain.step(peak=12 * GiB, persistent=4 * GiB + (step % 3) * MiB)  # steady, with allocator jitter
        if step % 3 == 0:
            kinds |= {w.kind for w in chain.warnings()}
    assert "leak" not in kinds
