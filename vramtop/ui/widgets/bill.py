"""The allocator view of one process on one GPU: where its memory went (the bill)."""

from __future__ import annotations

from rich.text import Text

from vramtop.analysis.bill import (
    SHORT_NAMES,
    Bill,
    bill_at_peak,
    bill_now,
    fragmentation,
    fragmentation_proxy,
    largest_fit,
    not_counted_yet,
)
from vramtop.analysis.oom_place import allocation_lines, frame_text, module_text, trace_lines
from vramtop.analysis.postmortem import postmortem_of
from vramtop.model import AgentDevice, AgentSample, AllocatorStats, GpuSample, OomReport, ProcessSample
from vramtop.units import clock, fmt_bytes

# One colour per bill category, in the bill's order; the stacked bar uses the same ones.
CATEGORY_STYLES = {
    "parameters (trainable)": "bold blue",
    "parameters (frozen)": "blue",
    "gradients": "magenta",
    "optimizer state": "bold magenta",
    "other persistent": "yellow",
    "activations & temporaries": "bold green",
    "allocator cache": "grey62",
    "non-PyTorch": "red",
}


# The phases of a step in a narrow pane.
PHASE_SHORT = {"between steps": "btw", "forward": "fwd", "loss": "loss", "backward": "bwd", "optimizer": "opt"}


def stacked_bar(bill: Bill, width: int, scale: int) -> Text:
    """The bill as one bar of ``width`` cells, to ``scale`` bytes (the GPU's total)."""
    bar = Text()
    used = 0
    for name, value in bill.categories():
        if not value or value < 0:
            continue
        cells = round(value / scale * width) if scale else 0
        if cells == 0 and value > scale / width / 2:
            cells = 1
        cells = min(cells, width - used)
        bar.append("█" * cells, style=CATEGORY_STYLES[name])
        used += cells
    bar.append("░" * (width - used), style="grey23")
    return bar


def _gib(value: int | None) -> str:
    return "—" if value is None else fmt_bytes(value)


def render_agent(agent: AgentSample, device: AgentDevice, proc: ProcessSample, gpu: GpuSample | None,
                 width: int, narrow: bool) -> Text:
    stats = device.stats
    now = bill_now(device, proc.used_memory)
    peak = bill_at_peak(device, proc.used_memory)
    total = gpu.memory_total if gpu and gpu.memory_total else (proc.used_memory or stats.reserved)
    out = Text()
    out.append_text(_allocator_line(stats, now, proc.used_memory, narrow))
    out.append_text(_fit_line(device, now, peak, gpu, narrow))
    # The bill: a bar to scale of the whole GPU, then the categories now and at the peak.
    out.append_text(stacked_bar(now, max(10, width - 2), total))
    out.append("\n")
    out.append_text(_bill_cells(now, peak) if narrow else _bill_table(now, peak))
    census = device.census
    note = "* derived: allocated minus the counted categories. "
    note += f"Seen: {census.seen}" if census else not_counted_yet(agent)
    out.append(note, style="dim")
    return out


def _allocator_line(stats: AllocatorStats, now: Bill, nvml_used: int | None, narrow: bool) -> Text:
    """The allocator against NVML."""
    out = Text()
    out.append("torch ", style="bold")
    out.append(f"{'alloc' if narrow else 'allocated'} {fmt_bytes(stats.allocated)}", style="bold green")
    out.append(f" / {'rsv' if narrow else 'reserved'} {fmt_bytes(stats.reserved)}", style="bold")
    out.append(f"  cache {fmt_bytes(now.cache)}")
    if not narrow:
        rounding = stats.allocated - stats.requested
        out.append(f"  requested {fmt_bytes(stats.requested)} (+{fmt_bytes(rounding)} rounding)", style="dim")
    out.append(f"  NVML {_gib(nvml_used)}\n", style="cyan")
    return out


def _fit_line(device: AgentDevice, now: Bill, peak: Bill | None, gpu: GpuSample | None, narrow: bool) -> Text:
    """Can the next big allocation fit: fragmentation, retries, OOMs, and where the peak was."""
    stats = device.stats
    frag = fragmentation(stats)
    proxy = frag is None
    if frag is None:
        frag = fragmentation_proxy(stats)
    out = Text()
    out.append("frag ", style="dim")
    out.append("N/A" if frag is None else f"{frag:.2f}" + ("~" if proxy else ""),
               style="bold red" if frag is not None and frag > 0.5 and now.cache > (1 << 30) else "")
    if stats.largest_free_block is not None:
        label = "block" if narrow else "largest free block"
        out.append(f" ({label} {fmt_bytes(stats.largest_free_block)})", style="dim")
    out.append("  fits ≤ " if narrow else "  fits now ≤ ", style="dim")
    out.append(_gib(largest_fit(stats, gpu.memory_free if gpu else None)))
    # Narrow labels keep the line within 80 columns (a wrapped "@step" reads as a line of its own).
    out.append("  retry " if narrow else "  retries ", style="dim")
    out.append(str(stats.num_alloc_retries), style="bold red" if stats.num_alloc_retries else "")
    out.append("  OOM " if narrow else "  OOMs ", style="dim")
    out.append(str(stats.num_ooms), style="bold red" if stats.num_ooms else "")
    out.append(f"  peak {fmt_bytes(stats.allocated_peak)}", style="dim")
    step = peak.step if peak is not None and peak.step is not None else device.peak_step
    if step is not None:
        out.append(f" @{step}" if narrow else f" @step {step}", style="dim")
    if peak is not None and peak.phase:
        # Where in the step it was reached; "~": estimated, not measured at the peak.
        phase = PHASE_SHORT.get(peak.phase, peak.phase) if narrow else f"in {peak.phase}"
        out.append(f" {phase}{'~' if peak.estimate else ''}", style="dim")
    out.append("\n")
    return out


def _bill_rows(now: Bill, peak: Bill | None) -> list[tuple[str, int | None, int | None]]:
    """(category, now, at the peak) in the bill's order."""
    peak_rows = peak.categories() if peak else [(name, None) for name, _ in now.categories()]
    return [(name, value, at_peak) for (name, value), (_, at_peak) in zip(now.categories(), peak_rows, strict=True)]


def _bill_cells(now: Bill, peak: Bill | None) -> Text:
    """The bill in a narrow pane: short names, four to a line, now (activations also at the peak)."""
    cells = []
    for name, value, at_peak in _bill_rows(now, peak):
        cell = Text()
        cell.append(f"{SHORT_NAMES[name]} ", style=CATEGORY_STYLES[name])
        cell.append(_gib(value))
        if name == "activations & temporaries" and at_peak is not None:
            cell.append(f" (peak {_gib(at_peak)})", style="dim")
        cells.append(cell)
    out = Text()
    for i in range(0, len(cells), 4):
        out.append_text(Text("  ").join(cells[i:i + 4]))
        out.append("\n")
    return out


def _bill_table(now: Bill, peak: Bill | None) -> Text:
    """The bill as a table: each category now and at the peak, and their total (NVML's figure)."""
    out = Text()
    out.append(f"{'bill':<28}{'now':>10}{'at peak':>11}\n", style="bold underline")
    for name, value, at_peak in _bill_rows(now, peak):
        label = name + ("*" if name == "activations & temporaries" else "")
        out.append(f"{label:<28}", style=CATEGORY_STYLES[name])
        out.append(f"{_gib(value):>10}{_gib(at_peak):>11}\n")
    out.append(f"{'= NVML per process':<28}{_gib(now.total):>10}{_gib(peak.total if peak else None):>11}\n",
               style="bold")
    return out


def oom_headline(report: OomReport) -> Text:
    """The one line that says an OOM happened: when, where in the step, what it asked for."""
    t = Text()
    t.append(" OUT OF MEMORY ", style="bold white on red")
    when = clock(report.time)
    phase = module_text(report) or report.phase
    t.append(f" {when} · step {report.step} · {phase}: asked for {fmt_bytes(report.requested)} "
             f"with {fmt_bytes(report.device_free)} free of {fmt_bytes(report.device_limit)}\n", style="bold red")
    return t


def render_oom(report: OomReport, device: AgentDevice | None = None, non_pytorch: int | None = None,
               agent: AgentSample | None = None, show_path: bool = True) -> tuple[Text, Text]:
    """The sticky post-mortem of the process's latest out-of-memory error, in two parts: the
    first thing to do (shown right under the headline, before the numbers), and the rest —
    what PyTorch held, what kind of OOM it was, the bill at the failure (analysis/postmortem.py).
    ``show_path``: False in a replay, where the file is on the machine that recorded it."""
    summary = postmortem_of(report, device, non_pytorch, agent=agent)
    first = Text(summary.first_thing + "\n", style="bold") if summary.first_thing else Text()
    t = Text()
    if report.frames:  # the program's lines, innermost first
        t.append("at " + " ← ".join(frame_text(f) for f in report.frames) + "\n", style="bold")
    t.append(f"PyTorch held {fmt_bytes(report.reserved)} (allocated {fmt_bytes(report.allocated)})")
    if report.largest_free_block is not None:
        t.append(f", largest cached free block {fmt_bytes(report.largest_free_block)}")
    if report.largest_live_blocks:
        t.append("; biggest live blocks " + ", ".join(fmt_bytes(b) for b in report.largest_live_blocks[:4]))
    if summary.diagnosis is not None:  # what kind of OOM it was
        t.append("\n" + summary.diagnosis.headline, style="bold")
        for also in summary.diagnosis.also:
            t.append("\nAlso: " + also)
    for line in summary.lines:
        if line.startswith("Bill at the failure"):
            t.append("\n" + line)
    for line in allocation_lines(report):
        t.append("\n" + line)
    if report.path and show_path:
        t.append(f"\npost-mortem: {report.path}", style="dim")
        for line in trace_lines(report):
            t.append("\n" + line, style="dim")
    t.append("\n")
    return first, t


AGENT_STALE_S = 5.0  # an agent sample older than this (against NVML's) is flagged


def agent_title(agent: AgentSample, device: AgentDevice, now: float | None = None) -> Text:
    t = Text()
    age = None if now is None else now - agent.time
    if age is not None and age > AGENT_STALE_S:
        # The process is stopped, swapping, or its agent thread is starved: say so, keep the data.
        t.append(f" agent: no news for {age:.0f} s ", style="bold black on yellow")
    else:
        t.append(" agent ", style="bold reverse green")
    t.append(f" step {agent.step}")
    if device.last_step is not None and device.last_step.duration > 0:
        per_step = device.last_step.duration / max(1, device.last_step.steps)
        t.append(f" · {per_step * 1e3:.0f} ms/step" if per_step < 1 else f" · {per_step:.1f} s/step", style="dim")
    t.append(f" · {agent.phase}")
    if agent.rank is not None:
        t.append(f" · rank {agent.rank}")
    t.append(f" · torch {agent.torch_version}", style="dim")
    if agent.expandable_segments:
        t.append(" · expandable segments", style="dim")
    if agent.dropped:
        t.append(f" · {agent.dropped} frames dropped", style="yellow")
    if agent.error:
        t.append(f" · agent error: {agent.error[:80]}", style="yellow")
    return t
