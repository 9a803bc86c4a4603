"""bench/overhead_stats.py: the within-block comparison behind the agent-overhead benchmark."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from overhead_stats import block_ticks, tick_interference


def steps(durations: list[float], start: float = 100.0) -> list[float]:
    ends = [start]
    for d in durations:
        ends.append(ends[-1] + d)
    return ends


def test_steps_that_meet_a_tick_are_compared_with_the_blocks_other_steps():
    # Two blocks at different speeds (drift between blocks); in each, the steps that meet a
    # tick take 0.3 ms more than the others.
    blocks = []
    for base in (0.002, 0.003):
        durations = [base] * 100
        for i in range(5, 100, 25):
            durations[i] += 0.0003
        ends = steps(durations)
        ticks = [(ends[i] + 0.0001, ends[i] + 0.0002) for i in range(5, 100, 25)]  # inside step i
        block = block_ticks(ends, ticks)
        assert block is not None and block.steps == 100
        assert block.excess == pytest.approx((0.0003,) * 4)
        blocks.append(block)
    added, share = tick_interference(blocks)
    assert share == pytest.approx(8 / 200) and added == pytest.approx(0.0003 * 8 / 200)


def test_a_tick_spanning_two_steps_counts_for_both():
    ends = steps([0.002] * 20)
    across = [(ends[i] - 1e-4, ends[i] + 1e-4) for i in (3, 9, 15)]  # each meets steps i-1 and i
    block = block_ticks(ends, across)
    assert block is not None and len(block.excess) == 6 and block.excess == pytest.approx((0.0,) * 6)


def test_nothing_to_compare():
    ends = steps([0.002] * 20)
    assert tick_interference([block_ticks(ends, [])]) is None  # no step met a tick
    assert block_ticks(ends[:3], [(ends[0], ends[2])]) is None  # no clean steps to compare with
    assert tick_interference([]) is None
