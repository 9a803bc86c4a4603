"""The line of keys at the bottom of the screen."""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from rich.text import Text

from vramtop.ui.widgets.panel import Panel

KEY_STYLE = "bold #ffa62b"  # the key colour of Textual's default theme, as its Footer draws keys


class KeyBar(Panel):
    """The screen's keys and what they do, drawn once per width.

    Textual's Footer rebuilds its key widgets whenever a dialog (help, warnings, a confirmation)
    closes, and keeps the old ones bound to itself: about 0.4 MiB each time with textual 8.2.8,
    +73 MiB over an hour's soak. The keys never change while vramtop runs, so a line of text
    does the same job."""

    DEFAULT_CSS = "KeyBar { dock: bottom; height: 1; background: $footer-background; }"

    def show_keys(self, keys: Sequence[tuple[str, str]]) -> None:
        """``keys``: (key as shown, what it does), in order."""
        self.redraw_for_width(lambda width: key_line(keys, width))


def key_line(keys: Sequence[tuple[str, str]], width: int) -> Text:
    """Every key with its description; when they do not fit, the first keys that do (a short
    terminal shows the most used ones, and `?` lists them all)."""
    line = Text(no_wrap=True, overflow="crop")
    for key, description in keys:
        part = Text.assemble((f" {key} ", KEY_STYLE), f"{description} ")
        if cell_len(line.plain) + cell_len(part.plain) > width:
            break
        line.append_text(part)
    return line
