"""``vramtop report --html``: one self-contained web page, the summary and the picture.

No scripts, no style sheets, fonts or images from elsewhere: the page opens offline, from an
e-mail attachment or a CI artifact, and shows the same thing everywhere.
"""

from __future__ import annotations

from html import escape

from vramtop import __version__
from vramtop.analysis.report import Report
from vramtop.analysis.report_processes import AgentSummary, PeakBill, ProcessSummary
from vramtop.sinks.report_jobs import jobs_html
from vramtop.sinks.report_svg_style import CATEGORY_COLOURS
from vramtop.sinks.report_text import MAX_PROBLEMS, fmt_duration, fmt_offset, fmt_time
from vramtop.sinks.report_words import event_label, logged_events, peak_note, problems
from vramtop.units import fmt_mib, percent

SVG_NAMESPACE = ' xmlns="http://www.w3.org/2000/svg"'  # implied for <svg> inside HTML

STYLE = """
body { font-family: DejaVu Sans, Verdana, Helvetica, Arial, sans-serif; color: #222; margin: 24px auto;
       max-width: 1040px; padding: 0 16px; line-height: 1.4; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.file { color: #666; font-family: monospace; word-break: break-all; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 14px; }
th, td { padding: 3px 10px; text-align: left; vertical-align: top; border-bottom: 1px solid #e6e6e6; }
th { background: #f4f4f4; font-weight: 600; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.run th { background: none; width: 120px; color: #555; font-weight: normal; }
code { font-size: 13px; }
.box { border-radius: 4px; padding: 8px 14px; margin: 12px 0; font-size: 14px; }
.problems { background: #fff4e0; border: 1px solid #f0c36d; }
.ok { background: #eef7ee; border: 1px solid #a6d3a6; }
.swatch { display: inline-block; width: 12px; height: 12px; margin-right: 6px; vertical-align: -1px; }
.picture svg { max-width: 100%; height: auto; }
.note { color: #666; font-size: 13px; }
footer { margin-top: 32px; color: #888; font-size: 12px; }
"""


def render_html(report: Report, svg: str) -> str:
    title = "vramtop report" + (f": {' '.join(report.command)}" if report.command else "")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{STYLE}</style>",
        "</head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<div class="file">{escape(report.path)}{" (compressed)" if report.compressed else ""}</div>',
        *_problems(report),
        *_run(report),
        '<div class="picture">',
        svg.replace(SVG_NAMESPACE, "", 1),
        "</div>",
        *_gpus(report),
        *_processes(report),
        *jobs_html(report),
        *(line for p in report.processes if p.agent is not None for line in _agent(report, p, p.agent)),
        *_warnings(report),
        *_events(report),
        f"<footer>vramtop {escape(__version__)} · <code>vramtop report --json</code> gives the same "
        "figures as a JSON document (schema vramtop.report, version 1)</footer>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _row(header: str, value: str) -> str:
    return f"<tr><th>{escape(header)}</th><td>{value}</td></tr>"


def _run(report: Report) -> list[str]:
    rows = []
    if report.command:
        rows.append(_row("command", f"<code>{escape(' '.join(report.command))}</code>"))
    host = [escape(report.host or "?")]
    if report.driver:
        host.append(f"driver {escape(report.driver)}")
    if report.cuda_driver:
        host.append(f"CUDA {escape(report.cuda_driver)}")
    rows.append(_row("host", " · ".join(host)))
    rows.append(_row("started", escape(fmt_time(report.started))))
    every = f", every {report.interval:g} s" if report.interval else ""
    rows.append(_row("duration", escape(f"{fmt_duration(report.duration)}, {report.samples} samples{every}")))
    ended = ("no end record: the writer died (killed, crashed, out of disk) or is still writing"
             if report.writer_died else report.end_reason or "")
    rows.append(_row("ended", escape(ended)))
    if report.vramtop:
        rows.append(_row("recorded by", f"vramtop {escape(report.vramtop)}"))
    return ['<table class="run">', *rows, "</table>"]


def _problems(report: Report) -> list[str]:
    found = problems(report)
    if not found:
        return ['<div class="box ok">The recording is complete and undamaged.</div>']
    items = "".join(f"<li>{escape(p)}</li>" for p in found[:MAX_PROBLEMS])
    if len(found) > MAX_PROBLEMS:
        items += f"<li>… and {len(found) - MAX_PROBLEMS} more</li>"
    return [f'<div class="box problems"><strong>Problems in this recording</strong> '
            f"(the report covers what could be read)<ul>{items}</ul></div>"]


def _gpus(report: Report) -> list[str]:
    out = ["<h2>GPUs</h2>", "<table><tr><th>GPU</th><th>name</th><th class=n>memory.total</th>"
           "<th class=n>peak memory.used</th><th class=n>at</th><th class=n>average</th><th>UUID</th></tr>"]
    for g in report.gpus:
        pct = percent(g.peak_used, g.memory_total)
        peak = fmt_mib(g.peak_used) + (f" ({pct:.1f}%)" if pct is not None else "")
        average = None if g.average_used is None else round(g.average_used)
        out.append(
            f"<tr><td>{g.index}</td><td>{escape(g.name)}</td><td class=n>{fmt_mib(g.memory_total)}</td>"
            f"<td class=n>{escape(peak)}</td><td class=n>{escape(fmt_offset(report.offset(g.peak_time)))}</td>"
            f"<td class=n>{fmt_mib(average)}</td><td><code>{escape(g.uuid)}</code></td></tr>"
        )
    out.append("</table>")
    return out


def _processes(report: Report) -> list[str]:
    out = ["<h2>Processes</h2>"]
    if not report.processes:
        return [*out, "<p>None seen.</p>"]
    out.append("<table><tr><th class=n>PID</th><th class=n>GPU</th><th class=n>peak (NVML)</th><th class=n>at</th>"
               "<th>agent</th><th>command</th></tr>")
    for p in report.processes:
        out.append(
            f"<tr><td class=n>{p.pid}</td><td class=n>{'?' if p.gpu_index is None else p.gpu_index}</td>"
            f"<td class=n>{fmt_mib(p.peak_used)}</td><td class=n>{escape(fmt_offset(report.offset(p.peak_time)))}</td>"
            f"<td>{'yes' if p.agent else '—'}</td><td><code>{escape(p.command or '?')}</code></td></tr>"
        )
    out.append("</table>")
    return out


def _agent(report: Report, proc: ProcessSummary, a: AgentSummary) -> list[str]:
    gpu = "?" if proc.gpu_index is None else proc.gpu_index
    out = [f"<h3>PID {proc.pid} on GPU {gpu}: PyTorch {escape(a.torch_version)}"
           + (f", rank {a.rank}" if a.rank is not None else "") + "</h3>"]
    facts = [
        ("allocator peak", f"allocated {fmt_mib(a.peak_allocated)}, reserved {fmt_mib(a.peak_reserved)}, first "
         f"seen at {fmt_offset(report.offset(a.peak_time))}" + (f" (step {a.peak_step})" if a.peak_step is not None
                                                                else "")),
        ("steps", f"{a.steps} seen" + (f", {a.step_time:.3g} s per step (median of {a.steps_measured})"
                                       if a.step_time is not None else "")
         + (f", highest step peak {fmt_mib(a.highest_step_peak)} allocated" if a.highest_step_peak is not None
            else "")
         + f"; samples saw up to {fmt_mib(a.highest_sampled)} allocated"),
        ("allocator", f"{a.num_alloc_retries} allocation retr{'y' if a.num_alloc_retries == 1 else 'ies'}, "
                      f"{a.num_ooms} OOM{'' if a.num_ooms == 1 else 's'}"),
        ("agent samples", f"{a.samples}, from {fmt_offset(report.offset(a.first_seen))} to "
         f"{fmt_offset(report.offset(a.last_seen))}"),
    ]
    out.append('<table class="run">' + "".join(_row(k, escape(v)) for k, v in facts) + "</table>")
    if a.at_peak is not None:
        out.extend(_bill(report, a.at_peak))
    return out


def _bill(report: Report, peak: PeakBill) -> list[str]:
    bill = peak.bill
    whole = bill.total if bill.total is not None else bill.reserved
    out = [f"<p>The bill at the allocator's peak (sample at {escape(fmt_offset(report.offset(peak.time)))}):</p>",
           "<table><tr><th>category</th><th class=n>MiB</th><th class=n>share</th></tr>"]
    for name, value in bill.categories():
        colour = CATEGORY_COLOURS.get(name, "#888")
        swatch = f'<span class="swatch" style="background:{colour}"></span>'
        pct = percent(value, whole) if value is not None else None
        shown = "unknown" if value is None else (fmt_mib(value) if value >= 0 else f"-{fmt_mib(-value)}")
        out.append(f"<tr><td>{swatch}{escape(name)}</td><td class=n>{escape(shown)}</td>"
                   f"<td class=n>{'' if pct is None else f'{pct:.1f}%'}</td></tr>")
    if bill.total is not None:
        out.append(f"<tr><th>total (NVML per process)</th><th class=n>{fmt_mib(bill.total)}</th><th></th></tr>")
    else:
        out.append(f"<tr><th>reserved by PyTorch</th><th class=n>{fmt_mib(bill.reserved)}</th><th></th></tr>")
    out.append("</table>")
    notes = ["Activations &amp; temporaries are derived: allocated minus everything counted."]
    note = peak_note(peak)
    if note:
        notes.insert(0, escape(note) + ".")
    out.append(f'<p class="note">{" ".join(notes)}</p>')
    return out


def _warnings(report: Report) -> list[str]:
    out = ["<h2>Warnings</h2>"]
    if not report.warnings:
        out.append("<p>None.</p>")
    else:
        out.append("<table><tr><th class=n>at</th><th>level</th><th>warning</th></tr>")
        for w in report.warnings:
            out.append(f"<tr><td class=n>{escape(fmt_offset(report.offset(w.time)))}</td><td>{escape(w.level)}</td>"
                       f"<td><b>{escape(w.title)}</b><br>{escape(w.sentence)}<br>&rarr; {escape(w.action)}</td></tr>")
        out.append("</table>")
    for pm in report.postmortems:
        out.append(f"<h2>Post-mortem: PID {pm.pid}, {escape(fmt_offset(report.offset(pm.time)))}, "
                   f"step {pm.oom.step}, {escape(pm.oom.phase)}</h2>")
        out.append("<ul>" + "".join(f"<li>{escape(line)}</li>" for line in pm.lines) + "</ul>")
    return out


def _events(report: Report) -> list[str]:
    out = ["<h2>Events</h2>"]
    logged = logged_events(report)
    if not logged:
        return [*out, "<p>None recorded.</p>"]
    out.append("<table><tr><th class=n>at</th><th>event</th><th class=n>PID</th></tr>")
    for e in logged:
        out.append(f"<tr><td class=n>{escape(fmt_offset(report.offset(e.time)))}</td><td>{escape(event_label(e))}</td>"
                   f"<td class=n>{'' if e.pid is None else e.pid}</td></tr>")
    out.append("</table>")
    return out
