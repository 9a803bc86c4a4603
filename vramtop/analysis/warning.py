"""A risk warning, and its one encoding (``--once --json``, recordings, report and replay read it back)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vramtop.codec import DecodeError, from_dict

OOM, RETRIES, HEADROOM, LEAK, FRAGMENTATION, NEIGHBOUR = (
    "oom", "retries", "headroom", "leak", "fragmentation", "neighbour")
KINDS = (OOM, RETRIES, HEADROOM, LEAK, FRAGMENTATION, NEIGHBOUR)  # display order within a level


@dataclass(frozen=True)
class RiskWarning:
    """One warning: what, about whom, the numbers, and one thing to do."""

    level: str  # info | warning | critical
    kind: str  # one of KINDS
    gpu_uuid: str
    gpu_index: int | None
    pid: int | None  # the process concerned (the neighbour's, for a neighbour warning)
    title: str  # one line
    evidence: dict[str, float] = field(hash=False)  # numbers: bytes, ratios, seconds, counts
    sentence: str  # the evidence in words, with those numbers
    action: str  # one concrete thing to do
    since: float | None = None  # sample time at which it was raised

    @property
    def key(self) -> tuple[str, str, int | None]:
        return (self.kind, self.gpu_uuid, self.pid)


def warning_to_dict(w: RiskWarning) -> dict[str, Any]:
    """A warning as every writer writes it (``--once --json``, recordings): one encoding."""
    return {"level": w.level, "kind": w.kind, "gpu_uuid": w.gpu_uuid, "gpu_index": w.gpu_index, "pid": w.pid,
            "title": w.title, "evidence": dict(w.evidence), "sentence": w.sentence, "action": w.action,
            "since": w.since}


def warning_from_dict(data: Mapping[str, Any], pid: int | None = None) -> RiskWarning | None:
    """The warning ``warning_to_dict`` wrote (``pid`` from the record when the data has none);
    None for data that is not one (a damaged or foreign record)."""
    try:
        return from_dict(RiskWarning, {"pid": pid, "evidence": {}, **data})
    except (DecodeError, TypeError, ValueError):
        return None
