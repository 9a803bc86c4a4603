"""A leak's line: a robust fit of persistent memory at step boundaries against steps and time."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple


class LeakPoint(NamedTuple):
    step: int
    time: float
    persistent: int  # bytes allocated at the step boundary


@dataclass(frozen=True)
class LeakFit:
    """A robust line through persistent memory at step boundaries."""

    points: int
    steps: int  # optimizer steps spanned
    seconds: float  # time spanned
    per_step: float  # bytes per optimizer step (Theil-Sen: median of pairwise slopes)
    per_second: float  # bytes per second (Theil-Sen over time)
    growth: float  # per_step * steps: bytes the line rises over the window
    monotone: float  # rising pairs / (rising + falling pairs); 0.5 for flat noise
    largest_jump: float  # the largest single increment as a share of the growth
    noise: float  # median absolute residual, bytes


def fit_leak(points: Sequence[LeakPoint]) -> LeakFit | None:
    """Theil-Sen slopes against steps and time, and how monotone the series is.

    Theil-Sen ignores up to ~29% outliers (an evaluation that briefly holds memory at a step
    boundary); pair concordance, unlike "share of increments that rise", accepts a staircase
    leak that grows every few steps and rejects flat noise.
    """
    n = len(points)
    if n < 3:
        return None
    by_step: list[float] = []
    by_time: list[float] = []
    up = down = 0
    for i in range(n):
        si, ti, yi = points[i]
        for j in range(i + 1, n):
            sj, tj, yj = points[j]
            dy = yj - yi
            if sj != si:
                by_step.append(dy / (sj - si))
            if tj != ti:
                by_time.append(dy / (tj - ti))
            if dy > 0:
                up += 1
            elif dy < 0:
                down += 1
    if not by_step or not by_time:
        return None
    per_step = statistics.median(by_step)
    per_second = statistics.median(by_time)
    steps = points[-1].step - points[0].step
    growth = per_step * steps
    intercept = statistics.median(p.persistent - per_step * p.step for p in points)
    noise = statistics.median(abs(p.persistent - per_step * p.step - intercept) for p in points)
    jump = max(points[i + 1].persistent - points[i].persistent for i in range(n - 1))
    return LeakFit(
        points=n,
        steps=steps,
        seconds=points[-1].time - points[0].time,
        per_step=per_step,
        per_second=per_second,
        growth=growth,
        monotone=up / (up + down) if up + down else 0.5,
        largest_jump=jump / growth if growth > 0 else 1.0,
        noise=noise,
    )
