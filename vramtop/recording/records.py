"""The records of a recording (format: vramtop/recording/__init__.py, docs/recording.md): their
types as read back, and the dictionaries and lines a writer appends."""

from __future__ import annotations

import json
import time as _time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vramtop import __version__
from vramtop.codec import to_dict
from vramtop.model import Sample
from vramtop.protocol import RECORDING_SCHEMA, RECORDING_VERSION

HEADER = "header"
SAMPLE = "sample"
EVENT = "event"
END = "end"


@dataclass(frozen=True)
class RecordedGpu:
    """A GPU as the header lists it."""

    index: int
    uuid: str
    name: str
    memory_total: int | None = None


@dataclass(frozen=True)
class Header:
    """What the recording is: who wrote it, where, of which GPUs, how often."""

    version: int
    started: float
    interval: float | None = None
    vramtop: str | None = None
    host: str | None = None
    driver: str | None = None
    cuda_driver: str | None = None
    gpus: tuple[RecordedGpu, ...] = ()
    command: tuple[str, ...] | None = None
    pid: int | None = None  # recorded with --pid: only this process


@dataclass(frozen=True)
class Event:
    """Something that happened at one instant (a command started, a step ended, an OOM)."""

    time: float
    kind: str
    pid: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class End:
    """The recording was closed on purpose; ``samples`` is how many were written."""

    time: float
    samples: int
    reason: str = ""


def header_record(first: Sample, *, interval: float | None, command: Sequence[str] | None,
                  started: float | None = None, pid: int | None = None) -> dict[str, Any]:
    """The header for a recording whose first sample is ``first``."""
    return {
        "type": HEADER,
        "schema": RECORDING_SCHEMA,
        "version": RECORDING_VERSION,
        "vramtop": __version__,
        "host": first.host.hostname,
        "driver": first.driver_version,
        "cuda_driver": first.cuda_driver_version,
        "gpus": [
            {"index": g.index, "uuid": g.uuid, "name": g.name, "memory_total": g.memory_total}
            for g in first.gpus
        ],
        "interval": interval,
        "started": first.time if started is None else started,
        "command": None if command is None else list(command),
        "pid": pid,  # `record --pid`: the one process recorded (None: all of them)
    }


def sample_record(sample: Sample) -> dict[str, Any]:
    return {"type": SAMPLE, "sample": to_dict(sample)}


def event_record(kind: str, data: dict[str, Any] | None = None, *, pid: int | None = None,
                 time: float | None = None) -> dict[str, Any]:
    return {"type": EVENT, "time": _time.time() if time is None else time, "kind": kind,
            "pid": pid, "data": dict(data or {})}


def end_record(samples: int, reason: str, *, time: float | None = None) -> dict[str, Any]:
    return {"type": END, "time": _time.time() if time is None else time, "samples": samples,
            "reason": reason}


def encode(record: dict[str, Any]) -> bytes:
    """One record as one line. ASCII-escaped: command lines may hold undecodable bytes."""
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"
