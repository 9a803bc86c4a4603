"""A Static that redraws only when its content changes."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class Panel(Static):
    """Every sample re-renders the whole view; an unchanged panel is not redrawn, so the
    terminal gets no bytes for it (this is most of what keeps the monitor's CPU low)."""

    _drawn: Text | None = None

    def redraw(self, content: Text) -> None:
        if content != self._drawn:
            self._drawn = content
            self.update(content)
