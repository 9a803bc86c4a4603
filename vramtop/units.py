"""Formatting of byte counts and rates for people."""

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
