"""Where in a step the allocator's peak was reached, and what it was made of then.

Pure arithmetic over readings taken by the hooks (_phases.py): no torch here, so it is tested
without one. A reading is the allocator's peak and current counters at a phase boundary, with
the gradient bytes that existed and the previous step's outputs still alive at that moment.
The peak counter only grows (the agent never resets it), so the last interval between two
readings in which it rose holds the peak; the phase of that interval is the phase of the peak.

What persists into the step ("other persistent") is measured at the forward start: allocated
then, minus parameters, buffers, optimizer state, gradients and the previous step's outputs
that the loop still holds (those die when the loop rebinds its variables after the forward, so
they count at a peak in the forward only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vramtop.model import BETWEEN_STEPS, FORWARD, OPTIMIZER, PeakBill, StepPeak


@dataclass(frozen=True)
class Reading:
    """The allocator and the counted tensors at the end of an interval of ``phase``."""

    phase: str  # the phase of the interval that ends here
    peak: Mapping[int, int]  # device -> allocated_bytes.all.peak
    current: Mapping[int, int]  # device -> allocated_bytes.all.current
    gradients: Mapping[int, int]  # device -> gradient bytes existing now
    kept: Mapping[int, int]  # device -> bytes of the previous step's outputs still alive


@dataclass(frozen=True)
class Counted:
    """What the census counted on one device (the tensors that do not change within a step)."""

    trainable: int = 0
    frozen: int = 0
    buffers: int = 0
    optimizer_state: int = 0


def close_step(readings: Sequence[Reading], anchor: Mapping[int, int], step: int,
               counted: Mapping[int, Counted], optimizer_stepped: bool) -> dict[int, PeakBill]:
    """The bill at the peak for each device whose peak counter rose during these readings.

    ``readings`` start at the forward start (its interval is "between steps", from ``anchor``,
    the peak counters at the end of the previous measured step; leave ``anchor`` empty when
    that step was not measured); ``step`` numbers this step from 1; ``optimizer_stepped`` says
    whether an optimizer step ran before this one (Adam creates its state in its first step:
    before it, the state does not exist).
    """
    if not readings:
        return {}
    first = readings[0]
    out = {}
    for device in first.peak:
        rise = _last_rise(readings, anchor, device)
        if rise is None:
            continue
        at = readings[rise]
        before = readings[rise - 1] if rise > 0 else at
        c = counted.get(device, Counted())
        state_before = c.optimizer_state if optimizer_stepped else 0
        state = c.optimizer_state if at.phase == OPTIMIZER else state_before
        kept_then = first.kept.get(device, 0) if at.phase in (BETWEEN_STEPS, FORWARD) else at.kept.get(device, 0)
        out[device] = PeakBill(
            allocated=at.peak[device],
            step=step,
            phase=at.phase,
            parameters_trainable=c.trainable,
            parameters_frozen=c.frozen,
            buffers=c.buffers,
            gradients=before.gradients.get(device, 0),
            optimizer_state=state,
            other_persistent=residual(first, device, c, state_before) + kept_then,
        )
    return out


@dataclass(frozen=True)
class ClosedStep:
    """What one measured step leaves on a device."""

    highest_peak: int  # the highest allocator peak its readings saw
    residual: int  # memory from before the step that no census category explains
    bill: PeakBill | None = None  # the bill at the peak, when the peak rose during the step
    kept: int = 0  # with a bill: the previous step's outputs alive at the peak


def close_measured_step(readings: Sequence[Reading], anchor: Mapping[int, int], step: int,
                        counted: Mapping[int, Counted], optimizer_stepped: bool) -> dict[int, ClosedStep]:
    """Everything a measured step leaves, per device its readings cover (arguments as for
    close_step). The bill's other persistent memory is the residual plus the outputs kept:
    the residual is measured again at every measured step, the kept outputs only at a peak."""
    if not readings:
        return {}
    bills = close_step(readings, anchor, step, counted, optimizer_stepped)
    first = readings[0]
    out = {}
    for device in first.peak:
        c = counted.get(device, Counted())
        rest = residual(first, device, c, c.optimizer_state if optimizer_stepped else 0)
        bill = bills.get(device)
        out[device] = ClosedStep(
            highest_peak=max(r.peak.get(device, 0) for r in readings),
            residual=rest,
            bill=bill,
            kept=max(0, bill.other_persistent - rest) if bill is not None else 0,
        )
    return out


def residual(start: Reading, device: int, c: Counted, optimizer_state: int) -> int:
    """Memory held from before the step that no census category explains: inputs, caches the
    program keeps, leaks (the previous step's outputs apart)."""
    counted = c.trainable + c.frozen + c.buffers + optimizer_state + start.gradients.get(device, 0)
    return max(0, start.current.get(device, 0) - counted - start.kept.get(device, 0))


def _last_rise(readings: Sequence[Reading], anchor: Mapping[int, int], device: int) -> int | None:
    previous = anchor.get(device)
    rise = None
    for i, r in enumerate(readings):
        value = r.peak.get(device)
        if value is None:
            continue
        if previous is not None and value > previous:
            rise = i
        previous = value
    return rise


def estimate(last: PeakBill, allocated: int, step: int, counted: Counted, optimizer_stepped: bool,
             other_persistent: int) -> PeakBill:
    """The bill at a peak reached in a step that was not measured: the phase and gradients of
    the last measured peak (``last``), today's census, and ``other_persistent`` as last measured."""
    state = counted.optimizer_state if optimizer_stepped or last.phase == OPTIMIZER else 0
    return PeakBill(
        allocated=allocated,
        step=step,
        phase=last.phase,
        parameters_trainable=counted.trainable,
        parameters_frozen=counted.frozen,
        buffers=counted.buffers,
        gradients=last.gradients,
        optimizer_state=state,
        other_persistent=other_persistent,
        measured=False,
        basis_step=last.step if last.measured else last.basis_step,
    )


@dataclass(frozen=True)
class Counters:
    """One device's allocator counters, read at an optimizer step boundary."""

    allocated: int
    reserved: int
    allocated_peak: int
    reserved_peak: int


def step_peak(step: int, steps: int, duration: float, before: Counters, after: Counters,
              sampled_allocated: int, sampled_reserved: int) -> StepPeak:
    """The peak of the ``steps`` optimizer steps that ended at ``step``, between two boundary
    reads (``before``, ``after``), ``duration`` seconds apart; ``sampled_*`` are the highest the
    sampler saw in between. The allocator's peak never goes down (the agent never resets it):
    if it rose, the new value is these steps' true peak (exact); otherwise the highest figure
    seen is a lower bound."""
    exact = after.allocated_peak > before.allocated_peak
    sampled_a = max(sampled_allocated, after.allocated, before.allocated)
    sampled_r = max(sampled_reserved, after.reserved, before.reserved)
    return StepPeak(
        step=step,
        duration=duration,
        peak_allocated=after.allocated_peak if exact else sampled_a,
        peak_reserved=after.reserved_peak if after.reserved_peak > before.reserved_peak else sampled_r,
        persistent=after.allocated,
        exact=exact,
        steps=steps,
    )


def lowest_recent(recent: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    """(the last step, the lowest allocated) of recent step boundaries (step, allocated): what
    persists now, one step's big outputs aside."""
    if not recent:
        return None
    return recent[-1][0], min(allocated for _, allocated in recent)
