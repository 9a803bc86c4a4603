"""The bill and the allocator metrics, on hand-built agent samples."""

from __future__ import annotations

from vramtop.analysis.bill import (
    bill_at_peak,
    bill_now,
    fragmentation,
    fragmentation_proxy,
    largest_fit,
    non_pytorch_of,
)
from vramtop.model import AgentDevice, AllocatorStats, StepPeak, TensorCensus

GiB = 1 << 30
MiB = 1 << 20


def stats(allocated=30 * GiB, reserved=36 * GiB, largest=None, inactive_split=0):
    return AllocatorStats(allocated=allocated, reserved=reserved, active=allocated, requested=allocated,
                          inactive_split=inactive_split, allocated_peak=40 * GiB, reserved_peak=44 * GiB,
                          num_alloc_retries=0, num_ooms=0, largest_free_block=largest)


def census(grads=1 * GiB, grads_peak=1 * GiB):
    return TensorCensus(parameters_trainable=1 * GiB, parameters_frozen=2 * GiB, gradients=grads,
                        optimizer_state=2 * GiB, time=0.0, seen="test", gradients_peak=grads_peak)


def device(**kw):
    defaults = dict(index=0, uuid="GPU-x", name="x", stats=stats(), census=census(),
                    last_step=StepPeak(step=3, duration=0.3, peak_allocated=40 * GiB, peak_reserved=44 * GiB,
                                       persistent=7 * GiB, exact=True))
    defaults.update(kw)
    return AgentDevice(**defaults)


def total(bill):
    return sum(v for _, v in bill.categories())


def test_bill_now_adds_up_to_nvml_and_derives_activations():
    bill = bill_now(device(), nvml_used=37 * GiB)
    assert total(bill) == 37 * GiB
    assert bill.cache == 6 * GiB and bill.non_pytorch == 1 * GiB
    assert bill.other_persistent == 1 * GiB  # 7 persistent - (1 + 2 + 1 + 2) counted
    assert bill.activations == 30 * GiB - 6 * GiB - 1 * GiB


def test_bill_at_peak_uses_the_allocator_peak_and_full_gradients():
    dev = device(census=census(grads=0, grads_peak=1 * GiB))  # grads freed right now
    bill = bill_at_peak(dev, nvml_used=37 * GiB)
    assert bill is not None
    assert bill.allocated == 40 * GiB and bill.reserved == 44 * GiB and bill.gradients == 1 * GiB
    assert bill.activations == 40 * GiB - 6 * GiB - 1 * GiB
    assert total(bill) == bill.total == 44 * GiB + 1 * GiB


def test_without_census_only_the_measured_categories_are_given():
    bill = bill_now(device(census=None), nvml_used=37 * GiB)
    assert bill.parameters_trainable is None and bill.activations is None
    assert bill.cache == 6 * GiB and bill.non_pytorch == 1 * GiB
    assert bill_at_peak(device(census=None, last_step=None), 37 * GiB) is None


def test_without_nvml_figure_non_pytorch_is_unknown():
    assert bill_now(device(), nvml_used=None).non_pytorch is None


def test_fragmentation_definitions():
    assert fragmentation(stats(largest=None)) is None
    assert fragmentation(stats(largest=6 * GiB)) == 0.0  # the whole cache is one block
    assert abs(fragmentation(stats(largest=GiB)) - (1 - 1 / 6)) < 1e-9
    assert fragmentation(stats(allocated=10, reserved=10, largest=0)) == 0.0  # no cache
    # The snapshot's own free total wins over the (newer) counters.
    from dataclasses import replace

    assert fragmentation(replace(stats(largest=GiB), free_in_segments=4 * GiB)) == 0.75
    assert fragmentation_proxy(stats(inactive_split=3 * GiB)) == 0.5
    assert largest_fit(stats(largest=GiB), device_free=5 * GiB) == 5 * GiB
    assert largest_fit(stats(largest=None), device_free=None) is None


def test_gradients_freed_since_the_boundary_are_not_billed_and_the_sum_still_holds():
    # Counted at the boundary: 1 GiB of gradients. Now only 5.5 GiB is allocated: params 3,
    # optimizer 2, other 0.5 leave room for 0 GiB of gradients -> they were freed.
    dev = device(stats=stats(allocated=int(5.5 * GiB), reserved=36 * GiB),
                 last_step=StepPeak(step=3, duration=0.3, peak_allocated=40 * GiB, peak_reserved=44 * GiB,
                                    persistent=int(6.5 * GiB), exact=True))
    bill = bill_now(dev, nvml_used=37 * GiB)
    assert bill.gradients == 0 and bill.activations == 0 and bill.other_persistent == GiB // 2
    assert total(bill) == 37 * GiB


def test_non_pytorch_memory_only_from_an_nvml_figure_comparable_with_the_allocator():
    s = stats(reserved=36 * GiB)
    assert non_pytorch_of(s, 36 * GiB + 600 * MiB) == 600 * MiB
    assert non_pytorch_of(s, 36 * GiB + 600 * MiB, gpu_used=40 * GiB) == 600 * MiB
    assert non_pytorch_of(s, None) is None  # NVML gave no per-process figure
    assert non_pytorch_of(s, 30 * GiB) is None  # an older process-list poll: below what is reserved
    assert non_pytorch_of(s, 37 * GiB, gpu_used=36 * GiB + 500 * MiB) is None  # more than the whole GPU uses
