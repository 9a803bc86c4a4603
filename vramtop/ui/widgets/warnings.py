"""The warnings in force, most severe first: what, the numbers, and one thing to do."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text

from vramtop.ui.widgets.panel import Panel
from vramtop.units import fmt_bytes

if TYPE_CHECKING:
    from vramtop.analysis.advice import Advice
    from vramtop.analysis.risk import RiskWarning

LEVEL_STYLES = {"critical": "bold white on red", "warning": "bold black on yellow", "info": "bold white on blue"}
MAX_SHOWN = 4  # lines of warnings above the processes; 2 in a short terminal (see WarningList)
SHORT_TERMINAL = 30  # rows


def render_warnings(warnings: tuple[RiskWarning, ...], width: int, narrow: bool, limit: int = MAX_SHOWN) -> Text:
    lines = []
    if len(warnings) == limit + 1:
        limit += 1  # the last one takes no more room than the line that would count it
    for w in warnings[:limit]:
        line = Text()
        line.append(f" {w.level.upper()} ", style=LEVEL_STYLES.get(w.level, "bold"))
        line.append(f" {w.title}", style="bold")  # the title names the GPU and the process
        if not narrow:
            line.append(f" — {w.sentence}")
        line.append(" → ", style="dim")
        line.append(w.action, style="italic")
        line.truncate(width, overflow="ellipsis")
        lines.append(line)
    if len(warnings) > limit:
        lines.append(Text(f" … and {len(warnings) - limit} more (W shows them all)", style="dim"))
    return Text("\n").join(lines)


def render_warning_details(warnings: tuple[RiskWarning, ...]) -> Text:
    """Every warning in full, wrapped: what the list above the processes cuts at the edge."""
    out = Text()
    if not warnings:
        return Text("No warnings: nothing past its threshold.", style="dim")
    for i, w in enumerate(warnings):
        if i:
            out.append("\n\n")
        out.append(f" {w.level.upper()} ", style=LEVEL_STYLES.get(w.level, "bold"))
        out.append(f" {w.title}\n", style="bold")
        out.append(w.sentence + "\n")
        out.append("→ ", style="dim")
        out.append(w.action, style="italic")
    out.append("\n\nEsc closes · thresholds and reasons: docs/risk.md", style="dim")
    return out


def render_advice(advice: tuple[Advice, ...], narrow: bool) -> Text:
    """The levers, in the order to try them, each with what it would free at the peak."""
    out = Text()
    shown = advice[: 2 if narrow else 4]
    if not shown:
        return out
    out.append("\nadvice (in the order to try):", style="bold")
    for item in shown:
        out.append("\n • ")
        out.append(f"{item.lever} ", style="bold cyan")
        out.append(f"−{fmt_bytes(item.saves)} ", style="green")
        out.append(item.text, style="" if not item.conditional else "dim")
    return out


class WarningList(Panel):
    """Hidden when nothing is wrong (and then without a width: see Panel.redraw_for_width)."""

    def show(self, warnings: tuple[RiskWarning, ...], narrow: bool) -> None:
        self.display = bool(warnings)
        # In a short terminal (an 80x24 tmux pane) the processes and the bill need the rows.
        limit = 2 if self.app.size.height < SHORT_TERMINAL else MAX_SHOWN
        self.redraw_for_width(lambda width: render_warnings(warnings, width, narrow, limit))
