"""OOM risk warnings, their hysteresis, the leak trend and the OOM post-mortem, on synthetic
histories built from the real sample classes."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest

from vramtop.analysis.advice import CHECKPOINTING, EXPANDABLE, MIXED_PRECISION, OPTIMIZER
from vramtop.analysis.leak import LeakPoint, fit_leak
from vramtop.analysis.postmortem import postmortem_summary
from vramtop.analysis.risk import (
    CRITICAL,
    FRAGMENTATION,
    HEADROOM,
    INFO,
    LEAK,
    NEIGHBOUR,
    OOM,
    RETRIES,
    WARNING,
    RiskTracker,
    advice_for,
    assess,
    batch_fit_for,
)
from vramtop.analysis.thresholds import Thresholds
from vramtop.commands.options import with_overrides
from vramtop.model import (
    AgentDevice,
    AgentEvent,
    AgentSample,
    AllocatorStats,
    GpuSample,
    HostSample,
    OomReport,
    ProcessSample,
    Sample,
    StepPeak,
    TensorCensus,
)

MiB = 1 << 20
GiB = 1 << 30
UUID = "GPU-1111"
TOTAL = 80 * GiB
PID = 4242
NON_PT = GiB // 2  # CUDA context and workspaces of the training process
DRIVER = GiB // 2  # memory.reserved


def census(params=2 * GiB, grads=2 * GiB, optim=4 * GiB):
    return TensorCensus(parameters_trainable=params, parameters_frozen=0, gradients=grads, optimizer_state=optim,
                        time=0.0, seen="1 optimizer (AdamW); 1 model (GPT)", gradients_peak=grads)


def snap(t, *, reserved_peak=40 * GiB, allocated_peak=None, reserved=None, allocated=None, persistent=8 * GiB,
         step=100, retries=0, ooms=0, largest_free=None, expandable=None, others=(), census_=None,
         agent=True, stale=False, cap=None):
    """One sample: a training process (PID) with the agent on one 80 GiB GPU, and ``others``
    as (pid, bytes, command) rows next to it. Projected peak = reserved_peak + 1 GiB + others."""
    reserved = reserved_peak if reserved is None else reserved
    allocated = reserved - GiB if allocated is None else allocated
    allocated_peak = reserved_peak - GiB if allocated_peak is None else allocated_peak
    stats = AllocatorStats(allocated=allocated, reserved=reserved, active=allocated, requested=allocated,
                           inactive_split=0, allocated_peak=allocated_peak, reserved_peak=reserved_peak,
                           num_alloc_retries=retries, num_ooms=ooms, largest_free_block=largest_free)
    last = StepPeak(step=step, duration=0.5, peak_allocated=allocated_peak, peak_reserved=reserved_peak,
                    persistent=persistent, exact=True)
    device = AgentDevice(index=0, uuid=UUID, name="H100", stats=stats, census=census_ or census(), last_step=last,
                         peak_step=step, memory_limit=cap)
    own = reserved + NON_PT
    procs = [ProcessSample(PID, UUID, own, "C", name="python", command="python train.py")]
    procs += [ProcessSample(pid, UUID, used, "C", name="python", command=cmd, user="bob") for pid, used, cmd in others]
    used = own + sum(u for _, u, _ in others)
    gpu = GpuSample(index=0, uuid=UUID, name="H100", memory_total=TOTAL, memory_used=used,
                    memory_free=TOTAL - used - DRIVER, memory_reserved=DRIVER, processes=tuple(procs))
    agents = (AgentSample(pid=PID, time=t, torch_version="2.5.0", devices=(device,), step=step,
                          expandable_segments=expandable, host_pid=PID),) if agent else ()
    return Sample(time=t, host=HostSample("box", 512 * GiB, 64 * GiB), gpus=(gpu,), agents=agents,
                  stale_since=t - 1 if stale else None)


def at_share(share):
    """reserved_peak for which the projected peak is ``share`` of the device."""
    return int(share * TOTAL) - NON_PT - DRIVER


def oom_event(time=0.5, pid=PID, **fields):
    """An OOM as an agent reports it (AgentEvent), with the figures a test names."""
    values = {"device": 0, "requested": GiB, "device_limit": TOTAL, "device_total": TOTAL, "device_free": 0,
              "allocated": 70 * GiB, "reserved": 72 * GiB, "step": 100, "phase": "forward", **fields}
    return AgentEvent("oom", pid, time, OomReport(time=time, **values))


def with_events(sample, *events):
    return replace(sample, events=events)


def kinds(warnings):
    return {(w.kind, w.level) for w in warnings}


# -- a healthy run ----------------------------------------------------------------------------


def test_a_healthy_flat_run_raises_nothing_in_500_samples():
    rng = random.Random(7)
    tracker = RiskTracker()
    for i in range(500):
        # Persistent memory flat with noise; peaks, cache and a small neighbour wobble too.
        noise = int(rng.uniform(-40, 40) * MiB)
        s = snap(1000.0 + i, step=1 + 3 * i, persistent=8 * GiB + noise,
                 reserved_peak=at_share(0.6) + int(rng.uniform(0, 2) * GiB),
                 retries=0, largest_free=int(rng.uniform(0.6, 1.0) * GiB),
                 others=[(777, 300 * MiB + int(rng.uniform(0, 200)) * MiB, "Xorg")])
        assert tracker.update(s) == (), f"sample {i}: {tracker.warnings}"


# -- headroom -----------------------------------------------------------------------------------


def test_headroom_warns_after_three_samples_with_the_numbers_and_one_action():
    tracker = RiskTracker()
    peak = at_share(0.93)
    assert tracker.update(snap(0.0, reserved_peak=peak)) == ()
    assert tracker.update(snap(1.0, reserved_peak=peak)) == ()
    (w,) = tracker.update(snap(2.0, reserved_peak=peak))
    assert (w.kind, w.level, w.pid, w.gpu_uuid, w.gpu_index) == (HEADROOM, WARNING, PID, UUID, 0)
    projected = peak + NON_PT + DRIVER
    assert w.evidence["projected"] == projected and w.evidence["total"] == TOTAL
    assert w.evidence["limit"] == int(TOTAL * 0.9)
    assert w.evidence["shortfall"] == projected - int(TOTAL * 0.9)
    assert "93%" in w.title and "93%" in w.sentence and "past the 10% safety margin" in w.sentence
    assert w.since == 2.0
    assert w.action.endswith(".") and w.action.count(". ") == 0  # one sentence


def test_headroom_is_critical_within_a_third_of_the_margin_and_counts_others_and_driver():
    tracker = RiskTracker()
    # 76 GiB of our own peak + 2 GiB of a neighbour + driver: 98%.
    s = snap(0.0, reserved_peak=at_share(0.98) - 2 * GiB, others=[(999, 2 * GiB, "python serve.py")])
    for i in range(3):
        warnings = tracker.update(replace(s, time=float(i)))
    headroom = [w for w in warnings if w.kind == HEADROOM]
    assert headroom[0].level == CRITICAL
    assert headroom[0].evidence["others"] == 2 * GiB and headroom[0].evidence["driver_reserved"] == DRIVER


def test_headroom_quiet_below_the_margin():
    tracker = RiskTracker()
    for i in range(20):
        assert tracker.update(snap(float(i), reserved_peak=at_share(0.85))) == ()


def test_headroom_does_not_flicker_near_the_line():
    tracker = RiskTracker()
    low, high = at_share(0.895), at_share(0.905)
    # Alternating across the raise line: the condition never holds for three samples in a row.
    for i in range(50):
        assert tracker.update(snap(float(i), reserved_peak=high if i % 2 else low)) == ()
    t = 50.0
    for _ in range(3):
        warnings = tracker.update(snap(t, reserved_peak=high))
        t += 1
    assert kinds(warnings) == {(HEADROOM, WARNING)}
    since = warnings[0].since  # sample 49 was above the line too: raised at 51
    assert since == 51.0
    # Now alternating again: above the clear line (88%), so it stays, unchanged, every sample.
    for i in range(50):
        warnings = tracker.update(snap(t, reserved_peak=high if i % 2 else low))
        t += 1
        assert kinds(warnings) == {(HEADROOM, WARNING)} and warnings[0].since == since
    # Well below: it clears after five samples, not before.
    for i in range(5):
        warnings = tracker.update(snap(t, reserved_peak=at_share(0.85)))
        t += 1
        assert bool(warnings) == (i < 4)


def test_headroom_level_does_not_flicker_across_the_critical_line():
    tracker = RiskTracker()
    above, below = at_share(0.975), at_share(0.96)  # critical line 96.7%, its clear line 94.7%
    t = 0.0
    for _ in range(3):
        tracker.update(snap(t, reserved_peak=above))
        t += 1
    levels = set()
    for i in range(40):
        (w,) = tracker.update(snap(t, reserved_peak=above if i % 2 else below))
        levels.add(w.level)
        t += 1
    assert levels == {CRITICAL}


def test_stale_and_repeated_samples_do_not_count_towards_a_warning():
    tracker = RiskTracker()
    peak = at_share(0.93)
    tracker.update(snap(0.0, reserved_peak=peak))
    tracker.update(snap(1.0, reserved_peak=peak, stale=True))
    tracker.update(snap(1.0, reserved_peak=peak, stale=True))
    tracker.update(snap(0.0, reserved_peak=peak))  # the same time again
    assert tracker.update(snap(2.0, reserved_peak=peak)) == ()
    assert kinds(tracker.update(snap(3.0, reserved_peak=peak))) == {(HEADROOM, WARNING)}


def test_a_process_that_goes_away_takes_its_warnings_and_state_with_it():
    tracker = RiskTracker()
    for i in range(3):
        tracker.update(snap(float(i), reserved_peak=at_share(0.93)))
    assert tracker.warnings
    for i in range(3, 8):
        tracker.update(snap(float(i), agent=False))
    assert tracker.warnings == ()
    assert tracker.watched == 1 and tracker.advice(PID, UUID)  # remembered for a while...
    tracker.update(snap(100.0, agent=False))
    assert tracker.watched == 0  # ...then forgotten: memory stays bounded as processes come and go
    assert tracker.advice(PID, UUID) == () and tracker.leak(PID, UUID) is None


def test_one_shot_assessment_needs_no_history():
    warnings = assess(snap(0.0, reserved_peak=at_share(0.93), retries=4))
    assert kinds(warnings) == {(HEADROOM, WARNING), (RETRIES, INFO)}
    assert assess(snap(0.0)) == ()


# -- retries and OOMs -----------------------------------------------------------------------


def test_retries_warn_at_once_with_count_and_delta_and_clear_after_the_hold():
    tracker = RiskTracker(Thresholds(event_hold=60.0))
    assert tracker.update(snap(0.0, retries=0)) == ()
    (w,) = tracker.update(snap(1.0, retries=3))
    assert (w.kind, w.level) == (RETRIES, WARNING)
    assert w.evidence["retries"] == 3 and w.evidence["delta"] == 3
    assert "3 more times (3 in all)" in w.sentence
    for t in range(2, 60):
        assert tracker.update(snap(float(t), retries=3)), t  # held, though the count stands still
    for t in range(61, 66):
        warnings = tracker.update(snap(float(t), retries=3))
    assert warnings == ()


def test_retries_action_points_at_expandable_segments_when_fragmented():
    tracker = RiskTracker()
    # 5 GiB of cache whose largest free block is 0.5 GiB: fragmentation 0.9.
    tracker.update(snap(0.0, reserved=40 * GiB, allocated=35 * GiB, largest_free=GiB // 2))
    warnings = tracker.update(snap(1.0, reserved=40 * GiB, allocated=35 * GiB, largest_free=GiB // 2, retries=1))
    (w,) = [w for w in warnings if w.kind == RETRIES]
    assert "expandable_segments:True" in w.action


def test_retries_seen_at_first_sight_are_only_info():
    (w,) = RiskTracker().update(snap(0.0, retries=12))
    assert (w.kind, w.level, w.evidence["retries"]) == (RETRIES, INFO, 12)


def test_an_oom_is_critical_at_once_and_carries_the_event():
    tracker = RiskTracker()
    tracker.update(snap(0.0))
    event = oom_event(0.9, requested=3 * GiB, device_free=GiB)
    warnings = tracker.update(with_events(snap(1.0, ooms=1), event))
    (w,) = [w for w in warnings if w.kind == OOM]
    assert w.level == CRITICAL
    assert w.evidence["requested"] == 3 * GiB and w.evidence["device_free"] == GiB
    assert "asked for 3.0 GiB with 1.0 GiB free" in w.sentence
    assert w.action


def test_an_oom_event_from_a_process_that_died_still_warns():
    tracker = RiskTracker()
    tracker.update(snap(0.0, reserved_peak=at_share(0.85)))
    event = oom_event(requested=2 * GiB, device_free=512 * MiB, step=101)
    (w,) = tracker.update(with_events(snap(1.0, agent=False), event))
    assert (w.kind, w.level, w.pid) == (OOM, CRITICAL, PID)
    assert w.sentence.startswith(f"PID {PID} ran out of GPU memory; it asked for 2.0 GiB with 512 MiB free.")


def test_no_oom_warning_without_an_oom():
    tracker = RiskTracker()
    for i in range(10):
        assert [w for w in tracker.update(snap(float(i), ooms=0)) if w.kind == OOM] == []


# -- leaks --------------------------------------------------------------------------------


def leaking_run(tracker, *, per_step, noise, steps_per_s=2.0, seconds=120, base=10 * GiB, start_step=21,
                activations=20 * GiB, seed=3):
    """One sample a second; persistent memory rises ``per_step`` bytes per optimizer step."""
    rng = random.Random(seed)
    warnings = ()
    for i in range(seconds):
        step = start_step + int(i * steps_per_s)
        persistent = base + per_step * (step - start_step) + int(rng.uniform(-noise, noise))
        # The peak sits on top of the persistent memory: it rises with it.
        peak = base + per_step * (step - start_step) + activations
        warnings = tracker.update(snap(1000.0 + i, step=step, persistent=persistent, reserved_peak=peak,
                                       allocated=persistent, reserved=peak))
    return warnings


def test_leak_estimate_and_time_to_oom_on_a_noisy_linear_leak():
    tracker = RiskTracker()
    per_step = 50 * MiB
    warnings = leaking_run(tracker, per_step=per_step, noise=20 * MiB, seconds=60)
    fit = tracker.leak(PID, UUID)
    assert fit is not None
    assert abs(fit.per_step - per_step) / per_step < 0.10
    assert abs(fit.per_second - 2 * per_step) / (2 * per_step) < 0.10
    (w,) = [w for w in warnings if w.kind == LEAK]
    # The true time to OOM from the last sample: what is left on the device at the true rate.
    step = 21 + int(59 * 2.0)
    projected = 10 * GiB + per_step * (step - 21) + 20 * GiB + NON_PT + DRIVER
    true_eta = (TOTAL - projected) / (2 * per_step)
    assert abs(w.evidence["seconds_to_oom"] - true_eta) / true_eta < 0.15
    assert abs(w.evidence["steps_to_oom"] - true_eta * 2) / (true_eta * 2) < 0.15
    assert w.evidence["seconds_to_margin"] < w.evidence["seconds_to_oom"]
    assert w.level == CRITICAL  # ~8 minutes left
    assert "MiB/step" in w.title and "min" in w.sentence


def test_slow_leak_is_a_warning_with_a_long_eta():
    tracker = RiskTracker()
    warnings = leaking_run(tracker, per_step=2 * MiB, noise=MiB // 2, seconds=300)
    (w,) = [w for w in warnings if w.kind == LEAK]
    assert w.level == WARNING and w.evidence["seconds_to_oom"] > 600


def test_staircase_leak_is_found():
    tracker = RiskTracker()
    rng = random.Random(5)
    warnings = ()
    for i in range(200):
        step = 21 + 2 * i
        persistent = 10 * GiB + 128 * MiB * (step // 20) + int(rng.uniform(-1, 1) * MiB)
        warnings = tracker.update(snap(float(i), step=step, persistent=persistent, allocated=persistent))
    assert LEAK in {w.kind for w in warnings}


def test_no_leak_during_warm_up_while_optimizer_state_appears():
    tracker = RiskTracker()
    for i in range(120):
        step = 1 + i // 4  # slow steps: one every 4 seconds
        # Optimizer state allocated over the first steps, then flat.
        persistent = 4 * GiB + min(step, 15) * 300 * MiB
        assert [w for w in tracker.update(snap(float(i), step=step, persistent=persistent)) if w.kind == LEAK] == []


def test_a_one_off_rise_is_not_a_leak():
    tracker = RiskTracker()
    for i in range(200):
        persistent = 8 * GiB + (2 * GiB if i >= 100 else 0)  # e.g. an evaluation cache kept from then on
        warnings = tracker.update(snap(float(i), step=30 + 2 * i, persistent=persistent))
        assert [w for w in warnings if w.kind == LEAK] == [], i


def test_leak_warning_clears_once_growth_stops():
    tracker = RiskTracker()
    leaking_run(tracker, per_step=20 * MiB, noise=2 * MiB, seconds=60, activations=5 * GiB)
    assert LEAK in {w.kind for w in tracker.warnings}
    top = 10 * GiB + 20 * MiB * 118
    for i in range(400):
        tracker.update(snap(2000.0 + i, step=200 + 2 * i, persistent=top + (i % 3) * MiB,
                            reserved_peak=top + 5 * GiB, allocated=top, reserved=top + 5 * GiB))
    assert LEAK not in {w.kind for w in tracker.warnings}


def test_fit_leak_on_flat_noise_is_neither_monotone_nor_growing():
    rng = random.Random(11)
    points = [LeakPoint(100 + i, float(i), 8 * GiB + int(rng.gauss(0, 30 * MiB))) for i in range(96)]
    fit = fit_leak(points)
    assert fit is not None
    assert fit.monotone < 0.65 and abs(fit.growth) < 64 * MiB
    assert fit_leak(points[:2]) is None


# -- fragmentation ----------------------------------------------------------------------------


def frag_snap(t, **kw):
    # 6 GiB of cache, the largest free block 1 GiB: fragmentation 0.83.
    return snap(t, reserved=40 * GiB, allocated=34 * GiB, largest_free=GiB, **kw)


def test_fragmentation_is_silent_without_harm_and_a_warning_with_retries():
    # A transformer's cache between steps is in pieces and harms nothing: no line for it.
    tracker = RiskTracker()
    for i in range(6):
        assert tracker.update(frag_snap(float(i))) == ()
    tracker = RiskTracker()
    for i in range(3):
        warnings = tracker.update(frag_snap(float(i), retries=2))
    (w,) = [w for w in warnings if w.kind == FRAGMENTATION]
    assert w.level == WARNING
    assert abs(w.evidence["fragmentation"] - 5 / 6) < 1e-9 and w.evidence["cache"] == 6 * GiB
    assert "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in w.action


def test_fragmentation_is_quiet_when_expandable_segments_are_on():
    # The allocator unmaps free pages of expandable segments under pressure: a cache in pieces
    # cannot fail a large request (tests/gpu/test_risk_gpu.py shows it on a real GPU).
    tracker = RiskTracker()
    for i in range(6):
        assert FRAGMENTATION not in {w.kind for w in tracker.update(frag_snap(float(i), expandable=True, retries=2))}
    for i in range(6, 9):
        warnings = tracker.update(frag_snap(float(i), expandable=False, retries=2))
    assert (FRAGMENTATION, WARNING) in kinds(warnings)


def test_fragmentation_quiet_for_a_small_cache_or_a_low_ratio():
    tracker = RiskTracker()
    for i in range(10):
        # 3 GiB of cache is under 5% of 80 GiB; then a big cache in one block.
        assert tracker.update(snap(float(i), reserved=40 * GiB, allocated=37 * GiB, largest_free=GiB // 4)) == ()
        assert tracker.update(snap(100.0 + i, reserved=40 * GiB, allocated=30 * GiB, largest_free=9 * GiB)) == ()


# -- neighbours ---------------------------------------------------------------------------------


def test_a_neighbour_is_named_with_its_command_and_memory():
    tracker = RiskTracker()
    others = [(999, 6 * GiB, "python serve.py --port 8000"), (777, 200 * MiB, "Xorg")]
    for i in range(3):
        warnings = tracker.update(snap(float(i), others=others))
    (w,) = warnings
    assert (w.kind, w.level, w.pid) == (NEIGHBOUR, INFO, 999)
    assert "python serve.py --port 8000" in w.sentence and "6.0 GiB" in w.sentence and str(PID) in w.sentence
    assert "999" in w.action and w.evidence["used"] == 6 * GiB


def test_a_neighbour_is_a_warning_when_training_is_short_of_room():
    tracker = RiskTracker()
    others = [(999, 6 * GiB, "python serve.py")]
    for i in range(3):
        warnings = tracker.update(snap(float(i), others=others, reserved_peak=at_share(0.93) - 6 * GiB))
    assert (NEIGHBOUR, WARNING) in kinds(warnings) and (HEADROOM, WARNING) in kinds(warnings)


def test_no_neighbour_warning_without_a_training_process_on_the_gpu():
    tracker = RiskTracker()
    for i in range(5):
        assert tracker.update(snap(float(i), others=[(999, 6 * GiB, "python serve.py")], agent=False)) == ()


# -- advice from a sample and the post-mortem ----------------------------------------------------


def test_advice_for_a_sample_uses_the_peak_bill():
    s = snap(0.0, reserved_peak=at_share(0.95))
    agent = s.agents[0]
    advice = advice_for(s, agent, agent.devices[0])
    assert advice and all(a.saves > 0 for a in advice)
    assert RiskTracker().advice(PID, UUID) == ()


def test_postmortem_summary_says_what_was_asked_what_was_free_and_what_to_try():
    s = snap(0.0, reserved_peak=70 * GiB, allocated_peak=68 * GiB, reserved=70 * GiB, allocated=69 * GiB,
             largest_free=GiB // 2)
    device = s.agents[0].devices[0]
    event = {"time": 5.0, "device": 0, "requested": 4 * GiB, "device_total": TOTAL, "device_free": GiB,
             "step": 321}
    pm = postmortem_summary(event, device, 70 * GiB + NON_PT)
    assert pm.missing == 3 * GiB and pm.need == 3 * GiB + int(TOTAL * 0.1)
    assert pm.lines[0] == (f"OOM at step 321 on cuda:0 ({UUID}): asked for 4.0 GiB with 1.0 GiB free of 80.0 GiB, "
                           "3.0 GiB short.")
    assert pm.bill is not None and pm.bill.total == 70 * GiB + NON_PT
    assert any(line.startswith("Bill at the allocator's peak: parameters (trainable) 2.0 GiB") for line in pm.lines)
    assert pm.top is not None and pm.top.sufficient and pm.lines[-1].startswith("First thing to try")
    assert pm.fragmented is False


def test_postmortem_points_at_expandable_segments_when_the_cache_was_fragmented():
    s = snap(0.0, reserved=70 * GiB, allocated=60 * GiB, largest_free=GiB)
    device = s.agents[0].devices[0]
    event = {"device": 0, "requested": 2 * GiB, "device_total": TOTAL, "device_free": GiB // 2, "step": 9}
    pm = postmortem_summary(event, device, 70 * GiB + NON_PT)
    assert pm.fragmented is True and pm.top is not None and pm.top.lever == EXPANDABLE
    assert "pieces too small" in " ".join(pm.lines)
    pm = postmortem_summary(event, device, 70 * GiB + NON_PT, expandable_segments=True)
    assert pm.top is not None and pm.top.lever != EXPANDABLE


def test_postmortem_without_agent_figures():
    pm = postmortem_summary({"device": 1, "requested": GiB, "device_total": TOTAL, "device_free": 0}, None, None)
    assert pm.bill is None and pm.top is None and "vramtop run" in pm.lines[-1]


def test_warnings_are_sorted_most_severe_first():
    tracker = RiskTracker()
    others = [(999, 6 * GiB, "python serve.py")]
    for i in range(3):
        warnings = tracker.update(snap(float(i), others=others, reserved_peak=at_share(0.98) - 6 * GiB, retries=i))
    assert [(w.kind, w.level) for w in warnings] == [(HEADROOM, CRITICAL), (RETRIES, WARNING), (NEIGHBOUR, WARNING)]


# -- joining agents, NVML rows and devices --------------------------------------------------------


def test_events_that_come_with_a_stale_sample_are_kept_for_the_next_fresh_one():
    tracker = RiskTracker()
    tracker.update(snap(0.0))
    tracker.update(with_events(snap(1.0, stale=True), oom_event()))
    (w,) = tracker.update(snap(2.0))
    assert (w.kind, w.level, w.evidence["requested"]) == (OOM, CRITICAL, GiB)


def test_an_unmatched_training_process_is_never_called_its_own_neighbour():
    # In a container the agent reports PID 1 and NVML a host PID we could not match: the
    # 40 GiB row may be the training process itself.
    s = snap(0.0)
    agent = replace(s.agents[0], pid=1, host_pid=None)
    s = replace(s, agents=(agent,))
    tracker = RiskTracker()
    for i in range(5):
        assert [w for w in tracker.update(replace(s, time=float(i))) if w.kind == NEIGHBOUR] == []


def test_two_training_processes_on_one_gpu_are_each_others_neighbours():
    s = snap(0.0, others=[(5151, 20 * GiB, "python other_train.py")])
    mine = s.agents[0]
    theirs = replace(mine, pid=5151, host_pid=5151)
    s = replace(s, agents=(mine, theirs))
    tracker = RiskTracker()
    for i in range(3):
        warnings = tracker.update(replace(s, time=float(i)))
    assert {w.pid for w in warnings if w.kind == NEIGHBOUR} == {PID, 5151}


def ranks_on_gpu0(second_gpu_busy: bool) -> Sample:
    """Ranks 0 and 1 of one job both on GPU 0 (no set_device(LOCAL_RANK)); GPU 1 idle or not."""
    s = snap(0.0, others=[(5151, 40 * GiB + NON_PT, "python train.py")])
    rank0 = replace(s.agents[0], rank=0)
    rank1 = replace(rank0, pid=5151, host_pid=5151, rank=1)
    other = ProcessSample(6000, "GPU-2222", 30 * GiB, "C", name="python", command="python serve.py")
    gpu1 = replace(s.gpus[0], index=1, uuid="GPU-2222", processes=(other,) if second_gpu_busy else (),
                   memory_used=30 * GiB if second_gpu_busy else 0)
    return replace(s, agents=(rank0, rank1), gpus=(s.gpus[0], gpu1))


def test_ranks_sharing_a_gpu_while_another_is_idle_are_one_warning_with_the_fix():
    tracker = RiskTracker()
    for i in range(3):
        warnings = tracker.update(replace(ranks_on_gpu0(second_gpu_busy=False), time=float(i)))
    (w,) = [w for w in warnings if w.kind == NEIGHBOUR]  # once for the GPU, not each rank for the other
    assert (w.level, w.gpu_index, w.pid) == (WARNING, 0, PID)
    assert w.title == "GPU 0: ranks 0, 1 share one GPU"
    assert f"rank 0 (PID {PID}" in w.sentence and "rank 1 (PID 5151" in w.sentence
    assert "while GPU 1 has no process" in w.sentence
    assert "torch.cuda.set_device(int(os.environ['LOCAL_RANK']))" in w.action


def test_ranks_sharing_a_gpu_when_no_gpu_is_free_are_information():
    tracker = RiskTracker()
    for i in range(3):
        warnings = tracker.update(replace(ranks_on_gpu0(second_gpu_busy=True), time=float(i)))
    (w,) = [w for w in warnings if w.kind == NEIGHBOUR]
    assert w.level == INFO and "share one GPU" in w.title and "no process" not in w.sentence


def test_a_process_on_a_mig_device_is_measured_against_that_device():
    from vramtop.model import MigDeviceSample

    s = snap(0.0, reserved_peak=18 * GiB, reserved=18 * GiB)
    gpu = s.gpus[0]
    procs = tuple(replace(p, gpu_instance_id=1, compute_instance_id=0) for p in gpu.processes)
    mig = MigDeviceSample(index=0, uuid="MIG-aaaa", gpu_instance_id=1, compute_instance_id=0,
                          memory_total=20 * GiB, memory_used=18 * GiB + NON_PT, memory_free=GiB)
    gpu = replace(gpu, mig_enabled=True, mig_devices=(mig,), processes=procs)
    agent = s.agents[0]
    agent = replace(agent, devices=(replace(agent.devices[0], uuid="MIG-aaaa"),))
    s = replace(s, gpus=(gpu,), agents=(agent,))
    tracker = RiskTracker()
    for i in range(3):
        warnings = tracker.update(replace(s, time=float(i)))
    (w,) = warnings
    # 18.5 GiB of 20 GiB: 92.5%, a warning (no driver-reserved memory on a MIG device).
    assert (w.kind, w.level, w.gpu_uuid, w.gpu_index) == (HEADROOM, WARNING, "MIG-aaaa", 0)
    assert w.evidence["total"] == 20 * GiB and w.evidence["projected"] == 18 * GiB + NON_PT


def test_an_inconsistent_nvml_figure_falls_back_to_the_last_good_non_pytorch():
    tracker = RiskTracker(Thresholds(raise_after=1))
    peak = at_share(0.93)
    tracker.update(snap(0.0, reserved_peak=peak))
    s = snap(1.0, reserved_peak=peak)
    gpu = s.gpus[0]
    # NVML polled before the allocator grew: its figures are below what is reserved now.
    row = replace(gpu.processes[0], used_memory=10 * GiB)
    s = replace(s, gpus=(replace(gpu, processes=(row,), memory_used=10 * GiB),))
    (w,) = tracker.update(s)
    assert w.kind == HEADROOM and w.evidence["non_pytorch"] == NON_PT
    assert w.evidence["projected"] == peak + NON_PT + DRIVER
    # Without a good figure ever seen, non-PyTorch counts as nothing rather than as negative.
    (w,) = RiskTracker(Thresholds(raise_after=1)).update(s)
    assert w.evidence["non_pytorch"] == 0 and w.evidence["projected"] == peak + DRIVER


def test_recorded_oom_events_reach_the_tracker_inside_the_sample_that_follows_them():
    from vramtop.recording import Event, Recording

    def recorded(kind, **data):
        return Event(time=0.5, kind=kind, pid=PID, data=data)

    figures = {"time": 0.5, "device": 0, "requested": GiB, "device_limit": TOTAL, "device_free": 0,
               "allocated": 70 * GiB, "reserved": 72 * GiB, "step": 100, "phase": "forward"}
    recording = Recording("x.jsonl", None, (snap(0.0), snap(1.0)), (recorded("command.started"),
                          recorded("oom", **figures)), None, ())
    samples = recording.samples_with_events()
    assert samples[0].events == () and [e.kind for e in samples[1].events] == ["oom"]
    tracker = RiskTracker()
    tracker.update(samples[0])
    (w,) = tracker.update(samples[1])
    assert (w.kind, w.level, w.evidence["requested"]) == (OOM, CRITICAL, GiB)


def test_batch_fit_for_is_the_figure_in_the_batch_advice():
    # At the peak: 39 GiB allocated, 8 GiB of it counted (2 + 2 + 4), so 31 GiB of activations;
    # projected 41 GiB (40 reserved + context + driver); the line at 10% is 72 GiB:
    # (72 - (41 - 31)) / 31 = 2.0 times the current batch.
    s = snap(0.0)
    agent = s.agents[0]
    fit = batch_fit_for(s, agent, agent.devices[0], margin=0.10)
    assert fit is not None and abs(fit - 2.0) < 1e-6
    assert abs(batch_fit_for(s, agent, agent.devices[0], margin=0.0) - (80 - 10) / 31) < 1e-6
    texts = [a.text for a in advice_for(s, agent, agent.devices[0])]
    assert any("grow ~2.0x" in t for t in texts), texts


def test_advice_uses_what_the_agent_saw_of_precision_and_world_size():
    s = snap(0.0)
    agent = s.agents[0]
    device = agent.devices[0]

    def levers(**facts):
        a = replace(agent, **facts)
        return {x.lever: x for x in advice_for(replace(s, agents=(a,)), a, device)}

    unknown = levers()[MIXED_PRECISION]
    assert unknown.conditional and unknown.text.startswith("If the model trains in fp32")
    fp32 = levers(autocast=False)[MIXED_PRECISION]
    assert not fp32.conditional and fp32.text.startswith("Run the forward pass")
    assert MIXED_PRECISION not in levers(autocast=True)  # already under autocast
    half = replace(device.census, parameters_16bit=device.census.parameters_trainable)
    bf16_device = replace(device, census=half)
    a = replace(agent, autocast=False, devices=(bf16_device,))
    assert MIXED_PRECISION not in {x.lever for x in advice_for(replace(s, agents=(a,)), a, bf16_device)}
    assert "8-bit" in levers()[OPTIMIZER].text
    assert CHECKPOINTING in levers() and CHECKPOINTING not in levers(checkpointing=True)
    assert "over the 8 ranks" in levers(world_size=8)[OPTIMIZER].text  # 7/8 beats 8-bit's 3/4


def test_thresholds_from_name_value_settings():
    t = with_overrides(Thresholds(), ["frag_ratio=0.6", "leak_min_growth=256MiB", "raise_after=5",
                                      "neighbour_min_bytes=1.5GiB", "event_hold = 60"])
    assert (t.frag_ratio, t.leak_min_growth, t.raise_after) == (0.6, 256 * MiB, 5)
    assert t.neighbour_min_bytes == 3 * GiB // 2 and t.event_hold == 60.0
    assert t.margin == Thresholds().margin  # untouched
    for bad, says in (("nope=1", "NAME one of"), ("frag_ratio", "NAME one of"), ("margin=0.2", "NAME one of"),
                      ("raise_after=many", "whole number"), ("frag_min_cache=2TB", "whole number"),
                      ("frag_ratio=high", "takes a number"), ("leak_critical=-5", "negative"),
                      # Values that once raised OverflowError or were accepted and failed later:
                      ("raise_after=" + "9" * 400, "at most 15 digits"), ("critical_margin=1e999", "finite"),
                      ("neighbour_min_share=nan", "finite"), ("leak_horizon=inf", "finite"),
                      ("frag_ratio=1.5", "from 0 to 1")):
        with pytest.raises(ValueError, match=says):
            with_overrides(Thresholds(), [bad])


def test_a_changed_threshold_changes_what_is_raised():
    # The fragmentation of frag_snap (0.83) is above the default 0.5, below 0.9.
    strict = RiskTracker(with_overrides(Thresholds(), ["frag_ratio=0.9", "frag_clear_ratio=0.85"]))
    default = RiskTracker()
    for i in range(4):
        quiet, loud = strict.update(frag_snap(float(i), retries=2)), default.update(frag_snap(float(i), retries=2))
    assert FRAGMENTATION not in {w.kind for w in quiet}
    assert (FRAGMENTATION, WARNING) in kinds(loud)


# -- a process's cap ------------------------------------------------------------------------------


def test_headroom_and_a_leaks_time_to_oom_count_against_the_processs_cap():
    # 20 GiB reserved at the peak on an 80 GiB card: plenty of room on the card, but the process
    # may reserve only 21 GiB (set_per_process_memory_fraction).
    tracker = RiskTracker()
    for i in range(3):
        warnings = tracker.update(snap(float(i), reserved_peak=20 * GiB, cap=21 * GiB))
    (w,) = [w for w in warnings if w.kind == HEADROOM]
    assert w.level == WARNING and "21.0 GiB" in w.title and "cap" in w.sentence  # 95% of it
    assert w.evidence["cap"] == 21 * GiB and w.evidence["projected"] == 20 * GiB
    assert RiskTracker().update(snap(0.0, reserved_peak=20 * GiB)) == ()  # no cap: no warning
    # A leak of 64 MiB a step, a step a second, from 10 GiB: the cap is ~11 GiB away, the card ~70.
    tracker = RiskTracker()
    for i in range(60):
        persistent = 10 * GiB + i * 64 * MiB
        tracker.update(snap(float(i), step=100 + i, persistent=persistent, reserved_peak=persistent + GiB,
                            cap=21 * GiB))
    (leak,) = [w for w in tracker.warnings if w.kind == LEAK]
    assert "its cap" in leak.sentence
    assert leak.evidence["seconds_to_oom"] == pytest.approx((21 * GiB - leak.evidence["projected"]) / (64 * MiB),
                                                            rel=0.05)


def test_one_encoding_of_a_warning_for_every_writer_and_it_reads_back():
    tracker = RiskTracker()
    for i in range(3):
        warnings = tracker.update(snap(float(i), reserved_peak=at_share(0.95)))
    from vramtop.analysis.risk import warning_from_dict, warning_to_dict

    (w,) = warnings
    data = json.loads(json.dumps(warning_to_dict(w)))  # through JSON, as files and --once carry it
    assert warning_from_dict(data) == w
    assert warning_from_dict({"kind": "headroom"}) is None  # not a warning: no traceback either


# -- the rules alone: pure functions of a subject and what was remembered of it -------------


def _subject(sample):
    from vramtop.analysis.subjects import places, subjects

    (s,) = subjects(sample, places(sample), {})
    return s


def test_the_retry_rule_depends_only_on_the_count_it_is_given():
    from vramtop.analysis import rules
    from vramtop.analysis.latch import NOTHING

    t = Thresholds()
    s = _subject(snap(0.0, retries=4))
    first = rules.retries(s, None, t)  # first sight: they happened before vramtop watched
    assert (first.want, first.immediate) == (INFO, True) and "before vramtop started" in first.warning.sentence
    more = rules.retries(s, 1, t)
    assert more.want == WARNING and more.warning.evidence["delta"] == 3
    assert rules.retries(s, 4, t) is NOTHING
    assert rules.retries(s, 1, t) == more  # same facts, same finding: nothing kept between calls


def test_the_headroom_rule_reads_the_subjects_limit_and_the_margin():
    from vramtop.analysis import rules

    s = _subject(snap(0.0, reserved_peak=at_share(0.93)))
    assert s.past_margin(Thresholds()) and not s.past_margin(Thresholds(margin=0.05))
    assert rules.headroom(s, Thresholds()).want == WARNING
    assert rules.headroom(s, Thresholds(margin=0.05)).want is None


def test_a_stale_repeat_does_not_deliver_its_events_again():
    # A hung read shows the last sample again, marked stale; its OOM was delivered the first time.
    fresh = with_events(snap(1.0, ooms=1), oom_event(0.9))
    stale = fresh.as_stale("NVML did not answer")
    assert stale.stale and stale.events == () and stale.agents == fresh.agents
