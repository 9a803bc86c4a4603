"""The process table: every process on the shown GPUs, sortable, one row selectable."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from rich.text import Text
from textual.coordinate import Coordinate
from textual.geometry import Region
from textual.widgets import DataTable
from typing_extensions import Self

from vramtop.analysis.join import join
from vramtop.model import MISMATCH, NOT_VISIBLE, AgentDevice, ProcessSample, Sample
from vramtop.units import fmt_bytes, mib, percent, process_label

SORTS: dict[str, Callable[[ProcessSample], Any]] = {
    "gpu memory": lambda p: (-(p.used_memory or 0), p.pid),
    "host rss": lambda p: (-(p.host_rss or 0), p.pid),
    "pid": lambda p: p.pid,
    "user": lambda p: (p.user or "~", p.pid),
}
SORT_NAMES = list(SORTS)

# (label, width) of every column but the last, COMMAND, which takes the rest of the row. Fixed
# widths keep the columns still from one refresh to the next, and do not depend on the table
# measuring its cells when idle (which a busy live feed can postpone for seconds).
WIDE_COLUMNS = (("GPU", 3), ("PID", 8), ("USER", 12), ("TYPE", 4), ("GPU MEM", 10), ("%MEM", 6),
                ("TORCH ALLOC/RSV", 19), ("HOST RSS", 9))
NARROW_COLUMNS = (("GPU", 3), ("PID", 8), ("USER", 8), ("GPU MEM", 10), ("RSS", 8))
WIDE = (*(label for label, _ in WIDE_COLUMNS), "COMMAND")
NARROW = (*(label for label, _ in NARROW_COLUMNS), "COMMAND")
MIN_COMMAND = 16
AGENT_MARK = "●"  # the process runs the vramtop agent: its bill is in the detail pane


def row_key(p: ProcessSample) -> str:
    return f"{p.gpu_uuid}:{p.pid}"


def visible_processes(sample: Sample, gpu: str | None, sort: str) -> list[tuple[int, ProcessSample]]:
    """(GPU index, process) pairs for the selected GPU (or all), in ``sort`` order."""
    pairs = [(g.index, p) for g in sample.gpus if gpu in (None, g.uuid) for p in g.processes]
    key = SORTS[sort]
    return sorted(pairs, key=lambda pair: key(pair[1]))


class ProcessTable(DataTable[Any]):
    """Rebuilt from each sample when what it shows changed; the cursor stays on the same
    process across refreshes."""

    _cells_only = False  # while cells are rewritten: repaint those cells, not the table

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)
        self._narrow: bool | None = None
        self._layout_width = 0  # the table width the columns were laid out for
        self._last: tuple[Sample, str | None, str, bool] | None = None
        self._totals: dict[str, int | None] = {}
        self._hosts: dict[str, str] = {}  # another host's GPUs (--remote), by UUID: their host
        self._agents: dict[tuple[str, int], AgentDevice] = {}  # (GPU UUID, host PID), from the join
        self._shown: list[tuple[str, tuple[Any, ...]]] | None = None
        self.focus_pid: int | None = None  # `vramtop attach PID`: start on this process
        self._rendered: dict[tuple[Any, ...], Any] = {}  # rendered cells, by content (see _render_cell)

    def show(self, sample: Sample, gpu: str | None, sort: str, narrow: bool) -> None:
        self._last = (sample, gpu, sort, narrow)
        selected = self.selected_key()
        self._totals = {g.uuid: g.memory_total for g in sample.gpus}
        self._hosts = {g.uuid: g.host for g in sample.gpus if g.host}
        self._agents = {m.key: m.device for m in join(sample).matches if m.key is not None}
        rows = visible_processes(sample, gpu, sort)
        content = [(row_key(p), tuple(self._cells(i, p, narrow))) for i, p in rows]
        width = self.size.width
        same_layout = narrow == self._narrow and width == self._layout_width
        if same_layout and content == self._shown:
            return  # nothing on screen would change: skip the redraw
        if same_layout and self._shown is not None and [k for k, _ in content] == [k for k, _ in self._shown]:
            self._update_cells(content)  # the same rows: rewrite the changed cells only
            return
        if narrow != self._narrow or width != self._layout_width:
            self.clear(columns=True)
            columns = NARROW_COLUMNS if narrow else WIDE_COLUMNS
            # Labels as Text: a str would be parsed as markup, and that loads rich's table of
            # emoji names (4 ms) on the way to the first frame, for labels that hold none.
            for label, column_width in columns:
                self.add_column(Text(label), width=column_width)
            # Each column is padded by one cell on either side.
            used = sum(w + 2 * self.cell_padding for _, w in columns) + 2 * self.cell_padding
            self.add_column(Text("COMMAND"), width=max(MIN_COMMAND, width - used))
            self._narrow = narrow
            self._layout_width = width
        else:
            self.clear()
        self._shown = content
        for key, cells in content:
            self.add_row(*cells, key=key)
        if not rows:
            return
        keys = [key for key, _ in content]
        if selected not in keys and self.focus_pid is not None:
            selected = next((k for k in keys if k.endswith(f":{self.focus_pid}")), selected)
        self.move_cursor(row=keys.index(selected) if selected in keys else 0, animate=False)

    def _update_cells(self, content: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Rewrite in place the cells that changed: no rebuild, so the cursor and the scroll
        stay, and no "row highlighted" event redraws the details."""
        columns = [c.key for c in self.ordered_columns]
        changed_cells = []
        self._cells_only = True
        try:
            for row, ((key, cells), (_, before)) in enumerate(zip(content, self._shown or [], strict=True)):
                for column, (column_key, new, old) in enumerate(zip(columns, cells, before, strict=False)):
                    if new != old:
                        self.update_cell(key, column_key, new)
                        changed_cells.append(Coordinate(row, column))
        finally:
            self._cells_only = False
        for cell in changed_cells:
            self.refresh_coordinate(cell)
        self._shown = content

    def refresh(self, *regions: Region, repaint: bool = True, layout: bool = False,
                recompose: bool = False) -> Self:
        # update_cell repaints the whole table (its header and every row) for one changed cell;
        # _update_cells repaints the cells it changed instead.
        if self._cells_only and not regions and repaint and not layout and not recompose:
            return self
        return super().refresh(*regions, repaint=repaint, layout=layout, recompose=recompose)

    def on_resize(self) -> None:
        if self._last is not None and self.size.width != self._layout_width:
            self.show(*self._last)  # COMMAND takes the new width

    def _render_cell(self, row_index: int, column_index: int, base_style: Any, width: int,
                     cursor: bool = False, hover: bool = False) -> Any:
        # DataTable keys its cell cache on a table-wide update counter, so one changed cell (a
        # process's memory) re-renders every visible cell: half the monitor's time on a box of 64
        # processes. Cells whose content, place and look are unchanged are reused instead.
        try:
            row_key = self._row_locations.get_key(row_index) if row_index >= 0 else None
            column_key = self._column_locations.get_key(column_index) if column_index >= 0 else None
            value = self._data[row_key][column_key] if row_key is not None and column_key is not None else None
            content = ((value.plain, tuple(value.spans), str(value.style), value.justify, value.overflow)
                       if isinstance(value, Text) else value)
            key = (row_key, column_key, row_index, column_index, content, base_style, width, cursor, hover,
                   self._show_hover_cursor, self._pseudo_class_state)
            hash(key)
        except Exception:  # a Textual whose internals differ: its own path
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        cached = self._rendered.get(key)
        if cached is None:
            if len(self._rendered) > 4096:
                self._rendered.clear()
            cached = self._rendered[key] = super()._render_cell(row_index, column_index, base_style, width,
                                                             cursor, hover)
        return cached

    def selected_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            return str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)
        except Exception:
            return None

    def _cells(self, gpu_index: int, p: ProcessSample, narrow: bool) -> Iterable[Any]:
        agent = self._agents.get((p.gpu_uuid, p.pid))
        pid = Text(f"{AGENT_MARK}{p.pid}", style="bold green") if agent else Text(f" {p.pid}")
        gpu_mem = Text("N/A" if p.used_memory is None else f"{mib(p.used_memory)} MiB", justify="right")
        label = process_label(p)
        if p.gpu_uuid in self._hosts:  # its PID is another host's: say where, before anything else
            label = f"[{self._hosts[p.gpu_uuid]}] {label}"
        command = Text(label, style="italic yellow" if p.visibility in (NOT_VISIBLE, MISMATCH) else "")
        user = _plain((p.user or "?")[: 8 if narrow else 12])
        rss = Text(fmt_bytes(p.host_rss), justify="right")
        if narrow:
            return (_plain(str(gpu_index)), pid, user, gpu_mem, rss, command)
        pct = percent(p.used_memory, self._totals.get(p.gpu_uuid))
        share = Text("N/A" if pct is None else f"{pct:.1f}%", justify="right")
        torch = Text("", justify="right")
        if agent is not None:
            torch = Text(f"{fmt_bytes(agent.stats.allocated)}/{fmt_bytes(agent.stats.reserved)}", justify="right",
                         style="green")
        return (_plain(str(gpu_index)), pid, user, _plain(p.kind), gpu_mem, share, torch, rss, command)


def _plain(text: str) -> Text:
    """A cell of plain text, as DataTable draws a str on a one-line row, but never read as markup:
    a str would load rich's table of emoji names (4 ms) on the way to the first frame."""
    return Text(text, no_wrap=True, end="")
