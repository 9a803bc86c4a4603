"""Advice ranked from the bill: the estimates, the lever order, and what is left out."""

from __future__ import annotations

from vramtop.analysis.advice import (
    BATCH,
    CHECKPOINTING,
    EXPANDABLE,
    LEVERS,
    MIXED_PRECISION,
    OFFLOAD,
    OPTIMIZER,
    SMALLER_MODEL,
    Advice,
    Assumptions,
    ProcessFacts,
    advise,
    batch_fit,
    projected_peak,
    top_advice,
)
from vramtop.analysis.bill import Bill

MiB = 1 << 20
GiB = 1 << 30
TOTAL = 80 * GiB


def bill(params=4 * GiB, frozen=0, grads=4 * GiB, optim=8 * GiB, other=0, act=40 * GiB, cache=2 * GiB,
         non_pt=GiB, census=True):
    allocated = params + frozen + grads + optim + other + act
    reserved = allocated + cache
    if not census:
        return Bill(None, None, None, None, None, None, cache, non_pt, allocated, reserved, reserved + non_pt)
    return Bill(params, frozen, grads, optim, other, act, cache, non_pt, allocated, reserved, reserved + non_pt)


def by_lever(items):
    return {a.lever: a for a in items}


def test_batch_fit_on_a_synthetic_bill():
    # 4 + 4 + 8 GiB of model, 60 GiB of activations, 2 GiB cache, 1 GiB non-PyTorch: 79 GiB.
    b = bill(act=60 * GiB)
    assert projected_peak(b) == 79 * GiB
    # Limit 72 GiB; everything but activations is 19 GiB: 53/60 of the batch fits.
    fits = batch_fit(b, TOTAL)
    assert fits is not None and abs(fits - 53 / 60) < 1e-3
    # Another process's 10 GiB leaves less: (72 - 29) / 60.
    fits = batch_fit(b, TOTAL, others=10 * GiB)
    assert fits is not None and abs(fits - 43 / 60) < 1e-3
    # Plenty of room: the batch could grow.
    fits = batch_fit(bill(act=10 * GiB), TOTAL)
    assert fits is not None and fits > 1
    assert batch_fit(bill(census=False), TOTAL) is None


def test_batch_advice_picks_the_accumulation_that_fits():
    b = bill(act=60 * GiB)
    item = by_lever(advise(b, device_total=TOTAL, others=10 * GiB))[BATCH]
    # 72% fits: halve the micro-batch with two accumulation steps, freeing half the activations.
    assert item.saves == 30 * GiB and item.sufficient
    assert "~72%" in item.text and "halve it" in item.text and "over 2 steps" in item.text
    item = by_lever(advise(b, device_total=TOTAL, others=30 * GiB))[BATCH]
    # (72 - 49) / 60 = 38%: a third of the micro-batch, three accumulation steps.
    assert "1/3" in item.text and item.saves == 40 * GiB and item.sufficient


def test_batch_advice_when_no_batch_fits():
    b = bill(act=10 * GiB, optim=70 * GiB)  # the rest of the bill alone is past the margin
    item = by_lever(advise(b, device_total=TOTAL))[BATCH]
    assert item.sufficient is False and "No batch size" in item.text


def test_levers_come_in_the_order_to_try_them():
    b = bill(act=50 * GiB, cache=4 * GiB)
    items = advise(b, device_total=TOTAL, facts=ProcessFacts(fragmentation=0.8, world_size=8))
    assert [a.lever for a in items] == list(LEVERS)
    assert all(isinstance(a, Advice) and a.text.endswith(".") for a in items)


def test_estimates_follow_the_stated_assumptions():
    b = bill(params=4 * GiB, grads=4 * GiB, optim=8 * GiB, act=40 * GiB, cache=4 * GiB)
    items = by_lever(advise(b, device_total=TOTAL, facts=ProcessFacts(fragmentation=0.5, step_seconds=0.4)))
    assert items[MIXED_PRECISION].saves == 20 * GiB
    assert items[CHECKPOINTING].saves == int(40 * GiB * 0.6)
    assert items[OPTIMIZER].saves == 6 * GiB and "AdamW8bit" in items[OPTIMIZER].text
    assert items[OFFLOAD].saves == 8 * GiB
    # Gradients down and trainable parameters up: 8 GiB over 25 GB/s is ~344 ms.
    assert "~344 ms at 25 GB/s" in items[OFFLOAD].text and "400 ms" in items[OFFLOAD].text
    assert items[EXPANDABLE].saves == 2 * GiB
    assert items[SMALLER_MODEL].saves == 8 * GiB
    faster = by_lever(advise(b, device_total=TOTAL, assumptions=Assumptions(pcie_bandwidth=50e9)))
    assert "~172 ms at 50 GB/s" in faster[OFFLOAD].text


def test_sharding_beats_8bit_on_many_ranks_and_8bit_is_not_suggested_twice():
    b = bill(optim=16 * GiB)
    item = by_lever(advise(b, device_total=TOTAL, facts=ProcessFacts(world_size=8)))[OPTIMIZER]
    assert item.saves == 14 * GiB and "8 ranks" in item.text
    eight_bit = ProcessFacts(optimizer="1 optimizer (AdamW8bit); 1 model (Llama)")
    items = by_lever(advise(b, device_total=TOTAL, facts=eight_bit))
    assert OPTIMIZER not in items and OFFLOAD in items


def test_expandable_segments_advice_is_suppressed_when_they_are_on():
    b = bill(cache=10 * GiB)
    assert EXPANDABLE in by_lever(advise(b, device_total=TOTAL, facts=ProcessFacts(fragmentation=0.9)))
    expandable = ProcessFacts(fragmentation=0.9, expandable_segments=True)
    assert EXPANDABLE not in by_lever(advise(b, device_total=TOTAL, facts=expandable))
    # Unknown fragmentation: the whole cache, said to be an upper bound.
    item = by_lever(advise(b, device_total=TOTAL))[EXPANDABLE]
    assert item.saves == 10 * GiB and "upper bound" in item.assumption


def test_only_meaningful_savings_are_shown():
    b = bill(params=100 * MiB, grads=100 * MiB, optim=200 * MiB, act=500 * MiB, cache=50 * MiB)
    items = by_lever(advise(b, device_total=TOTAL))
    # 1% of 80 GiB is 819 MiB: nothing here frees that much.
    assert items == {}
    small_gpu = by_lever(advise(b, device_total=8 * GiB))
    # On 8 GiB the floor is 256 MiB: only checkpointing (60% of 500 MiB) clears it.
    assert set(small_gpu) == {CHECKPOINTING}


def test_mixed_precision_is_conditional_until_the_agent_can_tell():
    b = bill(act=40 * GiB)
    item = by_lever(advise(b, device_total=TOTAL))[MIXED_PRECISION]
    assert item.conditional and item.text.startswith("If the model trains in fp32")
    item = by_lever(advise(b, device_total=TOTAL, facts=ProcessFacts(mixed_precision=False)))[MIXED_PRECISION]
    assert not item.conditional and item.text.startswith("Run the forward pass")
    assert MIXED_PRECISION not in by_lever(advise(b, device_total=TOTAL, facts=ProcessFacts(mixed_precision=True)))
    assert CHECKPOINTING not in by_lever(advise(b, device_total=TOTAL, facts=ProcessFacts(checkpointing=True)))


def test_top_advice_is_the_first_sure_lever_that_frees_enough():
    b = bill(act=60 * GiB)  # 7 GiB past the margin
    items = advise(b, device_total=TOTAL)
    top = top_advice(items)
    assert top is not None and top.lever == BATCH  # mixed precision would too, if it applies
    # Needing more than any lever frees: the biggest one.
    items = advise(b, device_total=TOTAL, need=70 * GiB)
    assert all(a.sufficient is False for a in items)
    top = top_advice(items)
    assert top is not None and top.lever == CHECKPOINTING
    assert top_advice(()) is None


def test_without_a_census_only_the_cache_can_be_advised():
    items = advise(bill(census=False, cache=6 * GiB), device_total=TOTAL, facts=ProcessFacts(fragmentation=0.7))
    assert [a.lever for a in items] == [EXPANDABLE]


def test_without_a_device_total_nothing_is_called_sufficient():
    items = advise(bill(), device_total=None)
    assert items and all(a.sufficient is None for a in items)
