"""The Prometheus text exposition format (version 0.0.4), read: what ``vramtop --remote`` needs
from another host's exporter, with the standard library only (the monitor does not depend on
the exporter's package or on prometheus-client).

Each sample line is ``name{label="value",...} value [timestamp]``; ``#`` lines are comments
(HELP and TYPE say nothing the reader needs). A line that does not parse is skipped and counted:
one odd line never costs the whole scrape.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,)?')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclass(frozen=True)
class Metric:
    name: str
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class Exposition:
    metrics: tuple[Metric, ...]
    skipped: int = 0  # lines that did not parse

    def named(self, name: str) -> list[Metric]:
        return [m for m in self.metrics if m.name == name]


def parse(text: str) -> Exposition:
    metrics, skipped = [], 0
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        metric = parse_line(line)
        if metric is None:
            skipped += 1
        else:
            metrics.append(metric)
    return Exposition(tuple(metrics), skipped)


def parse_line(line: str) -> Metric | None:
    """One sample line; None when it is not one."""
    name = _NAME.match(line)
    if name is None:
        return None
    rest = line[name.end():]
    labels: dict[str, str] = {}
    if rest.startswith("{"):
        position = 1
        while True:
            if rest[position:].lstrip().startswith("}"):
                position = rest.index("}", position) + 1
                break
            label = _LABEL.match(rest, position)
            if label is None:
                return None
            labels[label[1]] = re.sub(r"\\[\\\"n]", lambda m: _ESCAPES[m[0]], label[2])
            position = label.end()
            if label[3] is None and not rest[position:].lstrip().startswith("}"):
                return None  # no comma: the closing brace must follow
        rest = rest[position:]
    fields = rest.split()
    if not fields or len(fields) > 2:
        return None
    value = _number(fields[0])
    return None if value is None else Metric(name[0], labels, value)


def _number(text: str) -> float | None:
    try:
        value = float(text)  # also "NaN", "+Inf", "-Inf", as the format writes them
    except ValueError:
        return None
    return value if not math.isnan(value) else None
