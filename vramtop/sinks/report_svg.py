"""The report's picture: memory over time as one self-contained SVG document.

One chart per process with the vramtop agent: its bill stacked by category (the colours of
the terminal UI), the GPU's memory.used from NVML as a line, memory.total as the ceiling, the
optimizer steps along the top and the recorded events as vertical lines. A GPU without an
agent process gets one chart with its processes' NVML figures stacked instead.

Plain SVG 1.1, no scripts, no external references: it renders the same in a browser, in
rsvg-convert and in cairosvg. Long recordings are thinned to about one point per pixel
column, keeping each column's highest point so that peaks survive.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from html import escape

from vramtop.analysis.report import Report
from vramtop.sinks.report_svg_marks import draw_events, draw_legend, draw_steps
from vramtop.sinks.report_svg_style import (
    ABOVE_ALLOCATED,
    CATEGORY_COLOURS,
    CEILING,
    FONT,
    GPU_LINE,
    GRID,
    LEFT,
    MIN_SPAN_S,
    MUTED,
    PLOT_HEIGHT,
    PROCESS_COLOURS,
    PROCESS_LINE,
    RIGHT,
    STEP_BAND,
    TITLE_HEIGHT,
    WIDTH,
    ZOOM_BELOW,
    ZOOM_SCALE_BELOW,
    Canvas,
    Scale,
    clip_text,
    svg_text,
    text_width,
)
from vramtop.sinks.report_text import fmt_offset
from vramtop.sinks.report_timeline import Layer, Panel
from vramtop.units import GiB, fmt_mib


def _offset(seconds: float) -> str:
    return f"+{seconds:.1f} s" if seconds < 600 else f"+{seconds / 60:.0f} min"


def render_svg(panels: Sequence[Panel], report: Report) -> str:
    """All charts of a report, one under the other, as one SVG document."""
    canvas = Canvas([])
    y = float(TITLE_HEIGHT)
    title = "vramtop report"
    if report.command:
        title += " · " + " ".join(report.command)
    canvas.add(svg_text(16, 26, clip_text(title, 16, WIDTH - 32), size=16, weight="bold"))
    if not panels:
        canvas.add(svg_text(16, y + 30, "No samples to draw: the recording holds no GPU readings.", fill=MUTED))
        y += 60
    start = report.started if report.started is not None else min((p.times[0] for p in panels if p.times), default=0.0)
    end = max([report.ended or start, *(t for p in panels for t in p.times)], default=start)
    for number, panel in enumerate(panels):
        y += _panel(canvas, panel, report, y, (start, end), f"p{number}")
        window = _agent_window(panel, start, end)
        if window is not None:
            y += _panel(canvas, _crop(panel, *window), report, y, window, f"p{number}z")
    height = int(y + 8)
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" font-family="{FONT}">')
    body = [head, f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>', *canvas.parts, "</svg>"]
    return "\n".join(body) + "\n"


# -- one chart ------------------------------------------------------------------------------


def _nice_step(span: float, target: int) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) giving about ``target`` ticks."""
    if span <= 0:
        return 1.0
    raw = span / target
    power = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * power >= raw:
            return m * power
    return 10 * power


def _time_unit(duration: float) -> tuple[float, str]:
    if duration <= 900:
        return 1.0, "s"
    if duration <= 3 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


def _fmt_tick(value: float) -> str:
    return f"{value:.0f}" if abs(value - round(value)) < 1e-9 else f"{value:g}"


def _columns(xs: list[float], totals: list[float | None], width: float) -> list[int]:
    """Indices to draw: all of them, or per pixel column the one with the highest total."""
    if len(xs) <= width:
        return list(range(len(xs)))
    chosen: dict[int, int] = {}
    for i, x in enumerate(xs):
        col = int(x)
        best = chosen.get(col)
        value = totals[i]
        if best is None:
            chosen[col] = i
        elif value is not None:
            current = totals[best]
            if current is None or value > current:
                chosen[col] = i
    return sorted(chosen.values())


def _runs(indices: list[int], present: Sequence[bool]) -> list[list[int]]:
    """Consecutive drawn indices where there is data."""
    runs: list[list[int]] = []
    current: list[int] = []
    for i in indices:
        if present[i]:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def _agent_window(panel: Panel, start: float, end: float) -> tuple[float, float] | None:
    """Where the agent reported, when that is a small part of the recording: worth a zoom."""
    present = [t for i, t in enumerate(panel.times) if any(layer.values[i] is not None for layer in panel.layers)]
    if panel.pid is None or len(present) < 2:
        return None
    first, last = present[0], present[-1]
    if (last - first) > ZOOM_BELOW * (end - start):
        return None
    pad = max((last - first) * 0.04, 1e-3)
    return max(start, first - pad), min(end, last + pad)


def _crop(panel: Panel, t0: float, t1: float) -> Panel:
    """The samples inside [t0, t1] and one on either side (the plot is clipped to the window)."""
    inside = [i for i, t in enumerate(panel.times) if t0 <= t <= t1]
    if not inside:
        return replace(panel, times=(), layers=(), gpu_used=(), process_used=(), marks=())
    lo, hi = max(0, inside[0] - 1), min(len(panel.times), inside[-1] + 2)
    return replace(
        panel,
        times=panel.times[lo:hi],
        layers=tuple(replace(layer, values=layer.values[lo:hi]) for layer in panel.layers),
        gpu_used=panel.gpu_used[lo:hi],
        process_used=panel.process_used[lo:hi],
        marks=tuple(m for m in panel.marks if t0 <= m.time <= t1),
        zoomed=True,
    )


@dataclass(frozen=True)
class _Frame:
    """Where one chart's plot sits and how data maps onto it."""

    start: float  # the time at the left edge
    duration: float
    origin: float  # offsets on the time axis count from here
    plot_top: float
    y_max: float  # bytes at the top edge

    @property
    def end(self) -> float:
        return self.start + self.duration

    @property
    def plot_bottom(self) -> float:
        return self.plot_top + PLOT_HEIGHT

    def sx(self, t: float) -> float:
        return LEFT + (t - self.start) / self.duration * (RIGHT - LEFT)

    def sy(self, b: float) -> float:
        return self.plot_bottom - b / self.y_max * PLOT_HEIGHT


def _panel(canvas: Canvas, panel: Panel, report: Report, top: float, window: tuple[float, float],
           clip_id: str) -> float:
    """Draw one chart of the time ``window`` with its top edge at ``top``; its height."""
    start = window[0]
    duration = max(window[1] - start, MIN_SPAN_S)
    origin = report.started if report.started is not None else start
    _titles(canvas, panel, top, start - origin, start + duration - origin)
    stacked_tops = _stack_totals(panel.layers, len(panel.times))
    highest = max([v for v in (*panel.gpu_used, *panel.process_used, *stacked_tops) if v is not None], default=0)
    ceiling = panel.memory_total
    # A close-up scales to its data when the ceiling is far above it; the ceiling is then named.
    off_scale = bool(panel.zoomed and ceiling and highest < ZOOM_SCALE_BELOW * ceiling)
    top_value = float(highest) if off_scale else max(float(ceiling or 0), float(highest))
    y_max = max(top_value, float(GiB)) * (1.2 if off_scale else 1.12)  # room for event labels
    if off_scale and ceiling:
        note = f"memory.total {fmt_mib(ceiling)} ({ceiling / GiB:.1f} GiB) is above this scale"
        canvas.add(svg_text(RIGHT, top + 40, note, size=11, anchor="end", fill=CEILING))
    frame = _Frame(start, duration, origin, top + 52 + STEP_BAND, y_max)
    _axes(canvas, frame)
    xs = [frame.sx(t) - LEFT for t in panel.times]
    colours = _layer_colours(panel)
    _plot(canvas, panel, frame, xs, colours, clip_id)
    if ceiling and not off_scale:
        _ceiling(canvas, panel, frame, ceiling, xs, stacked_tops)
    _nvml_lines(canvas, panel, frame)
    canvas.add("</g>")
    _peak(canvas, panel, frame.sx, frame.sy, report, frame.plot_top, window)
    canvas.add(f'<rect x="{LEFT}" y="{frame.plot_top:.1f}" width="{RIGHT - LEFT}" height="{PLOT_HEIGHT}" '
               'fill="none" stroke="#999999" stroke-width="1"/>')
    # Steps along the top, events as vertical lines.
    draw_steps(canvas, [m for m in panel.marks if m.kind == "step"], frame.sx, frame.plot_top)
    events = sorted((m for m in panel.marks if m.kind != "step"), key=lambda m: m.time)
    draw_events(canvas, events, frame.sx, frame.plot_top, frame.plot_bottom)
    legend_top = frame.plot_bottom + 52
    height = draw_legend(canvas, panel, colours, events, legend_top, ceiling_drawn=bool(ceiling and not off_scale))
    return legend_top - top + height + 12


def _titles(canvas: Canvas, panel: Panel, top: float, first: float, last: float) -> None:
    """The chart's title and the line under it; ``first`` and ``last``: the window's offsets."""
    if panel.zoomed:
        title = (f"GPU {panel.gpu_index} · PID {panel.pid}, zoomed to {_offset(first)} … "
                 f"{_offset(last)}, while the agent reported")
        sub = "stacked: the memory bill (see above) · line: memory.used of the whole GPU"
    elif panel.pid is not None:
        who = f"PID {panel.pid}" + (f" {panel.command}" if panel.command else "")
        title = f"GPU {panel.gpu_index} · {panel.gpu_name} · {who}"
        sub = (f"stacked: the memory bill of PID {panel.pid} (vramtop agent, PyTorch allocator + NVML) · "
               "line: memory.used of the whole GPU (NVML)")
    else:
        title = f"GPU {panel.gpu_index} · {panel.gpu_name}"
        sub = ("stacked: memory used by each process (NVML; no vramtop agent) · "
               "line: memory.used of the whole GPU (NVML)")
    canvas.add(svg_text(16, top + 22, clip_text(title, 14, WIDTH - 32), size=14, weight="bold"))
    canvas.add(svg_text(16, top + 40, clip_text(sub, 11, WIDTH - 32), size=11, fill=MUTED))


def _axes(canvas: Canvas, frame: _Frame) -> None:
    """The grid, the ticks and the names of both axes."""
    gib = float(GiB)
    unit, unit_name = _time_unit(max(frame.end - frame.origin, 1e-9))
    step = _nice_step(frame.y_max / gib, 10)
    tick = 0.0
    while tick * gib <= frame.y_max:
        y = frame.sy(tick * gib)
        canvas.add(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{RIGHT}" y2="{y:.1f}" stroke="{GRID}" stroke-width="1"/>')
        canvas.add(svg_text(LEFT - 8, y + 4, _fmt_tick(tick), size=11, anchor="end", fill=MUTED))
        tick += step
    x_step = _nice_step(frame.duration / unit, 10)
    tick = math.ceil((frame.start - frame.origin) / unit / x_step - 1e-9) * x_step
    bottom = frame.plot_bottom
    while frame.origin + tick * unit <= frame.end + 1e-9 * unit:
        x = frame.sx(frame.origin + tick * unit)
        canvas.add(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 5}" stroke="{MUTED}"/>')
        canvas.add(svg_text(x, bottom + 18, _fmt_tick(tick), size=11, anchor="middle", fill=MUTED))
        tick += x_step
    canvas.add(svg_text(LEFT + (RIGHT - LEFT) / 2, bottom + 36, f"time since the start of the recording ({unit_name})",
                  size=12, anchor="middle"))
    mid = (frame.plot_top + bottom) / 2
    canvas.add(svg_text(22, mid, "memory (GiB)", size=12, anchor="middle",
                  extra=f' transform="rotate(-90 22 {mid:.1f})"'))


def _plot(canvas: Canvas, panel: Panel, frame: _Frame, xs: list[float], colours: dict[str, str],
          clip_id: str) -> None:
    """Open the plot's clipped group and draw the stacked bill (or processes) in it."""
    # Thinned to a pixel column: the sample with the most memory allocated (the step peak).
    allocated = [layer for layer in panel.layers if layer.name not in ABOVE_ALLOCATED] or list(panel.layers)
    keys = _stack_totals(allocated, len(panel.times))
    drawn = _columns(xs, [float(v) if v is not None else None for v in keys], RIGHT - LEFT)
    canvas.add(f'<clipPath id="{clip_id}"><rect x="{LEFT}" y="{frame.plot_top:.1f}" width="{RIGHT - LEFT}" '
               f'height="{PLOT_HEIGHT}"/></clipPath>')
    canvas.add(f'<g clip-path="url(#{clip_id})">')
    _stack(canvas, panel, drawn, frame.sx, frame.sy, colours)


def _ceiling(canvas: Canvas, panel: Panel, frame: _Frame, ceiling: int, xs: list[float],
             stacked_tops: list[int | None]) -> None:
    """memory.total as a dashed line, named under it."""
    y = frame.sy(ceiling)
    canvas.add(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{RIGHT}" y2="{y:.1f}" stroke="{CEILING}" '
               'stroke-width="1.5" stroke-dasharray="6 4"/>')
    label = f"memory.total {fmt_mib(ceiling)} ({ceiling / float(GiB):.1f} GiB)"
    width = text_width(label, 11)
    # Under the line, at the end where the data stays lowest (a run that nears the ceiling
    # usually does so at its end), on a light ground in case the data still reaches it.
    heights = [max((v for v in (g, p, st) if v is not None), default=0)
               for g, p, st in itertools.zip_longest(panel.gpu_used, panel.process_used, stacked_tops)]
    plot_w = RIGHT - LEFT
    right = max((h for x, h in zip(xs, heights, strict=False) if x >= plot_w - width - 12), default=0)
    left = max((h for x, h in zip(xs, heights, strict=False) if x <= width + 12), default=0)
    lx, anchor = (LEFT + 6, "start") if left < right else (RIGHT - 6, "end")
    canvas.add(f'<rect x="{lx - 3 if anchor == "start" else lx - width - 3:.1f}" y="{y + 3:.1f}" '
               f'width="{width + 6:.1f}" height="15" fill="#ffffff" fill-opacity="0.85"/>')
    canvas.add(svg_text(lx, y + 14, label, size=11, anchor=anchor, fill=CEILING))


def _nvml_lines(canvas: Canvas, panel: Panel, frame: _Frame) -> None:
    if panel.pid is not None and any(v is not None for v in panel.process_used):
        _line(canvas, panel.times, panel.process_used, frame.sx, frame.sy, PROCESS_LINE, 1.2, "2 3",
              f"PID {panel.pid} used (NVML per process)")
    _line(canvas, panel.times, panel.gpu_used, frame.sx, frame.sy, GPU_LINE, 1.8, None, "GPU memory.used (NVML)")


def _stack_totals(layers: Sequence[Layer], n: int) -> list[int | None]:
    totals: list[int | None] = []
    for i in range(n):
        values = [layer.values[i] for layer in layers if layer.values[i] is not None]
        totals.append(sum(v for v in values if v is not None) if values else None)
    return totals


def _layer_colours(panel: Panel) -> dict[str, str]:
    if panel.pid is not None:
        return {layer.name: CATEGORY_COLOURS.get(layer.name, "#888888") for layer in panel.layers}
    return {layer.name: PROCESS_COLOURS[i % len(PROCESS_COLOURS)] for i, layer in enumerate(panel.layers)}


def _stack(canvas: Canvas, panel: Panel, drawn: list[int], sx: Scale, sy: Scale, colours: dict[str, str]) -> None:
    if not panel.layers:
        return
    present = [any(layer.values[i] is not None for layer in panel.layers) for i in range(len(panel.times))]
    for run in _runs(drawn, present):
        base = [0.0] * len(run)
        for layer in panel.layers:
            tops = [b + float(layer.values[i] or 0) for b, i in zip(base, run, strict=True)]
            if any(t > b for t, b in zip(tops, base, strict=True)):
                xs = [sx(panel.times[i]) for i in run]
                if len(run) == 1:  # a lone sample: a narrow bar, so that it shows
                    xs_top = [xs[0] - 1.5, xs[0] + 1.5]
                    upper, lower = [tops[0], tops[0]], [base[0], base[0]]
                else:
                    xs_top, upper, lower = xs, tops, base
                points = [f"{x:.1f},{sy(v):.1f}" for x, v in zip(xs_top, upper, strict=True)]
                points += [f"{x:.1f},{sy(v):.1f}" for x, v in zip(reversed(xs_top), reversed(lower), strict=True)]
                peak = max(float(layer.values[i] or 0) for i in run)
                canvas.add(f'<polygon points="{" ".join(points)}" fill="{colours[layer.name]}" '
                           f'stroke="none"><title>{escape(layer.name)}: up to {fmt_mib(int(peak))}</title></polygon>')
            base = tops


def _line(canvas: Canvas, times: Sequence[float], values: Sequence[int | None], sx: Scale, sy: Scale,
          colour: str, width: float, dash: str | None, label: str) -> None:
    xs = [sx(t) for t in times]
    drawn = _columns([x - LEFT for x in xs], [float(v) if v is not None else None for v in values], RIGHT - LEFT)
    ys = [0.0 if v is None else sy(v) for v in values]
    present = [v is not None for v in values]
    dashes = f' stroke-dasharray="{dash}"' if dash else ""
    for run in _runs(drawn, present):
        if len(run) == 1:
            i = run[0]
            canvas.add(f'<circle cx="{xs[i]:.1f}" cy="{ys[i]:.1f}" r="1.8" fill="{colour}"/>')
            continue
        points = " ".join(f"{xs[i]:.1f},{ys[i]:.1f}" for i in run)
        canvas.add(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="{width}"'
                   f'{dashes} stroke-linejoin="round"><title>{escape(label)}</title></polyline>')


def _peak(canvas: Canvas, panel: Panel, sx: Scale, sy: Scale, report: Report, plot_top: float,
          window: tuple[float, float]) -> None:
    """A dot and a label at the highest memory.used of the GPU, when it is in the window."""
    gpu = next((g for g in report.gpus if g.uuid == panel.gpu_uuid), None)
    if gpu is None or gpu.peak_used is None or gpu.peak_time is None:
        return
    value, t = gpu.peak_used, gpu.peak_time
    if value == 0 or not window[0] <= t <= window[1]:
        return
    x, y = sx(t), sy(value)
    canvas.add(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{GPU_LINE}"/>')
    label = f"peak {fmt_mib(value)} at {fmt_offset(report.offset(t))}"
    width = text_width(label, 11)
    if x + 8 + width > RIGHT - 4:
        anchor, lx = "end", x - 8
    else:
        anchor, lx = "start", x + 8
    # Above the dot, unless that is where the event labels go (two rows under the plot's top).
    ly = y - 8 if y - 8 >= plot_top + 40 else y + 18
    canvas.add(f'<rect x="{(lx - width - 3) if anchor == "end" else lx - 3:.1f}" y="{ly - 11:.1f}" '
               f'width="{width + 6:.1f}" height="15" fill="#ffffff" fill-opacity="0.85"/>')
    canvas.add(svg_text(lx, ly, label, size=11, anchor=anchor, weight="bold"))




__all__ = ["CATEGORY_COLOURS", "render_svg"]
