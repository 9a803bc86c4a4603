"""Command-line value types shared by the commands (kept apart from the composition root in
``vramtop.cli``, which the commands do not import for their options)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


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
