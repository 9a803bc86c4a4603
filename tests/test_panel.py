"""Panel: a redraw that repaints only the changed rows shows what a fresh draw shows."""

from __future__ import annotations

import asyncio

from rich.text import Text
from textual.app import App, ComposeResult
from textual.geometry import Region

from vramtop.ui.widgets.panel import Panel


class PanelApp(App[None]):
    CSS = "Panel.alert { background: red; text-style: italic; }"

    def compose(self) -> ComposeResult:
        yield Panel(id="p")


def bill(allocated: str, phase: str) -> Text:
    t = Text()
    t.append("torch ", style="bold")
    t.append(f"allocated {allocated}", style="cyan")
    t.append("  reserved 27.5 GiB\n")
    t.append(f"phase {phase}", style="dim")
    t.append("\nparams 475 MiB  grads 475 MiB  optim 950 MiB " + "x" * 60)
    return t


async def drawn(*contents: Text, alert: bool = False) -> list[list[tuple[str, object]]]:
    """The panel's rows as segments after drawing ``contents`` one after another."""
    app = PanelApp()
    async with app.run_test(size=(60, 10)) as pilot:
        panel = app.query_one(Panel)
        for content in contents:
            panel.redraw(content)
            await pilot.pause()
            panel.render_lines(Region(0, 0, panel.size.width, panel.size.height))  # as the screen would
        panel.set_class(alert, "alert")
        await pilot.pause()
        lines = panel.render_lines(Region(0, 0, panel.size.width, panel.size.height))
        return [[(s.text, s.style) for s in line] for line in lines]


def test_rows_repainted_after_a_change_match_a_fresh_draw() -> None:
    before, after = bill("3.0 GiB", "forward"), bill("13.1 GiB", "backward")
    assert asyncio.run(drawn(before, after)) == asyncio.run(drawn(after))


def test_a_style_change_repaints_rows_drawn_before_it() -> None:
    content = bill("3.0 GiB", "forward")
    assert asyncio.run(drawn(content, alert=True)) == asyncio.run(drawn(Text(), content, alert=True))
    assert asyncio.run(drawn(content, alert=True)) != asyncio.run(drawn(content, alert=False))


async def heights(*steps: tuple[str, bool]) -> list[int]:
    """The panel's height after each (content, held) redraw."""
    app = PanelApp()
    out = []
    async with app.run_test(size=(60, 20)) as pilot:
        panel = app.query_one(Panel)
        for content, held in steps:
            panel.hold_rows(held)
            panel.redraw(Text(content))
            await pilot.pause()
            out.append(panel.size.height)
    return out


def test_a_held_panel_does_not_shrink_until_released() -> None:
    long, short = "a\nb\nc\nd", "a\nb"
    assert asyncio.run(heights((long, False), (short, False))) == [4, 2]
    assert asyncio.run(heights((long, False), (short, True), (long + "\ne", True), (short, True), (short, False))) \
        == [4, 4, 5, 5, 2]


def advice(saves: str) -> Text:
    """A bill line and an advice line longer than the panel, wrapped over several rows."""
    t = Text("allocator cache 24.6 GiB\n")
    t.append(" • gradient checkpointing ", style="bold cyan")
    t.append(f"−{saves} ", style="green")
    t.append("Enable gradient checkpointing (model.gradient_checkpointing_enable()): activations are "
             "recomputed in the backward instead of kept from the forward.", style="dim")
    return t


def test_wrapped_rows_follow_a_changed_figure() -> None:
    before, after = advice("13.0 GiB"), advice("13.1 GiB")
    assert asyncio.run(drawn(before, after)) == asyncio.run(drawn(after))
    assert asyncio.run(drawn(before)) != asyncio.run(drawn(after))


def test_rows_drawn_before_come_back_as_drawn_then() -> None:
    # Rows are kept by content: a figure that comes back (the next forward) shows as a fresh draw.
    a, b = bill("3.0 GiB", "forward"), bill("13.1 GiB", "backward")
    assert asyncio.run(drawn(a, b, a)) == asyncio.run(drawn(a))
    assert asyncio.run(drawn(a, b, a, b)) == asyncio.run(drawn(b))
    wide_a, wide_b = advice("13.0 GiB"), advice("13.1 GiB")
    assert asyncio.run(drawn(wide_a, wide_b, wide_a)) == asyncio.run(drawn(wide_a))


async def rows_as_drawn(*contents: Text, alert_after: bool) -> list[list[tuple[str, object]]]:
    """The first rows as the panel draws them (render_line), with the alert look taken before
    drawing ``contents`` or after."""
    app = PanelApp()
    async with app.run_test(size=(60, 10)) as pilot:
        panel = app.query_one(Panel)
        panel.set_class(not alert_after, "alert")
        await pilot.pause()
        for content in contents:
            panel.redraw(content)
            await pilot.pause()
            panel.render_lines(Region(0, 0, panel.size.width, panel.size.height))
        panel.set_class(True, "alert")
        await pilot.pause()
        return [[(s.text, s.style) for s in panel.render_line(y)] for y in range(3)]


def test_rows_kept_by_content_are_not_reused_for_another_look() -> None:
    a, b = bill("3.0 GiB", "forward"), bill("13.1 GiB", "backward")
    assert asyncio.run(rows_as_drawn(a, b, a, alert_after=True)) == asyncio.run(rows_as_drawn(a, alert_after=False))
    # The same characters in another style are another row.
    restyled = Text(a.plain)
    assert asyncio.run(drawn(a, restyled)) == asyncio.run(drawn(restyled))
    assert asyncio.run(drawn(a, restyled)) != asyncio.run(drawn(a))


def test_a_new_style_of_the_whole_text_is_drawn() -> None:
    # Text's == compares the characters and the spans, not the style of the whole text.
    dim, bold = Text("no process selected", style="dim"), Text("no process selected", style="bold")
    assert asyncio.run(drawn(dim, bold)) == asyncio.run(drawn(bold))
    assert asyncio.run(drawn(dim)) != asyncio.run(drawn(bold))


def test_a_long_line_is_drawn_word_wrapped_over_rows() -> None:
    # 30 five-cell words in 60 cells: 12 to a row (the space after the twelfth ends the row).
    rows = asyncio.run(drawn(Text("short\n" + "word " * 30)))
    texts = ["".join(text for text, _ in row).rstrip() for row in rows]
    assert texts == ["short", ("word " * 12).rstrip(), ("word " * 12).rstrip(), ("word " * 6).rstrip()]


def test_a_list_items_wrapped_rows_hang_under_its_text_and_keep_their_looks() -> None:
    # The advice under the bill: at 80 columns each lever's sentence runs over several rows.
    item = Text(" • ")
    item.append("batch size ", style="bold cyan")
    item.append("−10.9 GiB ", style="green")
    item.append("word " * 20)
    rows = asyncio.run(drawn(item))
    texts = ["".join(text for text, _ in row).rstrip() for row in rows]
    assert texts[:3] == [" • batch size −10.9 GiB " + ("word " * 7).rstrip(), "   " + ("word " * 11).rstrip(),
                         "   " + ("word " * 2).rstrip()]
    looks = {text: style for text, style in rows[0]}
    assert looks["batch size "] != looks["−10.9 GiB "]  # the lever and its figure keep their styles


async def drawn_and_textual(*contents: Text) -> tuple[list[list[object]], list[list[object]]]:
    """Each row of each content as the panel draws it, and as Textual draws that row alone."""
    from textual.visual import Visual, visualize

    app = PanelApp()
    mine, textual = [], []
    async with app.run_test(size=(120, 10)) as pilot:  # wide enough for every row: none is wrapped
        panel = app.query_one(Panel)
        for content in contents:
            panel.redraw(content)
            await pilot.pause()
            for y, row in enumerate(content.split("\n", allow_blank=True)):
                theirs = Visual.to_strips(panel, visualize(panel, row, markup=False), 120, 1, panel.visual_style)[0]
                mine.append(list(panel.render_line(y)))
                textual.append(list(theirs))
    return mine, textual


def test_rows_drawn_from_runs_are_the_rows_textual_draws() -> None:
    # Runs drawn before are reused by place: "1 GiB" after "a " is not "1 GiB" after "ab " (each
    # cell carries its offset in the row, for selecting text with the mouse).
    moved = Text("a ")
    moved.append("1 GiB", style="bold cyan")
    shifted = Text("ab ")
    shifted.append("1 GiB", style="bold cyan")
    nested = Text("frag ", style="italic")
    nested.append("0.86", style="bold red")
    nested.stylize("underline", 2, 7)
    mine, textual = asyncio.run(drawn_and_textual(bill("3.0 GiB", "forward"), bill("13.1 GiB", "backward"),
                                                  moved, shifted, nested, Text("no process selected", style="dim")))
    assert mine == textual


class PaddedPanelApp(App[None]):
    CSS = "Panel { padding: 0 1; }"  # as the details have it: rows start one cell in

    def compose(self) -> ComposeResult:
        yield Panel(id="p")


def cells_drawn(panel: Panel, y: int) -> list[tuple[str, object]]:
    """Row ``y`` as the screen shows it, a cell at a time (the offset kept for selection left out)."""
    cells = [(ch, str(segment.style))
             for segment in panel.render_line(y) for ch in segment.text]
    return cells + [(" ", None)] * (panel.size.width - len(cells))


async def repainted_and_changed(before: Text, after: Text) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    """The cells (x, y in the panel) that a redraw from ``before`` to ``after`` repaints, and the
    cells whose character or look changed."""
    app = PaddedPanelApp()
    async with app.run_test(size=(50, 6)) as pilot:
        panel = app.query_one(Panel)
        panel.redraw(before)
        await pilot.pause()
        old = [cells_drawn(panel, y) for y in range(panel.size.height)]
        regions = []
        real = Panel.refresh

        def spy(*regions_asked, **kwargs):
            regions.extend(regions_asked)
            return real(panel, *regions_asked, **kwargs)

        panel.refresh = spy  # type: ignore[method-assign]
        panel.redraw(after)
        new = [cells_drawn(panel, y) for y in range(panel.size.height)]
        gutter = panel.gutter.left
        changed = {(x + gutter, y) for y, (o, n) in enumerate(zip(old, new, strict=True))
                   for x, (a, b) in enumerate(zip(o, n, strict=True)) if a != b}
        repainted = {(x, y) for r in regions for y in range(r.y, r.bottom) for x in range(r.x, r.right)}
        return repainted, changed


def test_a_changed_figure_is_repainted_where_the_panel_draws_it() -> None:
    # The panel's padding comes first: a row repainted from the padding's cell left its last cell.
    repainted, changed = asyncio.run(repainted_and_changed(bill("3.0 GiB", "forward"), bill("13.1 GiB", "backward")))
    assert changed and changed <= repainted
    edge = Text("x" * 47 + "1")  # the row's last cell, next to the right padding
    repainted, changed = asyncio.run(repainted_and_changed(edge, Text("x" * 47 + "2")))
    assert changed and changed <= repainted
    first = Text("1" + "x" * 47)  # the row's first cell, next to the left padding
    repainted, changed = asyncio.run(repainted_and_changed(first, Text("2" + "x" * 47)))
    assert changed and changed <= repainted


def test_a_row_that_grows_shrinks_or_changes_look_is_repainted() -> None:
    long, short = Text("allocated 13.1 GiB  cache 2.0 GiB"), Text("allocated 3.0 GiB")
    restyled = Text("allocated 3.0 GiB")
    restyled.stylize("bold", 10, 13)
    right = Text("3.0 GiB", justify="right")
    tail = Text("allocated 3.0 GiB")
    tail.stylize("dim", 14)
    pairs = ((long, short), (short, long), (short, restyled), (restyled, short), (short, tail), (short, right),
             (Text("a 10 MiB b"), Text("a 11 MiB b")), (Text("aXa"), Text("aYa")),
             (Text("abc"), Text("abc", style="bold")))
    for before, after in pairs:
        repainted, changed = asyncio.run(repainted_and_changed(before, after))
        assert changed and changed <= repainted, (before, after)


def test_a_changed_figure_at_the_end_of_a_long_row_repaints_the_figure_not_the_row() -> None:
    def bar_row(sparkline: str, free: str) -> Text:
        row = Text()
        row.append("█" * 10, style="green")
        row.append("░" * 5, style="dim")
        row.append(f" 40124/81559 MiB  free {free} ")
        row.append(sparkline, style="cyan")
        return row

    repainted, changed = asyncio.run(repainted_and_changed(bar_row("▁▂▃", "41435"), bar_row("▂▃▄", "41435")))
    assert changed and changed <= repainted
    first = min(x for x, _ in repainted)
    assert first >= 1 + 15 + len(" 40124/81559 MiB  free 41435 ")  # the bar and the figures are left alone
    # A figure in the middle: from it to the last cell that changed, no further.
    repainted, changed = asyncio.run(repainted_and_changed(bar_row("▁▂▃", "41435"), bar_row("▁▂▃", "41436")))
    assert changed and changed <= repainted and len(repainted) == 1
    # Characters two cells wide: the whole row, as before.
    repainted, changed = asyncio.run(repainted_and_changed(Text("进程 a 10 MiB"), Text("进程 a 11 MiB")))
    assert changed and changed <= repainted and len(repainted) == 48


def test_split_lines_gives_the_lines_rich_gives() -> None:
    from rich.text import Span

    from vramtop.ui.widgets.panel import split_lines

    styled = Text("ab\ncd\n\nef", style="bold", justify="right")
    styled.spans[:] = [Span(0, 5, "red"), Span(1, 2, "blue"), Span(2, 3, "green"), Span(3, 9, "dim"),
                       Span(6, 7, "cyan"), Span(7, 9, "italic")]
    texts = [bill("3.0 GiB", "forward"), styled, Text(""), Text("\n"), Text("one line", style="dim"),
             Text("ends\n"), Text.assemble(("a", "red"), "\n", ("b", "blue"), "\n")]
    for text in texts:
        ours, rich = split_lines(text), text.split("\n", allow_blank=True)
        assert [(t.plain, t.spans, t.style, t.justify, t.overflow) for t in ours] == \
               [(t.plain, t.spans, t.style, t.justify, t.overflow) for t in rich], text
