"""Command-line value types shared by the commands (kept apart from the composition root in
``vramtop.cli``, which the commands do not import for their options)."""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from typing import Any

from vramtop.errors import EXIT_USAGE, VramtopError


def bounded(low: float, high: float, unit: str = "") -> Callable[[str], float]:
    """An argparse type: a finite number from ``low`` to ``high``, with a message naming the range."""
    suffix = f" {unit}" if unit else ""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number{' of ' + unit if unit else ''}: {text!r}") from None
        if not low <= value <= high:  # NaN fails too
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}{suffix}")
        return value

    return parse


PID_MAX = 2**31 - 1  # what a pid_t holds; os.kill and psutil raise OverflowError past it


def process_id(text: str) -> int:
    """An argparse type: a process ID, a whole number from 1 to PID_MAX."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 0 < value <= PID_MAX:
        raise argparse.ArgumentTypeError(f"not a process ID: {text!r}")
    return value


def thresholds_from(args: argparse.Namespace) -> Any:
    """The risk thresholds the command line asks for (imported lazily: --help stays fast)."""
    from vramtop.analysis.thresholds import Thresholds

    margin = args.margin / 100
    base = Thresholds(margin=margin, critical_margin=margin / 3)
    try:
        return with_overrides(base, getattr(args, "threshold", None) or [])
    except ValueError as err:
        raise VramtopError(f"--threshold: {err}", EXIT_USAGE) from None


def with_other_hosts(local: Any, args: argparse.Namespace) -> Any:
    """``local`` plus the hosts of --remote and --prometheus, when any is given. Their reader
    (urllib, the exporter's parsers) is imported only then: it is not on the way to the first
    frame of a monitor of this host."""
    if not (args.remote or args.prometheus):
        return local
    from vramtop.sources.remote import with_remotes

    return with_remotes(local, args.remote, args.prometheus)


def need_terminal(what: str, instead: str) -> None:
    """The one check and wording for commands that draw a screen: ``what`` needs a terminal;
    ``instead`` says what works without one."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise VramtopError(f"{what} needs a terminal; {instead}", EXIT_USAGE)


_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}
# Thresholds that are shares of something (of the device, of a trend's pairs): from 0 to 1.
_SHARES = {"critical_margin", "clear_band", "leak_monotone", "leak_monotone_clear", "leak_max_jump", "frag_ratio",
           "frag_clear_ratio", "frag_min_share", "neighbour_min_share"}


def with_overrides(thresholds: Any, settings: Sequence[str]) -> Any:
    """``thresholds`` with ``NAME=VALUE`` settings applied (``--threshold``): whole numbers for
    counts, bytes with an optional KiB/MiB/GiB suffix, plain numbers otherwise; ValueError with
    the valid names for anything else."""
    types = {f.name: f.type for f in fields(thresholds) if f.name != "margin"}  # --margin sets it
    changes: dict[str, Any] = {}
    for setting in settings:
        name, sep, text = setting.partition("=")
        name, text = name.strip(), text.strip().replace(" ", "")
        if not sep or name not in types:
            raise ValueError(f"{setting!r}: expected NAME=VALUE with NAME one of {', '.join(types)}")
        if types[name] in (int, "int"):
            match = re.fullmatch(r"([0-9]{1,15}(?:\.[0-9]{1,9})?)([A-Za-z]*)", text)
            if match is None or match[2].lower() not in _UNITS:
                raise ValueError(f"{setting!r}: {name} takes a whole number of at most 15 digits "
                                 "(bytes may end in KiB, MiB, GiB)")
            changes[name] = int(float(match[1]) * _UNITS[match[2].lower()])
        else:
            try:
                changes[name] = float(text)
            except (ValueError, OverflowError):
                raise ValueError(f"{setting!r}: {name} takes a number") from None
            if not math.isfinite(changes[name]):
                raise ValueError(f"{setting!r}: {name} takes a finite number")
        if changes[name] < 0:
            raise ValueError(f"{setting!r}: must not be negative")
        if name in _SHARES and changes[name] > 1:
            raise ValueError(f"{setting!r}: {name} is a share, from 0 to 1")
    return replace(thresholds, **changes)
