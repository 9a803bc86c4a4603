"""The report picture's look: colours (the terminal UI's), geometry, fonts, and the few SVG
primitives every part of it is drawn with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from html import escape

from vramtop.sinks.report_timeline import UNATTRIBUTED

# The terminal UI's colours (vramtop/ui/widgets/bill.py CATEGORY_STYLES) as SVG colours.
CATEGORY_COLOURS = {
    "parameters (trainable)": "#1f4fa8",  # bold blue
    "parameters (frozen)": "#6f9de3",  # blue
    "gradients": "#d35fd0",  # magenta
    "optimizer state": "#7e2a8f",  # bold magenta
    "other persistent": "#e3bf1e",  # yellow
    "activations & temporaries": "#2e9e4f",  # bold green
    UNATTRIBUTED: "#a9dbb4",  # pale green: allocated, before the agent's first census
    "allocator cache": "#a0a0a0",  # grey62
    "non-PyTorch": "#d64541",  # red
}
ABOVE_ALLOCATED = ("allocator cache", "non-PyTorch")  # the layers stacked on top of allocated memory
LEGEND_NAMES = {
    "activations & temporaries": "activations & temporaries (derived)",
    "non-PyTorch": "non-PyTorch (CUDA context, libraries)",
}
# Processes of a GPU without an agent, stacked.
PROCESS_COLOURS = ("#4e79a7", "#76b7b2", "#59a14f", "#9c755f", "#edc948", "#b07aa1", "#ff9da7", "#bab0ac")
GPU_LINE = "#111111"
PROCESS_LINE = "#555555"
CEILING = "#c62828"
EVENT_COLOURS = {"oom": "#c62828", "warning": "#e07b00"}
EVENT_DEFAULT = "#666666"
TEXT = "#222222"
MUTED = "#666666"
GRID = "#e4e4e4"
Scale = Callable[[float], float]  # data to picture coordinates
FONT = "DejaVu Sans, Verdana, Helvetica, Arial, sans-serif"

WIDTH = 1000
LEFT = 76  # plot area
RIGHT = WIDTH - 28
PLOT_HEIGHT = 280
TITLE_HEIGHT = 40  # page title
STEP_BAND = 22  # steps, between the panel title and the plot
MIN_SPAN_S = 1.0  # the shortest time a chart spans (a recording of one sample has none)
ZOOM_SCALE_BELOW = 0.6  # a close-up whose data stays under this part of memory.total scales to its data
ZOOM_BELOW = 0.6  # an agent that reported for less than this part of the recording gets a zoom


@dataclass
class Canvas:
    parts: list[str]

    def add(self, text: str) -> None:
        self.parts.append(text)


def text_width(text: str, size: float) -> float:
    """Rough width of ``text`` in the sans-serif fonts above."""
    return len(text) * size * 0.6


def clip_text(text: str, size: float, width: float) -> str:
    limit = max(4, int(width / (size * 0.6)))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def svg_text(x: float, y: float, text: str, *, size: float = 12, anchor: str = "start", fill: str = TEXT,
       weight: str | None = None, extra: str = "") -> str:
    bold = f' font-weight="{weight}"' if weight else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size:g}" text-anchor="{anchor}" fill="{fill}"'
            f'{bold}{extra}>{escape(text)}</text>')
