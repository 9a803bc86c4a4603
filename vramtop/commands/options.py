"""Command-line value types shared by the commands (kept apart from the composition root in
``vramtop.cli``, which the commands do not import for their options)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
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


def thresholds_from(args: argparse.Namespace) -> Any:
    """The risk thresholds the command line asks for (imported lazily: --help stays fast)."""
    from vramtop.analysis.risk import Thresholds, with_overrides

    margin = args.margin / 100
    base = Thresholds(margin=margin, critical_margin=margin / 3)
    try:
        return with_overrides(base, getattr(args, "threshold", None) or [])
    except ValueError as err:
        raise VramtopError(f"--threshold: {err}", EXIT_USAGE) from None


def need_terminal(what: str, instead: str) -> None:
    """The one check and wording for commands that draw a screen: ``what`` needs a terminal;
    ``instead`` says what works without one."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise VramtopError(f"{what} needs a terminal; {instead}", EXIT_USAGE)
