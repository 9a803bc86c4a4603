"""What kind of OOM it was (analysis/diagnosis.py), and the post-mortem that says it first."""

from __future__ import annotations

from dataclasses import replace

from vramtop.analysis.diagnosis import CAPACITY, FRAGMENTATION, LEAK, NEIGHBOUR, SPIKE, diagnose, with_history
from vramtop.analysis.postmortem import postmortem_of
from vramtop.model import OomReport, StepPeak

MiB, GiB = 1 << 20, 1 << 30
CARD = 80 * GiB


def oom(**kw) -> OomReport:
    base = dict(time=1_800_000_000.0, device=0, requested=2 * GiB, device_limit=CARD, device_free=1 * GiB,
                allocated=70 * GiB, reserved=71 * GiB, step=500, phase="forward", largest_free_block=1 * GiB,
                device_total=CARD, step_peak=70 * GiB, persistent_first=10 * GiB, persistent_first_step=2,
                persistent_last=10 * GiB + 100 * MiB, persistent_last_step=499)
    base.update(kw)
    return OomReport(**base)


def test_capacity_when_nothing_else_explains_it_and_levers_follow():
    d = diagnose(oom())
    assert d.kind == CAPACITY and d.short == 1 * GiB and d.action is None and not d.capped
    pm = postmortem_of(oom())
    assert pm.lines[1].startswith("Capacity:") and any(line.startswith("To fit") for line in pm.lines)


def test_a_leak_that_ate_more_than_was_missing_comes_first_with_its_growth():
    report = oom(persistent_last=40 * GiB)
    d = diagnose(report)
    assert d.kind == LEAK
    assert "grew by 30.0 GiB from step 2 (10.0 GiB) to step 499 (40.0 GiB)" in d.headline
    pm = postmortem_of(report)
    assert pm.lines[1] == d.headline and pm.first_thing.startswith("First thing to do (leak)")
    assert not any(line.startswith(("To fit", "First thing to try")) for line in pm.lines)


def test_a_smaller_leak_is_said_after_the_cause():
    d = diagnose(oom(persistent_last=16 * GiB, requested=30 * GiB, step_peak=20 * GiB))
    assert d.kind == SPIKE and any("A leak" in a and "less than the" in a for a in d.also)


def test_fragmentation_when_the_cache_had_enough_in_pieces_unless_segments_expand():
    report = oom(reserved=76 * GiB, largest_free_block=500 * MiB)  # 6 GiB cached, 2 GiB asked
    assert diagnose(report).kind == FRAGMENTATION
    assert "expandable_segments:True" in (diagnose(report).action or "")
    assert diagnose(report, expandable_segments=True).kind == CAPACITY


def test_a_neighbour_when_others_held_what_was_missing():
    assert diagnose(oom(), others=6 * GiB).kind == NEIGHBOUR
    assert diagnose(oom(), others=512 * MiB).kind == CAPACITY  # too little to matter


def test_a_spike_far_above_the_usual_step_peak():
    d = diagnose(oom(allocated=40 * GiB, reserved=41 * GiB, requested=30 * GiB, step_peak=35 * GiB,
                     device_free=25 * GiB))
    assert d.kind == SPIKE and "2.0x the peak of the training steps before it (35.0 GiB)" in d.headline


def test_a_cap_is_the_limit_free_memory_on_the_card_does_not_help():
    capped = oom(device_limit=16 * GiB, device_total=CARD, reserved=15 * GiB, allocated=14 * GiB,
                 device_free=60 * GiB, requested=2 * GiB, step_peak=None, persistent_first=None)
    d = diagnose(capped, others=40 * GiB)  # others on the card do not matter: the cap binds
    assert d.capped and d.kind == CAPACITY and d.available == 1 * GiB and d.short == 1 * GiB
    first = postmortem_of(capped).lines[0]
    assert "with 1.0 GiB free of the process's 16.0 GiB cap (set_per_process_memory_fraction) of a 80.0 GiB GPU" \
        in first and "1.0 GiB short" in first


def test_an_older_agents_report_gets_its_step_figures_from_the_recording():
    bare = oom(step_peak=None, persistent_first=None, persistent_first_step=None, persistent_last=None,
               persistent_last_step=None)
    steps = [StepPeak(step=i, duration=0.1, peak_allocated=30 * GiB, peak_reserved=31 * GiB,
                      persistent=10 * GiB + i * 100 * MiB, exact=True) for i in range(1, 400)]
    filled = with_history(bare, steps)
    assert filled.step_peak == 30 * GiB and filled.persistent_first_step == 2
    assert filled.persistent_last == 10 * GiB + 392 * 100 * MiB and filled.persistent_last_step == 399
    assert diagnose(filled).kind == LEAK
    assert with_history(replace(bare, step_peak=1), steps).step_peak == 1  # the agent's own figure wins
