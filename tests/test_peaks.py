"""The bill at the allocator's peak: the pure arithmetic (agent/_peaks.py), and the agent's hooks
following real (CPU) torch through a step whose fake allocator spikes in backward."""

from __future__ import annotations

import time

import pytest

from tests.fakes.fake_cuda import FakeCudaTorch
from vramtop.agent._peaks import (
    Counted,
    Counters,
    Reading,
    close_measured_step,
    close_step,
    estimate,
    lowest_recent,
    step_peak,
)
from vramtop.agent._runtime import Agent
from vramtop.model import BACKWARD, BETWEEN_STEPS, FORWARD, LOSS, OPTIMIZER

MiB = 1 << 20
P, S = 100 * MiB, 200 * MiB  # parameters, optimizer state


def reading(phase, peak, current=0, grads=0, kept=0):
    return Reading(phase, {0: peak}, {0: current}, {0: grads}, {0: kept})


def test_a_peak_in_backward_counts_the_gradients_that_existed_then_and_not_the_kept_outputs():
    # Forward start: parameters, state, 30 MiB of the previous step's logits still held by the
    # loop (they die when it rebinds them after the forward), 10 MiB of inputs.
    readings = [
        reading(BETWEEN_STEPS, peak=900 * MiB, current=P + S + 40 * MiB, kept=30 * MiB),
        reading(FORWARD, peak=900 * MiB, current=800 * MiB, kept=30 * MiB),
        reading(LOSS, peak=1000 * MiB, kept=0),
        reading(BACKWARD, peak=1100 * MiB, grads=0),  # the peak: before any gradient landed
        reading(BACKWARD, peak=1100 * MiB, grads=50 * MiB),
        reading(BACKWARD, peak=1100 * MiB, grads=100 * MiB),
        reading(OPTIMIZER, peak=1100 * MiB, grads=100 * MiB),
    ]
    (bill,) = close_step(readings, {0: 900 * MiB}, step=7, counted={0: Counted(P, 0, 0, S)},
                         optimizer_stepped=True).values()
    assert (bill.phase, bill.step, bill.allocated) == (BACKWARD, 7, 1100 * MiB)
    assert bill.gradients == 0 and bill.optimizer_state == S and bill.measured
    assert bill.other_persistent == 10 * MiB  # the inputs; the old logits were gone by then


def test_a_peak_in_forward_keeps_the_previous_outputs_and_grads_of_accumulation():
    readings = [
        reading(BETWEEN_STEPS, peak=500 * MiB, current=P + S + P + 30 * MiB, grads=P, kept=30 * MiB),
        reading(FORWARD, peak=2000 * MiB, current=900 * MiB, grads=P, kept=30 * MiB),
        reading(LOSS, peak=2000 * MiB, grads=P, kept=0),
    ]
    (bill,) = close_step(readings, {0: 500 * MiB}, step=3, counted={0: Counted(P, 0, 0, S)},
                         optimizer_stepped=True).values()
    assert bill.phase == FORWARD and bill.gradients == P and bill.other_persistent == 30 * MiB


def test_the_first_step_has_no_optimizer_state_until_its_optimizer_step():
    counted = {0: Counted(P, 0, 0, S)}
    in_backward = [reading(BETWEEN_STEPS, 0, current=P), reading(FORWARD, 600 * MiB), reading(BACKWARD, 900 * MiB)]
    (bill,) = close_step(in_backward, {0: P}, step=1, counted=counted, optimizer_stepped=False).values()
    assert bill.optimizer_state == 0 and bill.other_persistent == 0
    # Adam creates its state in its first step: a peak there has it.
    in_optimizer = [*in_backward, reading(BACKWARD, 900 * MiB, grads=P), reading(OPTIMIZER, 1000 * MiB, grads=P)]
    (bill,) = close_step(in_optimizer, {0: P}, step=1, counted=counted, optimizer_stepped=False).values()
    assert bill.phase == OPTIMIZER and bill.optimizer_state == S and bill.gradients == P


def test_no_bill_without_a_rise_and_no_phase_for_a_rise_before_the_first_reading():
    flat = [reading(BETWEEN_STEPS, 900 * MiB), reading(FORWARD, 900 * MiB), reading(BACKWARD, 900 * MiB)]
    assert close_step(flat, {0: 900 * MiB}, step=2, counted={}, optimizer_stepped=True) == {}
    # Without an anchor (the step before was not measured) a rise before the forward is not placed.
    assert close_step(flat, {}, step=2, counted={}, optimizer_stepped=True) == {}
    assert close_step([], {}, step=2, counted={}, optimizer_stepped=True) == {}


def test_an_unmeasured_rise_is_an_estimate_from_the_last_measured_peak():
    readings = [reading(BETWEEN_STEPS, 0, current=P + S), reading(FORWARD, 800 * MiB),
                reading(BACKWARD, 900 * MiB, grads=0)]
    (last,) = close_step(readings, {0: 0}, step=2, counted={0: Counted(P, 0, 0, S)}, optimizer_stepped=True).values()
    later = estimate(last, 950 * MiB, 40, Counted(P, 0, 0, S), True, 5 * MiB)
    assert (later.phase, later.gradients, later.allocated, later.step) == (BACKWARD, 0, 950 * MiB, 40)
    assert not later.measured and later.basis_step == 2 and later.other_persistent == 5 * MiB
    assert estimate(later, 990 * MiB, 41, Counted(P, 0, 0, S), True, 0).basis_step == 2


def test_a_step_whose_allocator_peak_rose_has_that_peak_exactly():
    before = Counters(allocated=300 * MiB, reserved=400 * MiB, allocated_peak=900 * MiB, reserved_peak=1000 * MiB)
    after = Counters(allocated=310 * MiB, reserved=400 * MiB, allocated_peak=950 * MiB, reserved_peak=1000 * MiB)
    peak = step_peak(12, steps=3, duration=0.6, before=before, after=after,
                     sampled_allocated=700 * MiB, sampled_reserved=1100 * MiB)
    assert (peak.step, peak.steps, peak.duration, peak.persistent) == (12, 3, 0.6, 310 * MiB)
    assert peak.exact and peak.peak_allocated == 950 * MiB
    # The reserved peak did not rise: the highest reserved figure seen is all that is known.
    assert peak.peak_reserved == 1100 * MiB


def test_a_step_whose_peak_did_not_rise_has_the_highest_figure_seen_as_a_lower_bound():
    before = Counters(allocated=500 * MiB, reserved=600 * MiB, allocated_peak=900 * MiB, reserved_peak=1000 * MiB)
    after = Counters(allocated=300 * MiB, reserved=700 * MiB, allocated_peak=900 * MiB, reserved_peak=1200 * MiB)
    sampled = step_peak(5, 1, 0.1, before, after, sampled_allocated=800 * MiB, sampled_reserved=0)
    assert not sampled.exact and sampled.peak_allocated == 800 * MiB  # the sampler saw more than either read
    assert sampled.peak_reserved == 1200 * MiB  # the reserved peak rose: exact
    unseen = step_peak(5, 1, 0.1, before, after, sampled_allocated=0, sampled_reserved=0)
    assert unseen.peak_allocated == 500 * MiB  # the read before the step held more than the one after


def test_a_measured_step_leaves_its_residual_and_the_kept_outputs_that_make_up_the_bill():
    readings = [
        reading(BETWEEN_STEPS, peak=900 * MiB, current=P + S + 40 * MiB, kept=30 * MiB),
        reading(FORWARD, peak=1200 * MiB, current=900 * MiB, kept=30 * MiB),
        reading(BACKWARD, peak=1100 * MiB),  # a lower figure: peaks are taken as read
    ]
    (closed,) = close_measured_step(readings, {0: 900 * MiB}, step=4, counted={0: Counted(P, 0, 0, S)},
                                    optimizer_stepped=True).values()
    assert closed.highest_peak == 1200 * MiB
    assert closed.residual == 10 * MiB  # the inputs: allocated at the start, minus what is counted and kept
    assert closed.bill is not None and closed.bill.phase == FORWARD
    assert closed.kept == 30 * MiB  # the old logits, alive at a peak in the forward
    assert closed.residual + closed.kept == closed.bill.other_persistent


def test_a_measured_step_without_a_rise_leaves_a_residual_and_no_bill():
    flat = [reading(BETWEEN_STEPS, 900 * MiB, current=P + 20 * MiB), reading(FORWARD, 900 * MiB)]
    (closed,) = close_measured_step(flat, {0: 900 * MiB}, step=2, counted={0: Counted(P)},
                                    optimizer_stepped=True).values()
    assert (closed.bill, closed.kept, closed.residual, closed.highest_peak) == (None, 0, 20 * MiB, 900 * MiB)
    assert close_measured_step([], {}, step=2, counted={}, optimizer_stepped=True) == {}


def test_what_persists_now_is_the_lowest_of_the_recent_boundaries():
    assert lowest_recent([]) is None
    assert lowest_recent([(4, 300 * MiB), (5, 250 * MiB), (6, 400 * MiB)]) == (6, 250 * MiB)



def rounded(nbytes: int) -> int:
    return -(-nbytes // 512) * 512


def test_the_agent_places_a_backward_spike_in_backward_with_the_state_adam_had(tmp_path, monkeypatch):
    """Real CPU torch: a model, AdamW, autograd; the fake allocator follows what a GPU's would
    do (activations in forward, a temporary at the start of backward, Adam's state created in
    the first optimizer step). The agent's hooks must place the peak and count what existed."""
    torch = pytest.importorskip("torch")  # only here: the arithmetic above is tested without it
    fake = FakeCudaTorch(torch)
    alloc = fake.allocator
    agent = Agent(interval=0.02, directory=tmp_path / "run", torch=fake, device_type="cpu")
    agent.start()
    try:
        ACT, TEMP = 100 * MiB, 60 * MiB
        inner = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64))
        params = sum(rounded(p.numel() * 4) for p in inner.parameters())
        state = sum(2 * rounded(p.numel() * 4) + 512 for p in inner.parameters())  # exp_avg, exp_avg_sq, step
        base = {"now": params}
        alloc.set(params, params + 512 * MiB)
        fake.initialized = True
        deadline = time.monotonic() + 10
        while not agent.active and time.monotonic() < deadline:
            time.sleep(0.02)

        class Spike(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                alloc.set(base["now"] + ACT)  # activations saved for backward
                return x.clone()

            @staticmethod
            def backward(ctx, grad):
                alloc.set(base["now"] + ACT + TEMP)  # a temporary on top of them: the step's peak
                alloc.set(base["now"] + params)  # activations freed, gradients written
                return grad

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                return Spike.apply(self.inner(x))

        net = Net()
        opt = torch.optim.AdamW(net.parameters(), foreach=False)
        opt.register_step_post_hook(lambda *a: alloc.set(base["now"] + params + state))  # Adam's state
        x = torch.randn(32, 64)
        peaks = []
        for _ in range(3):
            net(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            base["now"] = params + state
            alloc.set(base["now"])
            peaks.append(agent._devices.states[0].peak)
        first, second, third = peaks
        assert first is not None and (first.step, first.phase, first.measured) == (1, BACKWARD, True)
        assert first.optimizer_state == 0 and first.gradients == 0 and first.other_persistent == 0
        assert first.parameters_trainable == params
        assert first.allocated - params == ACT + TEMP  # what the bill derives as activations
        assert second is not None and (second.step, second.phase) == (2, BACKWARD)
        assert second.optimizer_state == state and second.gradients == 0 and second.other_persistent == 0
        assert second.allocated - params - state == ACT + TEMP
        assert third == second  # the peak did not rise again: the bill stays the one of step 2
        # The steady state pays nothing: between measurements the hooks are off the model.
        for _ in range(3):
            net(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        assert not agent._phases.armed and not net._forward_pre_hooks and not net._forward_hooks
        # A measurement falls due (the clock moves on a minute): the hooks go back on at the next
        # step boundary; the step after remembers its outputs, the one after that is measured,
        # and its higher peak is billed.
        monotonic = time.monotonic
        monkeypatch.setattr(time, "monotonic", lambda: monotonic() + 60.0)
        for extra in (0, 0, 100 * MiB):  # a bigger temporary than the one before, in the loss
            def spike_more(grad, extra=extra):
                alloc.set(alloc.allocated + extra)
                return grad
            out = net(x)
            out.register_hook(spike_more)
            out.pow(2).mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            alloc.set(base["now"])
        later = agent._devices.states[0].peak
        assert later.step == 9 and later.measured and later.phase in (LOSS, BACKWARD)
        assert later.allocated == params + state + ACT + 100 * MiB
        assert fake.forbidden_calls == []
    finally:
        agent.stop()


def test_a_peak_that_rises_every_step_is_measured_as_often_as_the_budget_allows(tmp_path, monkeypatch):
    """A measured step reads the allocator at every gradient: on a deep model that costs
    milliseconds. A peak that rises every step (a leak) once had every step measured; now the
    steps after the first few are measured only as the budget allows, the peaks in between
    estimated from the last measured one, and the next measured step bills the peak exactly."""
    torch = pytest.importorskip("torch")
    from tests.waiting import wait_for

    fake = FakeCudaTorch(torch)
    alloc = fake.allocator
    agent = Agent(interval=0.05, directory=tmp_path / "run", torch=fake, device_type="cpu")
    agent.start()
    try:
        alloc.set(10 * MiB, 1024 * MiB)
        fake.initialized = True
        wait_for(lambda: agent.active)
        model = torch.nn.Sequential(*[torch.nn.Linear(32, 32) for _ in range(8)])  # 16 gradients
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x = torch.randn(4, 32)
        alloc.read_delay = 0.001  # ~20 readings a measured step: ~20 ms, 20 s of budget (0.1%)
        bills = []

        def step(number: int) -> None:
            out = model(x)
            out.register_hook(lambda grad: alloc.set(100 * MiB + number * MiB) or grad)  # the peak rises
            out.pow(2).mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            alloc.set(10 * MiB)
            bills.append(agent._devices.states[0].peak)
            time.sleep(0.04)

        for number in range(1, 31):  # ~1.5 s: boundary reads (1 s apart at 1 ms a read, 0.1%) see the rises
            step(number)
        measured = sorted({b.step for b in bills if b is not None and b.measured})
        assert measured == [1, 2, 3, 4]  # the first steps; every one of the 30 before the budget
        last = bills[-1]
        assert not last.measured and last.basis_step == 4 and last.allocated > 104 * MiB
        assert last.phase == bills[3].phase  # estimated from the last measured peak
        # A minute later the budget allows a measurement: the hooks go on at the next boundary,
        # the step after remembers its outputs, and the one after that is billed exactly.
        monotonic = time.monotonic
        monkeypatch.setattr(time, "monotonic", lambda: monotonic() + 60.0)
        for number in range(31, 34):
            step(number)
        exact = bills[-1]
        assert exact.measured and exact.step == 33 and exact.allocated == 133 * MiB
        assert exact.phase in (LOSS, BACKWARD)
    finally:
        agent.stop()
