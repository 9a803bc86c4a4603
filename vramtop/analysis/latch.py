"""A warning's latch: raised after its condition held for a few samples, lowered after its
weaker clear condition failed for a few more (events raise at once and are held a while), so
what the user sees does not flicker. Time comes from the samples; nothing here reads a clock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vramtop.analysis.thresholds import Thresholds

if TYPE_CHECKING:
    from vramtop.analysis.warning import RiskWarning

INFO, WARNING, CRITICAL = "info", "warning", "critical"
LEVELS = (INFO, WARNING, CRITICAL)
RANK: dict[str | None, int] = {None: 0, INFO: 1, WARNING: 2, CRITICAL: 3}
LEVEL: dict[int, str | None] = {v: k for k, v in RANK.items()}


@dataclass(frozen=True)
class Finding:
    """What a rule says about one subject in one sample."""

    want: str | None  # the level whose raise condition holds now
    keep: str | None  # the highest level whose clear condition has not failed
    warning: RiskWarning | None  # the content, whenever keep (or want) is not None
    immediate: bool = False  # events: raise at once
    hold: float = 0.0  # events: seconds to keep the level afterwards


NOTHING = Finding(None, None, None)


@dataclass
class Latch:
    level: str | None = None
    up: int = 0
    down: int = 0
    since: float | None = None
    hold_until: float = float("-inf")
    hold_level: str | None = None
    content: RiskWarning | None = None

    def step(self, f: Finding, now: float, t: Thresholds) -> None:
        if f.warning is not None:
            self.content = f.warning
        if f.hold and f.want is not None:
            held = RANK[self.hold_level] if now < self.hold_until else 0
            self.hold_until = now + f.hold
            self.hold_level = LEVEL[max(RANK[f.want], held)]
        want = RANK[f.want]
        keep = max(want, RANK[f.keep], RANK[self.hold_level] if now < self.hold_until else 0)
        current = RANK[self.level]
        if want > current:
            self.up += 1
            if f.immediate or self.up >= t.raise_after:
                self.level, self.up, self.down = f.want, 0, 0
                if current == 0:
                    self.since = now
                return
        else:
            self.up = 0
        if keep < current:
            self.down += 1
            if self.down >= t.clear_after:
                self.level, self.down = LEVEL[keep], 0
                if keep == 0:
                    self.since = None
        else:
            self.down = 0
