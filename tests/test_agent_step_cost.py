"""What the agent asks of a training loop per step, counted rather than timed: calls from torch
into the agent, hooks left on the model and its parameters, allocator reads. Real CPU torch,
a fake CUDA allocator (FakeCudaTorch)."""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tests.waiting import wait_for  # noqa: E402
from vramtop.agent import _boundaries, _phases  # noqa: E402
from vramtop.agent._runtime import Agent  # noqa: E402
from vramtop.codec import to_dict  # noqa: E402

MiB = 1 << 20
AGENT_DIR = str(Path(_phases.__file__).parent)


@pytest.fixture
def agent(tmp_path, fake_torch):
    a = Agent(interval=0.05, directory=tmp_path / "run", torch=fake_torch, device_type="cpu")
    a.start()
    fake_torch.initialized = True
    wait_for(lambda: a.active)
    yield a
    a.stop()


def deep_mlp(depth: int):
    model = torch.nn.Sequential(*[layer for _ in range(depth) for layer in (torch.nn.Linear(16, 16), torch.nn.GELU())])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(4, 16)

    def step() -> None:
        model(x).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step


class EntryCounter:
    """Calls from outside the agent into its code on this thread (torch calling a hook), per step."""

    def __init__(self) -> None:
        self.entries = 0

    def __call__(self, frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(AGENT_DIR):
            caller = frame.f_back
            if caller is None or not caller.f_code.co_filename.startswith(AGENT_DIR):
                self.entries += 1

    def per_step(self, step, steps: int) -> list[int]:
        counts = []
        sys.setprofile(self)
        try:
            for _ in range(steps):
                self.entries = 0
                step()
                counts.append(self.entries)
        finally:
            sys.setprofile(None)
        return counts


@pytest.mark.parametrize("depth", [8, 50])
def test_after_warm_up_a_step_calls_into_the_agent_once_whatever_the_depth(agent, depth):
    # The optimizer-step hook is the one entry point in the steady state: no module hooks
    # (discovery removed its own), no phase hooks between measurements, no gradient hooks.
    model, step = deep_mlp(depth)
    for _ in range(12):  # discovery settles, the first four steps are measured
        step()
    started = time.monotonic()
    counts = EntryCounter().per_step(step, 60)
    elapsed = time.monotonic() - started
    assert agent.step == 72
    assert all(count >= 1 for count in counts), counts  # every step is counted
    # A measured step (one every MIN_GAP seconds at most) adds its hooks: forward pre and post,
    # the optimizer pre-hook, the output's autograd node and each gradient (CPU autograd runs
    # them on this thread); the step before it remembers the outputs (the forward hooks).
    busier = [count for count in counts if count > 1]
    assert len(busier) <= 2 * (1 + int(elapsed / _phases.MIN_GAP)), (Counter(counts), elapsed)
    gradients = sum(1 for p in model.parameters() if p.requires_grad)
    assert all(count <= 8 + gradients for count in busier), Counter(counts)
    assert not agent._discovery.watching and not agent._phases.armed
    assert all(not module._forward_pre_hooks and not module._forward_hooks for module in model.modules())
    assert all(not p._post_accumulate_grad_hooks for p in model.parameters())


def test_a_measured_step_hooks_each_gradient_once_and_no_step_after_it_keeps_those_hooks(agent, monkeypatch):
    landed = Counter()
    real = _phases.StepPhases._gradient_landed

    def counted(self, parameter):
        landed[agent._phases.step] += 1
        return real(self, parameter)

    # Before the first step: the hooks are registered with the method as it is then.
    monkeypatch.setattr(_phases.StepPhases, "_gradient_landed", counted)
    model, step = deep_mlp(25)
    for _ in range(10):
        step()
    trainable = sum(1 for p in model.parameters() if p.requires_grad)
    measured = sorted(landed)
    assert measured[:_phases.FIRST_MEASURED] == [1, 2, 3, 4]
    assert all(landed[s] == trainable for s in measured), (landed, trainable)
    assert all(not p._post_accumulate_grad_hooks for p in model.parameters())


def test_boundary_reads_of_fast_steps_are_at_least_the_gap_apart(agent, monkeypatch):
    _, step = deep_mlp(8)
    for _ in range(12):
        step()
    reads = []
    read = agent._boundaries.read

    def noted(torch, step, now, *rest):
        reads.append(now)  # the time the agent decided by
        return read(torch, step, now, *rest)

    monkeypatch.setattr(agent._boundaries, "read", noted)
    started = time.monotonic()
    steps = 0
    while time.monotonic() - started < 0.6:
        step()
        steps += 1
    assert agent.step == 12 + steps and steps > len(reads) >= 1
    gaps = [b - a for a, b in itertools.pairwise(reads)]
    assert all(gap >= _boundaries.BOUNDARY_GAP for gap in gaps), gaps


def test_a_sample_becomes_the_same_dicts_as_dataclasses_asdict(agent, fake_torch):
    # The sampler builds a monitor's message with codec.to_dict, without asdict's deep copies.
    fake_torch.allocator.free_blocks = [3 * MiB]
    _, step = deep_mlp(4)
    for _ in range(6):
        step()
    fake_torch.oom_observers[0](0, 2 << 30, 80 << 30, 1 << 20)
    sample = wait_for(lambda: (s := agent._answers.latest) and s.last_oom and s.devices[0].census and s)
    assert to_dict(sample) == dataclasses.asdict(sample)
    assert to_dict(sample.last_oom) == dataclasses.asdict(sample.last_oom)
