"""What the report picture draws around the data: the steps along the top, events and
warnings as vertical lines with labels, and the legend under each chart."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from vramtop.sinks.report_svg_style import (
    CEILING,
    EVENT_COLOURS,
    EVENT_DEFAULT,
    GPU_LINE,
    LEFT,
    LEGEND_NAMES,
    MUTED,
    PROCESS_LINE,
    RIGHT,
    STEP_BAND,
    Canvas,
    Scale,
    clip_text,
    svg_text,
    text_width,
)
from vramtop.sinks.report_timeline import Mark, Panel


def draw_steps(canvas: Canvas, marks: Sequence[Mark], sx: Scale, plot_top: float) -> None:
    if not marks:
        return
    band_top = plot_top - STEP_BAND
    canvas.add(svg_text(LEFT - 8, plot_top - 10, "steps", size=11, anchor="end", fill=MUTED))
    last_label = -1e9
    last_tick = -1e9
    for mark in marks:
        x = sx(mark.time)
        if x - last_tick >= 6:
            canvas.add(f'<line x1="{x:.1f}" y1="{plot_top - 7:.1f}" x2="{x:.1f}" y2="{plot_top:.1f}" '
                       f'stroke="{MUTED}" stroke-width="1"/>')
            last_tick = x
        number = mark.label.removeprefix("step ")
        half = text_width(number, 10) / 2
        if x - last_label >= 2 * half + 24 and x - half >= LEFT + 4 and x + half < RIGHT:
            canvas.add(svg_text(x, band_top + 12, number, size=10, anchor="middle", fill=MUTED))
            last_label = x


def _short(mark: Mark) -> str:
    if mark.kind == "command.started":
        return "command started"
    if mark.kind == "command.exited":
        return mark.label.replace("command ", "")
    return mark.label if len(mark.label) <= 40 else mark.label[:39] + "…"


def draw_events(canvas: Canvas, marks: Sequence[Mark], sx: Scale, plot_top: float, plot_bottom: float) -> None:
    rows: list[float] = []  # right end of the last label in each row
    for mark in marks:
        x = sx(mark.time)
        colour = EVENT_COLOURS.get(mark.kind, EVENT_DEFAULT)
        width = 2 if mark.kind == "oom" else 1.2
        dash = "" if mark.kind == "oom" else ' stroke-dasharray="4 3"'
        canvas.add(f'<line x1="{x:.1f}" y1="{plot_top:.1f}" x2="{x:.1f}" y2="{plot_bottom:.1f}" stroke="{colour}" '
                   f'stroke-width="{width}"{dash}><title>{escape(mark.label)}</title></line>')
        label = _short(mark)
        w = text_width(label, 10)
        # Labels sit inside the plot's top, right of the line (left of it near the right edge).
        lx, anchor = (x + 4, "start") if x + 4 + w < RIGHT - 2 else (x - 4, "end")
        left_end = lx if anchor == "start" else lx - w
        row = next((r for r, end in enumerate(rows) if left_end > end + 6), None)
        if row is None:
            if len(rows) >= 2:
                continue  # too crowded: the line and its tooltip remain
            rows.append(0.0)
            row = len(rows) - 1
        rows[row] = left_end + w
        ly = plot_top + 12 + 13 * row
        rect_x = lx - 2 if anchor == "start" else lx - w - 2
        canvas.add(f'<rect x="{rect_x:.1f}" y="{ly - 10:.1f}" width="{w + 4:.1f}" height="13" '
                   'fill="#ffffff" fill-opacity="0.8"/>')
        canvas.add(svg_text(lx, ly, label, size=10, anchor=anchor, fill=colour))


def draw_legend(canvas: Canvas, panel: Panel, colours: dict[str, str], events: Sequence[Mark],
            top: float, *, ceiling_drawn: bool) -> float:
    """Legend items in rows under the plot; its height."""
    items: list[tuple[str, str]] = []  # (swatch svg at 0,0, label)
    for layer in panel.layers:
        name = LEGEND_NAMES.get(layer.name, layer.name)
        items.append((f'<rect x="0" y="-10" width="14" height="12" fill="{colours[layer.name]}"/>', name))
    items.append((f'<line x1="0" y1="-4" x2="14" y2="-4" stroke="{GPU_LINE}" stroke-width="2"/>',
                  "GPU memory.used (NVML)"))
    if panel.pid is not None and any(v is not None for v in panel.process_used):
        items.append((f'<line x1="0" y1="-4" x2="14" y2="-4" stroke="{PROCESS_LINE}" stroke-width="1.4" '
                      'stroke-dasharray="2 3"/>', f"PID {panel.pid} used (NVML per process)"))
    if ceiling_drawn:
        items.append((f'<line x1="0" y1="-4" x2="14" y2="-4" stroke="{CEILING}" stroke-width="1.5" '
                      'stroke-dasharray="6 4"/>', "memory.total"))
    kinds = {m.kind for m in events}
    for kind, name in (("oom", "OOM"), ("warning", "warning")):
        if kind in kinds:
            items.append((f'<line x1="7" y1="-11" x2="7" y2="3" stroke="{EVENT_COLOURS[kind]}" stroke-width="2"/>',
                          name))
    if kinds - {"oom", "warning"}:
        items.append((f'<line x1="7" y1="-11" x2="7" y2="3" stroke="{EVENT_DEFAULT}" stroke-width="1.2" '
                      'stroke-dasharray="4 3"/>', "event"))
    x, y = float(LEFT), top
    for swatch, label in items:
        label = clip_text(label, 11, RIGHT - LEFT - 24)
        w = 20 + text_width(label, 11) + 18
        if x + w > RIGHT and x > LEFT:
            x, y = float(LEFT), y + 20
        canvas.add(f'<g transform="translate({x:.1f},{y:.1f})">{swatch}{svg_text(20, 0, label, size=11)}</g>')
        x += w
    return y - top + 12

