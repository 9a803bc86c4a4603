"""Presentation helpers the UI and the sinks share: byte counts, rates, times, durations, process
labels, sparklines."""

from __future__ import annotations

import time

from vramtop.model import MISMATCH, NOT_VISIBLE, ProcessSample

MiB = 1024 * 1024
GiB = 1024 * MiB


def mib(nbytes: int) -> int:
    """Bytes as whole MiB, rounded up: the rounding nvidia-smi uses for memory.used/free."""
    return -(-nbytes // MiB)


def fmt_mib(nbytes: int | None) -> str:
    return "N/A" if nbytes is None else f"{mib(nbytes)} MiB"


def fmt_bytes(nbytes: int | None) -> str:
    """Compact human size: 512 MiB, 1.5 GiB, 80 GiB."""
    if nbytes is None:
        return "N/A"
    if abs(nbytes) < GiB:
        return f"{mib(nbytes) if nbytes >= 0 else -mib(-nbytes)} MiB"
    gib = nbytes / GiB
    return f"{gib:.1f} GiB" if abs(gib) < 100 else f"{gib:.0f} GiB"


def fmt_rate(bytes_per_s: int | None) -> str:
    if bytes_per_s is None:
        return "N/A"
    if bytes_per_s >= 1e9:
        return f"{bytes_per_s / 1e9:.1f} GB/s"
    return f"{bytes_per_s / 1e6:.0f} MB/s"


def percent(part: int | None, whole: int | None) -> float | None:
    if part is None or not whole:
        return None
    return 100.0 * part / whole


def clock(t: float | None, fmt: str = "%H:%M:%S") -> str:
    """A local time as ``fmt``; "?" for a time the platform cannot show (a damaged recording's
    year 30 billion ends in OverflowError or OSError, not in a date)."""
    if t is None:
        return "?"
    try:
        return time.strftime(fmt, time.localtime(t))
    except (OverflowError, OSError, ValueError):
        return "?"


def process_label(p: ProcessSample) -> str:
    """A process row's command, or why there is none."""
    if p.visibility == NOT_VISIBLE:
        return "(PID not visible on this host: another container or namespace)"
    if p.visibility == MISMATCH:
        return "(PID belongs to another process here: GPU process is in another PID namespace)"
    return p.command or p.name or "?"


def fmt_eta(seconds: float) -> str:
    """A time ahead, rounded as a person would say it: 45 s, 12 min, 3.5 h, 4 days."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


BLOCKS = " ▁▂▃▄▅▆▇█"


def sparkline(values: list[int], width: int, top: int | None = None) -> str:
    """The last ``width`` values as block characters, scaled to ``top`` (default: their max).

    Newest on the right; a short history starts at the left edge and grows rightwards.
    """
    if width <= 0:
        return ""
    values = values[-width:]
    scale = top if top else max(values, default=0)
    if not scale:
        return (BLOCKS[1] * len(values)).ljust(width)
    steps = len(BLOCKS) - 1
    # Any non-zero value gets at least the lowest bar, so "a little" never reads as "nothing".
    chars = [BLOCKS[max(1 if v > 0 else 0, min(steps, round(v / scale * steps)))] for v in values]
    return "".join(chars).ljust(width)
