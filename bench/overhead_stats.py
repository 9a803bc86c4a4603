"""Pure statistics for bench/agent_overhead.py (no torch: unit-tested on machines without a GPU).

Block times of a launch-bound loop drift by more than the agent costs, so besides comparing
blocks, the benchmark compares steps *within* a block: steps during which the agent's sampler
ran (its ``tick``) against the block's other steps. Both share the block's machine state, so the
difference is the sampler's cost to the loop, GIL hand-over latency included. A block at the
default rate holds only a few ticks, so the differences are pooled over blocks.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

MIN_CLEAN = 3  # steps without a tick a block needs for its reference median


@dataclass(frozen=True)
class BlockTicks:
    """One block: each overlapping step's excess over the block's median clean step."""

    excess: tuple[float, ...]  # seconds, one per step that met a tick
    steps: int


def block_ticks(ends: Sequence[float], ticks: Sequence[tuple[float, float]]) -> BlockTicks | None:
    """``ends``: the block's start, then the time each step ended; ``ticks``: the (start, end) of
    each sampler tick. A step overlaps a tick when their intervals meet. None without enough
    clean steps to compare with."""
    overlapping: list[float] = []
    clean: list[float] = []
    spans = sorted(ticks)
    j = 0
    for begin, end in itertools.pairwise(ends):
        while j < len(spans) and spans[j][1] < begin:
            j += 1  # ticks that ended before this step can meet no later step either (one
            # sampler thread: its ticks never overlap, so sorted by start is sorted by end)
        hit = any(a < end and b > begin for a, b in spans[j:j + 4])
        (overlapping if hit else clean).append(end - begin)
    if len(clean) < MIN_CLEAN:
        return None
    reference = statistics.median(clean)
    return BlockTicks(tuple(d - reference for d in overlapping), len(overlapping) + len(clean))


def tick_interference(blocks: Sequence[BlockTicks]) -> tuple[float, float] | None:
    """(seconds the sampler added per step on average, share of steps it overlapped) over
    blocks: the median excess of an overlapping step times the share of such steps; None
    before any step met a tick."""
    excess = [e for b in blocks for e in b.excess]
    steps = sum(b.steps for b in blocks)
    if not excess or not steps:
        return None
    share = len(excess) / steps
    return statistics.median(excess) * share, share
