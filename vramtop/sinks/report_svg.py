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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from html import escape

from vramtop.analysis.report import Report
from vramtop.sinks.report_text import fmt_offset
from vramtop.sinks.report_timeline import UNATTRIBUTED, Layer, Mark, Panel
from vramtop.units import GiB, fmt_mib

# The terminal UI's colours (vramtop/ui/widgets/bill.py CATEGORY_STYLES) as SVG colours.
CATEGORY_COLOURS = {
    "parameters (trainable)": "#1f4fa8",  # bold blue
    "parameters (frozen)": "#6f9de3",  # blue
    "gradients": "#d35fd0",  # magenta
    "optimizer state": "#7e2a8f",  # bold magenta
    "other persistent": "#e3bf1e",  # yellow
    "activations & temporaries": "#2e9e4f",  # bold green
    UNATTRIBUTED: "#a9dbb4",  # pale green: allocated, before the agent's first census
    "allocator cache": "#a0a0a0",  # grey62
    "non-PyTorch": "#d64541",  # red
}
ABOVE_ALLOCATED = ("allocator cache", "non-PyTorch")  # the layers stacked on top of allocated memory
LEGEND_NAMES = {
    "activations & temporaries": "activations & temporaries (derived)",
    "non-PyTorch": "non-PyTorch (CUDA context, libraries)",
}
# Processes of a GPU without an agent, stacked.
PROCESS_COLOURS = ("#4e79a7", "#76b7b2", "#59a14f", "#9c755f", "#edc948", "#b07aa1", "#ff9da7", "#bab0ac")
GPU_LINE = "#111111"
PROCESS_LINE = "#555555"
CEILING = "#c62828"
EVENT_COLOURS = {"oom": "#c62828", "warning": "#e07b00"}
EVENT_DEFAULT = "#666666"
TEXT = "#222222"
MUTED = "#666666"
GRID = "#e4e4e4"
Scale = Callable[[float], float]  # data to picture coordinates
FONT = "DejaVu Sans, Verdana, Helvetica, Arial, sans-serif"

WIDTH = 1000
LEFT = 76  # plot area
RIGHT = WIDTH - 28
PLOT_HEIGHT = 280
TITLE_HEIGHT = 40  # page title
STEP_BAND = 22  # steps, between the panel title and the plot
MIN_SPAN_S = 1.0  # the shortest time a chart spans (a recording of one sample has none)
ZOOM_SCALE_BELOW = 0.6  # a close-up whose data stays under this part of memory.total scales to its data
ZOOM_BELOW = 0.6  # an agent that reported for less than this part of the recording gets a zoom


@dataclass
class _Canvas:
    parts: list[str]

    def add(self, text: str) -> None:
        self.parts.append(text)


def _offset(seconds: float) -> str:
    return f"+{seconds:.1f} s" if seconds < 600 else f"+{seconds / 60:.0f} min"


def _text_width(text: str, size: float) -> float:
    """Rough width of ``text`` in the sans-serif fonts above."""
    return len(text) * size * 0.6


def _clip(text: str, size: float, width: float) -> str:
    limit = max(4, int(width / (size * 0.6)))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _t(x: float, y: float, text: str, *, size: float = 12, anchor: str = "start", fill: str = TEXT,
       weight: str | None = None, extra: str = "") -> str:
    bold = f' font-weight="{weight}"' if weight else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size:g}" text-anchor="{anchor}" fill="{fill}"'
            f'{bold}{extra}>{escape(text)}</text>')


def render_svg(panels: Sequence[Panel], report: Report) -> str:
    """All charts of a report, one under the other, as one SVG document."""
    canvas = _Canvas([])
    y = float(TITLE_HEIGHT)
    title = "vramtop report"
    if report.command:
        title += " · " + " ".join(report.command)
    canvas.add(_t(16, 26, _clip(title, 16, WIDTH - 32), size=16, weight="bold"))
    if not panels:
        canvas.add(_t(16, y + 30, "No samples to draw: the recording holds no GPU readings.", fill=MUTED))
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


def _panel(canvas: _Canvas, panel: Panel, report: Report, top: float, window: tuple[float, float],
           clip_id: str) -> float:
    """Draw one chart of the time ``window`` with its top edge at ``top``; its height."""
    start, end = window
    duration = max(end - start, MIN_SPAN_S)
    end = start + duration
    origin = report.started if report.started is not None else start  # offsets count from here
    unit, unit_name = _time_unit(max(end - origin, 1e-9))
    gib = float(GiB)

    # Title and subtitle.
    if panel.pid is not None:
        who = f"PID {panel.pid}" + (f" {panel.command}" if panel.command else "")
        title = f"GPU {panel.gpu_index} · {panel.gpu_name} · {who}"
        sub = (f"stacked: the memory bill of PID {panel.pid} (vramtop agent, PyTorch allocator + NVML) · "
               "line: memory.used of the whole GPU (NVML)")
    else:
        title = f"GPU {panel.gpu_index} · {panel.gpu_name}"
        sub = ("stacked: memory used by each process (NVML; no vramtop agent) · "
               "line: memory.used of the whole GPU (NVML)")
    if panel.zoomed:
        title = (f"GPU {panel.gpu_index} · PID {panel.pid}, zoomed to {_offset(start - origin)} … "
                 f"{_offset(end - origin)}, while the agent reported")
    canvas.add(_t(16, top + 22, _clip(title, 14, WIDTH - 32), size=14, weight="bold"))
    if panel.zoomed:
        sub = "stacked: the memory bill (see above) · line: memory.used of the whole GPU"
    canvas.add(_t(16, top + 40, _clip(sub, 11, WIDTH - 32), size=11, fill=MUTED))

    plot_top = top + 52 + STEP_BAND
    plot_bottom = plot_top + PLOT_HEIGHT
    plot_w = RIGHT - LEFT

    # Scales.
    stacked_tops = _stack_totals(panel.layers, len(panel.times))
    highest = max([v for v in (*panel.gpu_used, *panel.process_used, *stacked_tops) if v is not None], default=0)
    ceiling = panel.memory_total
    # A close-up scales to its data when the ceiling is far above it; the ceiling is then named.
    off_scale = bool(panel.zoomed and ceiling and highest < ZOOM_SCALE_BELOW * ceiling)
    top_value = float(highest) if off_scale else max(float(ceiling or 0), float(highest))
    y_max = max(top_value, gib) * (1.2 if off_scale else 1.12)  # room for event labels
    if off_scale and ceiling:
        note = f"memory.total {fmt_mib(ceiling)} ({ceiling / gib:.1f} GiB) is above this scale"
        canvas.add(_t(RIGHT, top + 40, note, size=11, anchor="end", fill=CEILING))

    def sx(t: float) -> float:
        return LEFT + (t - start) / duration * plot_w

    def sy(b: float) -> float:
        return plot_bottom - b / y_max * PLOT_HEIGHT

    # Grid and axes.
    step = _nice_step(y_max / gib, 10)
    tick = 0.0
    while tick * gib <= y_max:
        y = sy(tick * gib)
        canvas.add(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{RIGHT}" y2="{y:.1f}" stroke="{GRID}" stroke-width="1"/>')
        canvas.add(_t(LEFT - 8, y + 4, _fmt_tick(tick), size=11, anchor="end", fill=MUTED))
        tick += step
    x_step = _nice_step(duration / unit, 10)
    tick = math.ceil((start - origin) / unit / x_step - 1e-9) * x_step
    while origin + tick * unit <= end + 1e-9 * unit:
        x = sx(origin + tick * unit)
        canvas.add(f'<line x1="{x:.1f}" y1="{plot_bottom}" x2="{x:.1f}" y2="{plot_bottom + 5}" stroke="{MUTED}"/>')
        canvas.add(_t(x, plot_bottom + 18, _fmt_tick(tick), size=11, anchor="middle", fill=MUTED))
        tick += x_step
    canvas.add(_t(LEFT + plot_w / 2, plot_bottom + 36, f"time since the start of the recording ({unit_name})",
                  size=12, anchor="middle"))
    mid = (plot_top + plot_bottom) / 2
    canvas.add(_t(22, mid, "memory (GiB)", size=12, anchor="middle",
                  extra=f' transform="rotate(-90 22 {mid:.1f})"'))

    # The stacked bill (or processes).
    xs = [sx(t) - LEFT for t in panel.times]
    colours = _layer_colours(panel)
    # Thinned to a pixel column: the sample with the most memory allocated (the step peak).
    allocated = [layer for layer in panel.layers if layer.name not in ABOVE_ALLOCATED] or list(panel.layers)
    keys = _stack_totals(allocated, len(panel.times))
    drawn = _columns(xs, [float(v) if v is not None else None for v in keys], plot_w)
    canvas.add(f'<clipPath id="{clip_id}"><rect x="{LEFT}" y="{plot_top:.1f}" width="{plot_w}" '
               f'height="{PLOT_HEIGHT}"/></clipPath>')
    canvas.add(f'<g clip-path="url(#{clip_id})">')
    _stack(canvas, panel, drawn, sx, sy, colours)

    # The ceiling.
    if ceiling and not off_scale:
        y = sy(ceiling)
        canvas.add(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{RIGHT}" y2="{y:.1f}" stroke="{CEILING}" '
                   'stroke-width="1.5" stroke-dasharray="6 4"/>')
        label = f"memory.total {fmt_mib(ceiling)} ({ceiling / gib:.1f} GiB)"
        width = _text_width(label, 11)
        # Under the line, at the end where the data stays lowest (a run that nears the ceiling
        # usually does so at its end), on a light ground in case the data still reaches it.
        heights = [max((v for v in (g, p, st) if v is not None), default=0)
                   for g, p, st in itertools.zip_longest(panel.gpu_used, panel.process_used, stacked_tops)]
        right = max((h for x, h in zip(xs, heights, strict=False) if x >= plot_w - width - 12), default=0)
        left = max((h for x, h in zip(xs, heights, strict=False) if x <= width + 12), default=0)
        lx, anchor = (LEFT + 6, "start") if left < right else (RIGHT - 6, "end")
        canvas.add(f'<rect x="{lx - 3 if anchor == "start" else lx - width - 3:.1f}" y="{y + 3:.1f}" '
                   f'width="{width + 6:.1f}" height="15" fill="#ffffff" fill-opacity="0.85"/>')
        canvas.add(_t(lx, y + 14, label, size=11, anchor=anchor, fill=CEILING))

    # NVML lines.
    if panel.pid is not None and any(v is not None for v in panel.process_used):
        _line(canvas, panel.times, panel.process_used, sx, sy, PROCESS_LINE, 1.2, "2 3",
              f"PID {panel.pid} used (NVML per process)")
    _line(canvas, panel.times, panel.gpu_used, sx, sy, GPU_LINE, 1.8, None, "GPU memory.used (NVML)")
    canvas.add("</g>")
    _peak(canvas, panel, sx, sy, report, plot_top, window)

    # Plot frame.
    canvas.add(f'<rect x="{LEFT}" y="{plot_top:.1f}" width="{plot_w}" height="{PLOT_HEIGHT}" fill="none" '
               f'stroke="#999999" stroke-width="1"/>')

    # Steps along the top, events as vertical lines.
    _steps(canvas, [m for m in panel.marks if m.kind == "step"], sx, plot_top)
    events = sorted((m for m in panel.marks if m.kind != "step"), key=lambda m: m.time)
    _events(canvas, events, sx, plot_top, plot_bottom)

    # Legend.
    legend_top = plot_bottom + 52
    height = _legend(canvas, panel, colours, events, legend_top, ceiling_drawn=bool(ceiling and not off_scale))
    return legend_top - top + height + 12


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


def _stack(canvas: _Canvas, panel: Panel, drawn: list[int], sx: Scale, sy: Scale, colours: dict[str, str]) -> None:
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


def _line(canvas: _Canvas, times: Sequence[float], values: Sequence[int | None], sx: Scale, sy: Scale,
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


def _peak(canvas: _Canvas, panel: Panel, sx: Scale, sy: Scale, report: Report, plot_top: float,
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
    width = _text_width(label, 11)
    if x + 8 + width > RIGHT - 4:
        anchor, lx = "end", x - 8
    else:
        anchor, lx = "start", x + 8
    # Above the dot, unless that is where the event labels go (two rows under the plot's top).
    ly = y - 8 if y - 8 >= plot_top + 40 else y + 18
    canvas.add(f'<rect x="{(lx - width - 3) if anchor == "end" else lx - 3:.1f}" y="{ly - 11:.1f}" '
               f'width="{width + 6:.1f}" height="15" fill="#ffffff" fill-opacity="0.85"/>')
    canvas.add(_t(lx, ly, label, size=11, anchor=anchor, weight="bold"))


def _steps(canvas: _Canvas, marks: Sequence[Mark], sx: Scale, plot_top: float) -> None:
    if not marks:
        return
    band_top = plot_top - STEP_BAND
    canvas.add(_t(LEFT - 8, plot_top - 10, "steps", size=11, anchor="end", fill=MUTED))
    last_label = -1e9
    last_tick = -1e9
    for mark in marks:
        x = sx(mark.time)
        if x - last_tick >= 6:
            canvas.add(f'<line x1="{x:.1f}" y1="{plot_top - 7:.1f}" x2="{x:.1f}" y2="{plot_top:.1f}" '
                       f'stroke="{MUTED}" stroke-width="1"/>')
            last_tick = x
        number = mark.label.removeprefix("step ")
        half = _text_width(number, 10) / 2
        if x - last_label >= 2 * half + 24 and x - half >= LEFT + 4 and x + half < RIGHT:
            canvas.add(_t(x, band_top + 12, number, size=10, anchor="middle", fill=MUTED))
            last_label = x


def _short(mark: Mark) -> str:
    if mark.kind == "command.started":
        return "command started"
    if mark.kind == "command.exited":
        return mark.label.replace("command ", "")
    return mark.label if len(mark.label) <= 40 else mark.label[:39] + "…"


def _events(canvas: _Canvas, marks: Sequence[Mark], sx: Scale, plot_top: float, plot_bottom: float) -> None:
    rows: list[float] = []  # right end of the last label in each row
    for mark in marks:
        x = sx(mark.time)
        colour = EVENT_COLOURS.get(mark.kind, EVENT_DEFAULT)
        width = 2 if mark.kind == "oom" else 1.2
        dash = "" if mark.kind == "oom" else ' stroke-dasharray="4 3"'
        canvas.add(f'<line x1="{x:.1f}" y1="{plot_top:.1f}" x2="{x:.1f}" y2="{plot_bottom:.1f}" stroke="{colour}" '
                   f'stroke-width="{width}"{dash}><title>{escape(mark.label)}</title></line>')
        label = _short(mark)
        w = _text_width(label, 10)
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
        canvas.add(_t(lx, ly, label, size=10, anchor=anchor, fill=colour))


def _legend(canvas: _Canvas, panel: Panel, colours: dict[str, str], events: Sequence[Mark],
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
        label = _clip(label, 11, RIGHT - LEFT - 24)
        w = 20 + _text_width(label, 11) + 18
        if x + w > RIGHT and x > LEFT:
            x, y = float(LEFT), y + 20
        canvas.add(f'<g transform="translate({x:.1f},{y:.1f})">{swatch}{_t(20, 0, label, size=11)}</g>')
        x += w
    return y - top + 12


__all__ = ["CATEGORY_COLOURS", "render_svg"]
