"""``vramtop report``: the report as text for a terminal.

Memory in MiB rounded up as nvidia-smi rounds it; times as offsets from the start of the
recording (``+12.5 s``), the start itself in local time.
"""

from __future__ import annotations

from vramtop.analysis.report import GpuSummary, Report
from vramtop.analysis.report_processes import AgentSummary, PeakBill, ProcessSummary
from vramtop.sinks.report_jobs import jobs_text
from vramtop.sinks.report_words import event_label, logged_events, peak_note, problems
from vramtop.units import clock, fmt_mib, mib, percent

MAX_PROBLEMS = 20  # a file of garbage has one problem per line: show the first ones


def render_text(report: Report) -> str:
    lines = [f"vramtop report: {report.path}" + (" (compressed)" if report.compressed else "")]
    lines.extend(_run(report))
    for gpu in report.gpus:
        lines.append("")
        lines.extend(_gpu(report, gpu))
    lines.append("")
    lines.extend(_processes(report))
    lines.extend(jobs_text(report))
    for proc in report.processes:
        if proc.agent is not None:
            lines.append("")
            lines.extend(_agent(report, proc, proc.agent))
    lines.append("")
    lines.append("WARNINGS (raised again from the samples, as the TUI raises them)")
    if not report.warnings:
        lines.append("  none")
    for w in report.warnings:
        lines.append(f"  {fmt_offset(report.offset(w.time)):>10}  {w.level.upper():<8} {w.title}")
        lines.append(f"{'':14}{w.sentence}")
        lines.append(f"{'':14}-> {w.action}")
    for pm in report.postmortems:
        lines.append("")
        lines.append(f"POST-MORTEM  PID {pm.pid}, {fmt_offset(report.offset(pm.time))}, step {pm.oom.step}, "
                     f"{pm.oom.phase}" + (f"  ({pm.oom.path})" if pm.oom.path else ""))
        lines.extend(f"  {line}" for line in pm.lines)
        if pm.oom.largest_live_blocks:
            lines.append("  largest live blocks: " + ", ".join(fmt_mib(b) for b in pm.oom.largest_live_blocks[:8]))
    lines.append("")
    lines.append("EVENTS")
    logged = logged_events(report)
    if not logged:
        lines.append("  none recorded")
    for e in logged:
        pid = f"  (PID {e.pid})" if e.pid is not None else ""
        lines.append(f"  {fmt_offset(report.offset(e.time)):>10}  {event_label(e)}{pid}")
    lines.append("")
    lines.append("PROBLEMS")
    found = problems(report)
    lines.extend(f"  {p}" for p in found[:MAX_PROBLEMS])
    if len(found) > MAX_PROBLEMS:
        lines.append(f"  ... and {len(found) - MAX_PROBLEMS} more (--json lists them all)")
    if not found:
        lines.append("  none: the file is complete and undamaged")
    return "\n".join(lines)


def fmt_offset(seconds: float | None) -> str:
    """Seconds since the start: ``+12.5 s`` for short runs, ``+1:02:03`` for long ones."""
    if seconds is None:
        return "?"
    if seconds < 600:
        return f"+{seconds:.1f} s"
    whole = int(seconds)
    return f"+{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    hours, minutes = whole // 3600, whole // 60 % 60
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {whole % 60:02d} s"


def fmt_time(t: float | None) -> str:
    return clock(t, "%Y-%m-%d %H:%M:%S %Z")


def _run(report: Report) -> list[str]:
    lines = []
    if report.command:
        lines.append(f"  command   {' '.join(report.command)}")
    host = [report.host or "?"]
    if report.driver:
        host.append(f"driver {report.driver}")
    if report.cuda_driver:
        host.append(f"CUDA {report.cuda_driver}")
    if report.vramtop:
        host.append(f"recorded by vramtop {report.vramtop}")
    lines.append(f"  host      {'   '.join(host)}")
    lines.append(f"  started   {fmt_time(report.started)}")
    every = f" every {report.interval:g} s" if report.interval else ""
    samples = f"{report.samples} sample{'' if report.samples == 1 else 's'}{every}"
    if report.stale_samples:
        samples += f" ({report.stale_samples} stale)"
    lines.append(f"  duration  {fmt_duration(report.duration)}, {samples}")
    if report.writer_died:
        lines.append("  ended     no end record: the writer died (killed, crashed, out of disk) "
                     "or is still writing")
    else:
        lines.append(f"  ended     {report.end_reason}")
    return lines


def _gpu(report: Report, gpu: GpuSummary) -> list[str]:
    lines = [f"GPU {gpu.index}  {gpu.name}  {gpu.uuid}  {fmt_mib(gpu.memory_total)}"]
    if gpu.peak_used is None:
        lines.append("  memory.used  no readings")
        return lines
    pct = percent(gpu.peak_used, gpu.memory_total)
    average = None if gpu.average_used is None else round(gpu.average_used)
    lines.append(
        f"  memory.used  peak {fmt_mib(gpu.peak_used)}" + (f" ({pct:.1f}%)" if pct is not None else "")
        + f" at {fmt_offset(report.offset(gpu.peak_time))}"
        + f"   average {fmt_mib(average)} over {gpu.samples} samples"
    )
    return lines


def _processes(report: Report) -> list[str]:
    lines = ["PROCESSES"]
    if not report.processes:
        lines.append("  none seen")
        return lines
    lines.append(f"  {'PID':>8}  {'GPU':>3}  {'PEAK NVML':>10}  {'AT':>10}  {'AGENT':<5}  COMMAND")
    for p in report.processes:
        gpu = "?" if p.gpu_index is None else str(p.gpu_index)
        lines.append(
            f"  {p.pid:>8}  {gpu:>3}  {fmt_mib(p.peak_used):>10}  {fmt_offset(report.offset(p.peak_time)):>10}  "
            f"{'yes' if p.agent else '-':<5}  {p.command or '?'}"
        )
    return lines


def _agent(report: Report, proc: ProcessSummary, a: AgentSummary) -> list[str]:
    gpu = "?" if proc.gpu_index is None else proc.gpu_index
    extra = f", rank {a.rank}" if a.rank is not None else ""
    lines = [
        f"PID {proc.pid} on GPU {gpu}: agent (torch {a.torch_version}{extra}), {a.samples} samples "
        f"from {fmt_offset(report.offset(a.first_seen))} to {fmt_offset(report.offset(a.last_seen))}",
        f"  allocator peak  allocated {fmt_mib(a.peak_allocated)}, reserved {fmt_mib(a.peak_reserved)}, "
        f"first seen at {fmt_offset(report.offset(a.peak_time))}"
        + (f" (step {a.peak_step})" if a.peak_step is not None else ""),
    ]
    if a.at_peak is not None:
        lines.extend(_bill(report, a.at_peak))
    steps = f"  steps           {a.steps} seen"
    if a.step_time is not None:
        steps += f", {a.step_time:.3g} s per step (median of {a.steps_measured} measured)"
    if a.highest_step_peak is not None:
        steps += f", highest step peak {fmt_mib(a.highest_step_peak)} allocated"
    steps += f"; samples saw up to {fmt_mib(a.highest_sampled)} allocated"
    lines.append(steps)
    retries = f"{a.num_alloc_retries} allocation retr{'y' if a.num_alloc_retries == 1 else 'ies'}"
    if a.num_alloc_retries:
        retries += " (the allocator flushed its cache and called cudaMalloc again)"
    ooms = f"{a.num_ooms} OOM{'' if a.num_ooms == 1 else 's'}"
    if a.oom_times:
        ooms += " (seen at " + ", ".join(fmt_offset(report.offset(t)) for t in a.oom_times) + ")"
    lines.append(f"  allocator       {retries}, {ooms}")
    return lines


def _bill(report: Report, peak: PeakBill) -> list[str]:
    bill = peak.bill
    lines = [f"  bill at the peak (from the sample at {fmt_offset(report.offset(peak.time))}"
             + (f", NVML per-process {fmt_mib(peak.nvml_used)} then" if peak.nvml_used is not None else "")
             + "):"]
    whole = bill.total if bill.total is not None else bill.reserved
    for name, value in bill.categories():
        if value is None:
            lines.append(f"    {name:<26} {'unknown':>10}")
            continue
        pct = percent(value, whole)
        shown = f"{mib(value)} MiB" if value >= 0 else f"-{mib(-value)} MiB"
        lines.append(f"    {name:<26} {shown:>10}" + (f"  {pct:5.1f}%" if pct is not None else ""))
    if bill.total is not None:
        lines.append(f"    {'total':<26} {fmt_mib(bill.total):>10}")
    else:
        lines.append(f"    {'reserved (PyTorch)':<26} {fmt_mib(bill.reserved):>10}")
    note = peak_note(peak)
    if note:
        lines.append(f"    note: {note}")
    lines.append("    activations & temporaries are derived: allocated minus everything counted;")
    lines.append("    the total is the allocator's reserved peak plus non-PyTorch memory")
    return lines
