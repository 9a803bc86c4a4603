"""The rank view: a distributed job as one group, a line per rank with its GPU, the bill at its
step peak, the headroom left then and its step; the header names the rank closest to OOM and the
spread of the peaks (a skewed rank is the usual cause of "only rank 3 OOMs")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.text import Text

from vramtop.ui.widgets.gpus import FREE, USED, memory_style
from vramtop.ui.widgets.panel import Panel
from vramtop.units import fmt_bytes

if TYPE_CHECKING:
    from vramtop.analysis.jobs import Job, RankState

CLOSEST = "◀ nearest OOM"
PID_WIDTH = 130  # below this many columns the rank lines leave the PID out (the table has it)
HIGHEST = "▲ highest peak"


class RankView(Panel):
    """Hidden without a job of two ranks or more; folded, it is the jobs' header lines only."""

    def show(self, found: Sequence[Job], expanded: bool, narrow: bool) -> None:
        shown = tuple(j for j in found if len(j.ranks) >= 2)
        self.display = bool(shown)
        if shown:
            self.redraw_for_width(lambda width: rank_view(shown, expanded, narrow, width))


def rank_view(found: Sequence[Job], expanded: bool, narrow: bool, width: int) -> Text:
    lines: list[Text] = []
    for job in found:
        lines.append(_header(job, expanded, narrow))
        if expanded:
            lines.extend(_rank_line(job, r, narrow, width) for r in job.ranks)
    return Text("\n").join(lines)


def _header(job: Job, expanded: bool, narrow: bool) -> Text:
    t = Text(no_wrap=True, overflow="ellipsis")
    here = len(job.ranks)
    world = f"{here}/{job.world_size}" if job.world_size not in (None, here) else str(here)
    t.append(" job ", style="bold reverse")
    t.append(f" {world} ranks", style="bold")
    if not narrow:
        t.append(f"  {job.label}" + (" (grouped by world size)" if job.guessed else ""), style="dim")
    closest, spread = job.closest, job.spread
    if closest is not None and closest.headroom is not None:
        t.append("  closest to OOM " if not narrow else "  closest ", style="dim")
        t.append(f"rank {closest.rank}" + (f"@{closest.host}" if closest.host else ""), style="bold")
        t.append(f" {_room(closest.headroom)}", style=_room_style(closest))
    if spread is not None:
        t.append("  peak spread " if not narrow else "  spread ", style="dim")
        ratio = spread.ratio
        skewed = ratio is not None and ratio >= 1.05
        t.append(fmt_bytes(spread.gap) + (f" ×{ratio:.2f}" if ratio is not None else ""),
                 style="yellow" if skewed else "")
    t.append("  r: fold" if expanded else "  r: ranks", style="dim")
    return t


def _rank_line(job: Job, r: RankState, narrow: bool, width: int) -> Text:
    t = Text(no_wrap=True, overflow="ellipsis")
    closest, spread = job.closest, job.spread
    is_closest = closest is not None and closest is r and len(job.ranks) > 1
    t.append(f" rank {r.rank:>2}" if narrow else f"  rank {r.rank:>3}", style="bold" if is_closest else "")
    gpu = "?" if r.gpu_index is None else str(r.gpu_index)
    t.append(f"  GPU {gpu:>2}")
    if r.host:  # another host's rank: its exporter's figures, as of its last sample
        t.append(f" @{r.host}", style="bold magenta")
    if not narrow and width >= PID_WIDTH:
        t.append(f"  PID {r.pid:>7}", style="dim")
    bar_width = 16 if narrow else max(8, min(40, width - 120))
    t.append("  ")
    t.append_text(_peak_bar(r, bar_width))
    t.append(f" {fmt_bytes(r.peak):>9}")
    if r.limit and not narrow:
        t.append(f" of {fmt_bytes(r.limit):<8}", style="dim")
    if not narrow:
        t.append("  headroom", style="dim")
    t.append(f" {_room(r.headroom) if r.headroom is not None else 'N/A':>13}", style=_room_style(r))
    t.append("  step ", style="dim")
    t.append(str(r.step))
    if not narrow and r.agent.phase != "unknown":
        t.append(f" {r.agent.phase}", style="dim")
    if is_closest:
        t.append(f"  {CLOSEST}" if not narrow else "  ◀", style="bold red")
    elif spread is not None and spread.highest is r:
        t.append(f"  {HIGHEST}" if not narrow else "  ▲", style="yellow")
    return t


def _peak_bar(r: RankState, width: int) -> Text:
    """The rank's projected peak against its limit, to scale."""
    load, limit = r.load, r.limit
    if load is None or not limit:
        return Text(FREE * width, style="grey23")
    share = min(1.0, max(0.0, load / limit))
    cells = round(share * width)
    bar = Text()
    bar.append(USED * cells, style=memory_style(share))
    bar.append(FREE * (width - cells), style="grey23")
    return bar


def _room(headroom: int) -> str:
    return f"{fmt_bytes(headroom)} left" if headroom >= 0 else f"{fmt_bytes(-headroom)} short"


def _room_style(r: RankState) -> str:
    if r.headroom is None or not r.limit:
        return ""
    share = r.headroom / r.limit
    return "bold red" if share < 0.05 else "yellow" if share < 0.1 else "green"
