"""A Static that redraws only when its content changes."""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual.widgets import Static

MIN_WIDTH = 40  # what a panel is laid out for before it knows its width


class Panel(Static):
    """Every sample re-renders the whole view; an unchanged panel is not redrawn, so the
    terminal gets no bytes for it (this is most of what keeps the monitor's CPU low).

    Content laid out for the panel's width goes through :meth:`redraw_for_width`, which draws it
    again when the width changes: the first sample can arrive before the first layout, and a
    hidden panel has no width at all."""

    _drawn: Text | None = None
    _content_for: Callable[[int], Text] | None = None  # the content as a function of the width
    _width = 0  # the width it was last rendered for

    def redraw(self, content: Text) -> None:
        self._content_for = None
        self._put(content)

    def redraw_for_width(self, render: Callable[[int], Text]) -> None:
        self._content_for = render
        self._width = self.size.width
        self._put(render(max(self._width, MIN_WIDTH)))

    def on_resize(self) -> None:
        if self._content_for is not None and self.size.width != self._width:
            self.redraw_for_width(self._content_for)

    def _put(self, content: Text) -> None:
        if content != self._drawn:
            self._drawn = content
            self.update(content)
