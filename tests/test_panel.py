"""Panel: a redraw that repaints only the changed rows shows what a fresh draw shows."""

from __future__ import annotations

import asyncio

from rich.text import Text
from textual.app import App, ComposeResult
from textual.geometry import Region

from vramtop.ui.widgets.panel import Panel


class PanelApp(App[None]):
    CSS = "Panel.alert { background: red; }"

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
