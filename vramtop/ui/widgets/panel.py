"""A Static that redraws only when its content changes."""

from __future__ import annotations

from collections.abc import Callable

from rich.cells import cell_len
from rich.console import Console
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
    _lines: int | None = None  # the rows the drawn content takes; None: not laid out yet

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
        if content == self._drawn:
            return
        # A layout of the whole screen costs more than drawing the panel (most of a frame's CPU
        # with a training job on screen): lines are wrapped here, so the panel's height is its
        # line count, and a layout is asked for only when that changes.
        width = self.content_size.width
        wrapped = _wrapped(content, width)
        before, self._drawn = self._lines, content
        self._lines = wrapped.plain.count("\n") + 1 if width > 0 else None
        self.update(wrapped, layout=before is None or before != self._lines)


_CONSOLE = Console(width=1000, color_system=None, force_terminal=False)  # only measures; never prints


def _wrapped(content: Text, width: int) -> Text:
    """``content`` with its lines longer than ``width`` word-wrapped (as the panel would)."""
    if width <= 0 or all(cell_len(line) <= width for line in content.plain.split("\n")):
        return content
    return Text("\n").join(content.wrap(_CONSOLE, width))
