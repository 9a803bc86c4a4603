"""A text panel that repaints only the lines whose content changed."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from itertools import accumulate, pairwise

from rich.cells import cell_len
from rich.console import Console
from rich.segment import Segment
from rich.style import Style
from rich.text import Span, Text
from textual.geometry import Region
from textual.strip import Strip
from textual.style import Style as VisualStyle
from textual.visual import Visual, visualize
from textual.widget import Widget

MIN_WIDTH = 40  # what a panel is laid out for before it knows its width
MAX_KEPT_STRIPS = 256  # rows drawn before, by content, per panel (see Panel._strip_of)
MAX_KEPT_LOOKS = 1024  # looks of runs drawn before, by place and styles, per panel (see Panel._joined_runs)
MAX_RUNS = 32  # spans in a row drawn by runs; a row with more is drawn whole


class Panel(Widget):
    """Every sample re-renders the whole view; an unchanged panel is not redrawn, and in a changed
    one only the changed lines are repainted, so the terminal gets bytes only for what changed
    (this is most of what keeps the monitor's CPU low with a training job on screen: its bill's
    figures change with every sample, its labels and layout do not). A repainted row is also the
    only one turned into a Strip again: Textual would re-render the whole text for any change.

    Content laid out for the panel's width goes through :meth:`redraw_for_width`, which draws it
    again when the width changes: the first sample can arrive before the first layout, and a
    hidden panel has no width at all."""

    _drawn: Text | None = None
    _content_for: Callable[[int], Text] | None = None  # the content as a function of the width
    _width = 0  # the width it was last rendered for
    _rows: list[Text] | None = None  # the drawn content, one Text per row; None: not laid out yet
    _text: Text = Text()  # what render() shows
    _wrapped_for = 0  # the width the rows were wrapped for
    _strips: list[Strip | None] | None = None  # each row as drawn; None: not drawn since it changed
    _strips_for: tuple[int, VisualStyle] | None = None  # the width and style they were drawn with
    _strips_by_row: dict[tuple[object, ...], Strip]  # rows drawn for _strips_for, by content
    _looks_by_place: dict[tuple[object, ...], Style]  # runs' looks for _strips_for, by place and styles
    _hold = False  # keep the row count from shrinking (see hold_rows)
    _held_rows = 0  # the rows last drawn

    # The rows are wrapped here already (see _put): Textual need not look for places to wrap them.
    DEFAULT_CSS = "Panel { height: auto; text-wrap: nowrap; }"

    def render(self) -> Text:
        return self._text

    def redraw(self, content: Text) -> None:
        self._content_for = None
        self._put(content)

    def redraw_for_width(self, render: Callable[[int], Text]) -> None:
        self._content_for = render
        self._width = self.size.width
        self._put(render(max(self._width, MIN_WIDTH)))

    def hold_rows(self, hold: bool) -> None:
        """While held, the panel never gets shorter: missing rows at the end are blank. A panel
        whose row count wavers from sample to sample (the bill's advice, rewrapped as its
        figures change) would otherwise cost a layout of the whole screen each time, the
        largest single cost of a sample with a job on screen."""
        if self._hold and not hold:
            self._drawn = None  # the next redraw drops the blank rows, even of the same content
        self._hold = hold

    def on_resize(self) -> None:
        if self._content_for is not None and self.size.width != self._width:
            self.redraw_for_width(self._content_for)
        elif self._drawn is not None and self.content_size.width != self._wrapped_for:
            # Rows wrapped for another width (a scrollbar came or went) are not the rows Textual
            # draws: compared row by row, they would leave a stale row on screen.
            content, self._drawn = self._drawn, None
            self._put(content)

    def _put(self, content: Text) -> None:
        if _same(content, self._drawn):
            return
        self._drawn = content
        # Lines are wrapped here, so the panel's height is its row count: a layout of the whole
        # screen (which costs more than drawing) is asked for only when that changes.
        width = self._wrapped_for = self.content_size.width
        before = self._rows
        if width <= 0:
            self._text, self._rows = content, None
        else:
            rows, wrapped = _wrapped_rows(content, width)
            if self._hold and len(rows) < self._held_rows:
                rows += [Text("") for _ in range(self._held_rows - len(rows))]
                wrapped = True
            else:
                self._held_rows = len(rows)
            # One Text for Textual (layout, selection), joined only when the rows are not its lines.
            self._text = Text("\n").join(rows) if wrapped else content
            self._rows = rows
        if before is None or self._rows is None or len(before) != len(self._rows):
            self._strips = None
            self.refresh(layout=True)
            return
        changed = [y for y, (old, new) in enumerate(zip(before, self._rows, strict=True)) if not _same(old, new)]
        if changed and self._strips is not None:
            for y in changed:
                self._strips[y] = None
        if changed:
            # In the widget's place: after its padding (the details have one cell on either side).
            left, top = self.gutter.left, self.gutter.top
            spans = (_changed_cells(before[y], self._rows[y], width) for y in changed)
            self.refresh(*(Region(left + x, top + y, end - x, 1) for y, (x, end) in zip(changed, spans, strict=True)))

    def render_line(self, y: int) -> Strip:
        rows = self._rows
        if rows is None or not 0 <= y < len(rows) or self.text_selection is not None:
            return super().render_line(y)
        drawn_for = (self.size.width, self.visual_style)
        strips = self._strips
        if strips is None or self._strips_for != drawn_for:
            strips = self._strips = [None] * len(rows)
            if self._strips_for != drawn_for:
                self._strips_by_row, self._looks_by_place = {}, {}
            self._strips_for = drawn_for
        strip = strips[y]
        if strip is None:
            strip = strips[y] = self._strip_of(rows[y], drawn_for)
        return strip

    def _strip_of(self, row: Text, drawn_for: tuple[int, VisualStyle]) -> Strip:
        """The row as Textual would draw it as part of the whole text (the rows fit the width).
        Kept by content for this width and look: a job's figures come back with its training
        phases (the same bill line at each forward), and drawing a row costs far more than
        looking it up."""
        key = (row.plain, tuple(row.spans), row.style, row.justify, row.overflow)
        by_row = self._strips_by_row
        strip = by_row.get(key)
        if strip is None:
            if len(by_row) >= MAX_KEPT_STRIPS:
                by_row.clear()
            strip = by_row[key] = self._joined_runs(row, drawn_for) or self._drawn_whole(row, drawn_for)
        return strip

    def _drawn_whole(self, row: Text, drawn_for: tuple[int, VisualStyle]) -> Strip:
        return Visual.to_strips(self, visualize(self, row, markup=False), drawn_for[0], 1, drawn_for[1])[0]

    def _joined_runs(self, row: Text, drawn_for: tuple[int, VisualStyle]) -> Strip | None:
        """The row as one segment per run (characters of one look), each in the look Textual
        gave the first run drawn at that place with those styles: a bill row whose figure changed
        keeps its runs' places and styles, and drawing a whole row costs many times joining its
        segments. None where a run could look otherwise alone than in its row (alignment,
        control or wide characters, a row wider than the panel): Textual draws the whole row."""
        plain = row.plain
        if (row.justify not in (None, "default", "left") or len(row.spans) > MAX_RUNS
                or cell_len(plain) != len(plain) or len(plain) > drawn_for[0] or not plain.isprintable()):
            return None
        looks = self._looks_by_place
        segments = []
        for start, end, styles in _runs(row):
            key = (start, row.style, styles)
            look = looks.get(key)
            if look is None:
                # Drawn in its place (each cell carries its offset in the row); the empty style
                # keeps a run without one from merging with the blanks before it.
                spans = [Span(start, end, s) for s in (_NO_STYLE, *styles)]
                text = Text(" " * start + plain[start:end], style=row.style, spans=spans)
                drawn = list(Visual.to_strips(self, visualize(self, text, markup=False), end, 1,
                                              drawn_for[1])[0].crop(start, end))
                if len(drawn) != 1 or drawn[0].text != plain[start:end] or drawn[0].style is None:
                    return None
                if len(looks) >= MAX_KEPT_LOOKS:
                    looks.clear()
                look = looks[key] = drawn[0].style
            segments.append(Segment(plain[start:end], look))
        return Strip(segments, len(plain)) if segments else None


def _runs(row: Text) -> list[tuple[int, int, tuple[str | Style, ...]]]:
    """(start, end, the styles of the spans over it, in order) for each run of ``row``."""
    size = len(row.plain)
    cuts = sorted({0, size, *(min(size, max(0, x)) for span in row.spans for x in (span.start, span.end))})
    return [(a, b, tuple(span.style for span in row.spans if span.start <= a and span.end >= b))
            for a, b in pairwise(cuts) if a < b]


_NO_STYLE = Style()
_CONSOLE = Console(width=1000, color_system=None, force_terminal=False)  # only measures; never prints


def _changed_cells(old: Text, new: Text, width: int) -> tuple[int, int]:
    """The cells [x, end) of a row that can look different from ``old`` to ``new``: where the
    characters differ, widened to every style run that is not in both. A changing figure at the
    end of a long row (a sparkline after a bar) repaints that figure, not the row: with a job on
    screen, a third less written to the terminal (and to the tmux that shows it). The whole row
    where that is not safe: another look or justification for the whole row, characters wider
    than one cell."""
    a, b = old.plain, new.plain
    whole = (0, width)
    if (old.style != new.style or old.justify != new.justify or new.justify not in (None, "default", "left")
            or cell_len(a) != len(a) or cell_len(b) != len(b)):
        return whole
    start = _common_prefix(a, b)
    end = len(b) - _common_prefix(a[start:][::-1], b[start:][::-1]) if len(a) == len(b) else width
    if old.spans != new.spans:
        differing = set(old.spans) ^ set(new.spans)
        if not differing:  # the same runs in another order: the later of two overlapping wins
            return whole
        start = min(start, *(span.start for span in differing))
        end = max(end, *(span.end for span in differing))
    start, end = min(start, width), min(max(end, start), width)
    return (start, end) if end > start else whole


def _common_prefix(a: str, b: str) -> int:
    """The length of the common start of ``a`` and ``b``, by halving (slices compare in C)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low


def _same(a: Text | None, b: Text | None) -> bool:
    """Drawn alike: Text's == leaves out the style of the whole text."""
    return a is not None and b is not None and a == b and a.style == b.style


def _wrapped_rows(content: Text, width: int) -> tuple[list[Text], bool]:
    """``content``'s rows: its lines, those longer than ``width`` word-wrapped (as the panel
    would); and whether any was. Split once: splitting a Text with many spans costs more than
    drawing a row."""
    rows: list[Text] = []
    wrapped = False
    for line in split_lines(content):
        if cell_len(line.plain) <= width:
            rows.append(line)
        else:
            rows.extend(_wrap_line(line, width))
            wrapped = True
    return rows, wrapped


def split_lines(text: Text) -> list[Text]:
    """``text.split("\n", allow_blank=True)``, the same lines in under two thirds of its time: Rich cuts
    at both ends of each newline and makes a Text of every piece, newlines included."""
    parts = text.plain.split("\n")
    style, justify, overflow = text.style, text.justify, text.overflow
    lines = [Text(part, style=style, justify=justify, overflow=overflow) for part in parts]
    if not text.spans:
        return lines
    starts = list(accumulate((len(part) + 1 for part in parts[:-1]), initial=0))
    appends = [line.spans.append for line in lines]
    for start, end, span_style in text.spans:
        first = max(0, bisect_right(starts, start) - 1)
        line_start = starts[first]
        if end - line_start <= len(parts[first]):  # within one line, as most are
            if end > start:
                appends[first](Span(max(start - line_start, 0), end - line_start, span_style))
            continue
        for number in range(first, len(parts)):
            line_start = starts[number]
            if line_start >= end:
                break
            cut_start, cut_end = max(start - line_start, 0), min(end - line_start, len(parts[number]))
            if cut_end > cut_start:
                appends[number](Span(cut_start, cut_end, span_style))
    return lines


_WRAPS: dict[tuple[str, str, tuple[Span, ...], int], tuple[Text, ...]] = {}  # most lines repeat frame to frame


BULLET = " • "  # a list item: its wrapped rows hang under its text, not under the bullet


def _wrap_line(line: Text, width: int) -> list[Text]:
    key = (line.plain, str(line.style), tuple(line.spans), width)
    wrapped = _WRAPS.get(key)
    if wrapped is None:
        if len(_WRAPS) >= 512:
            _WRAPS.clear()
        wrapped = _WRAPS[key] = tuple(_hanging(line, width))
    return [row.copy() for row in wrapped]


def _hanging(line: Text, width: int) -> list[Text]:
    indent = len(BULLET)
    if not line.plain.startswith(BULLET) or width <= 2 * indent:
        return list(line.wrap(_CONSOLE, width))
    rows = list(line[indent:].wrap(_CONSOLE, width - indent))
    return [line[:indent] + row if i == 0 else Text(" " * indent) + row for i, row in enumerate(rows)]
