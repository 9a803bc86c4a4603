"""The process table: every process on the shown GPUs, sortable, one row selectable."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from vramtop.model import MISMATCH, NOT_VISIBLE, ProcessSample, Sample
from vramtop.sinks.once import process_label
from vramtop.units import fmt_bytes, mib, percent

SORTS: dict[str, Callable[[ProcessSample], Any]] = {
    "gpu memory": lambda p: (-(p.used_memory or 0), p.pid),
    "host rss": lambda p: (-(p.host_rss or 0), p.pid),
    "pid": lambda p: p.pid,
    "user": lambda p: (p.user or "~", p.pid),
}
SORT_NAMES = list(SORTS)

WIDE = ("GPU", "PID", "USER", "TYPE", "GPU MEM", "%MEM", "HOST RSS", "COMMAND")
NARROW = ("GPU", "PID", "USER", "GPU MEM", "RSS", "COMMAND")


def row_key(p: ProcessSample) -> str:
    return f"{p.gpu_uuid}:{p.pid}"


def visible_processes(sample: Sample, gpu: str | None, sort: str) -> list[tuple[int, ProcessSample]]:
    """(GPU index, process) pairs for the selected GPU (or all), in ``sort`` order."""
    pairs = [(g.index, p) for g in sample.gpus if gpu in (None, g.uuid) for p in g.processes]
    key = SORTS[sort]
    return sorted(pairs, key=lambda pair: key(pair[1]))


class ProcessTable(DataTable[Any]):
    """Rebuilt from each sample; the cursor stays on the same process across refreshes."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)
        self._narrow: bool | None = None
        self._totals: dict[str, int | None] = {}

    def show(self, sample: Sample, gpu: str | None, sort: str, narrow: bool) -> None:
        selected = self.selected_key()
        if narrow != self._narrow:
            self.clear(columns=True)
            self.add_columns(*(NARROW if narrow else WIDE))
            self._narrow = narrow
        else:
            self.clear()
        self._totals = {g.uuid: g.memory_total for g in sample.gpus}
        rows = visible_processes(sample, gpu, sort)
        for index, proc in rows:
            self.add_row(*self._cells(index, proc, narrow), key=row_key(proc))
        if not rows:
            return
        keys = [row_key(p) for _, p in rows]
        self.move_cursor(row=keys.index(selected) if selected in keys else 0, animate=False)

    def selected_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            return str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)
        except Exception:  # noqa: BLE001 - no valid cursor yet
            return None

    def _cells(self, gpu_index: int, p: ProcessSample, narrow: bool) -> Iterable[Any]:
        gpu_mem = Text("N/A" if p.used_memory is None else f"{mib(p.used_memory)} MiB", justify="right")
        label = process_label(p)
        command = Text(label, style="italic yellow" if p.visibility in (NOT_VISIBLE, MISMATCH) else "")
        user = (p.user or "?")[: 8 if narrow else 12]
        rss = Text(fmt_bytes(p.host_rss), justify="right")
        if narrow:
            return (str(gpu_index), str(p.pid), user, gpu_mem, rss, command)
        pct = percent(p.used_memory, self._totals.get(p.gpu_uuid))
        share = Text("N/A" if pct is None else f"{pct:.1f}%", justify="right")
        return (str(gpu_index), str(p.pid), user, p.kind, gpu_mem, share, rss, command)
