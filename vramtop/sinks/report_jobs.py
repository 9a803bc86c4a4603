"""The distributed jobs of ``vramtop report`` (analysis/report_jobs.py) in text, JSON and HTML:
a sentence per job (its ranks, the one that came closest to OOM, the spread of the peaks), then
a line per rank with its GPU, its highest step peak and its least headroom."""

from __future__ import annotations

from html import escape
from typing import Any

from vramtop.analysis.report import Report
from vramtop.analysis.report_jobs import JobSummary
from vramtop.units import fmt_mib


def job_sentence(report: Report, job: JobSummary) -> str:
    from vramtop.sinks.report_text import fmt_offset  # which imports this module

    here = len(job.ranks)
    ranks = f"{here} of {job.world_size} ranks" if job.world_size not in (None, here) else f"{here} ranks"
    parts = [f"{job.label}" + (" (grouped by world size: an older agent)" if job.guessed else ""), ranks]
    closest = job.closest
    if closest is not None and closest.least_headroom is not None:
        room = closest.least_headroom
        left = f"{fmt_mib(room)} left" if room >= 0 else f"{fmt_mib(-room)} short"
        parts.append(f"closest to OOM: rank {closest.rank} (GPU {closest.gpu_index}, {left} at its peak, "
                     f"{fmt_offset(report.offset(closest.least_headroom_time))})")
    highest = job.highest
    if job.spread is not None and highest is not None:
        ratio = f", max/median {job.ratio:.2f}" if job.ratio is not None else ""
        parts.append(f"peaks spread {fmt_mib(job.spread)} (rank {highest.rank} highest{ratio})")
    return " · ".join(parts)


def jobs_text(report: Report) -> list[str]:
    if not report.jobs:
        return []
    lines = ["", "DISTRIBUTED JOBS (ranks grouped by their launcher)"]
    for job in report.jobs:
        lines.append(f"  {job_sentence(report, job)}")
        lines.append(f"    {'RANK':>4}  {'GPU':>3}  {'PID':>8}  {'PEAK':>10}  {'LEAST HEADROOM':>14}  STEPS")
        for r in job.ranks:
            gpu = "?" if r.gpu_index is None else str(r.gpu_index)
            lines.append(f"    {r.rank:>4}  {gpu:>3}  {r.pid:>8}  {fmt_mib(r.peak):>10}  "
                         f"{fmt_mib(r.least_headroom):>14}  {r.steps}")
    lines.append("  peak: the bill at the step peak (reserved then + non-PyTorch); headroom: what the GPU "
                 "had left at it")
    return lines


def jobs_json(report: Report) -> list[dict[str, Any]]:
    out = []
    for job in report.jobs:
        closest, highest = job.closest, job.highest
        out.append({
            "label": job.label, "world_size": job.world_size, "guessed": job.guessed,
            "closest_rank": closest.rank if closest else None,
            "highest_rank": highest.rank if highest else None,
            "peak_spread": job.spread, "peak_ratio": job.ratio,
            "ranks": [{"rank": r.rank, "pid": r.pid, "gpu_index": r.gpu_index, "peak": r.peak,
                       "peak_time": r.peak_time, "peak_offset": report.offset(r.peak_time),
                       "least_headroom": r.least_headroom, "least_headroom_time": r.least_headroom_time,
                       "least_headroom_offset": report.offset(r.least_headroom_time), "steps": r.steps}
                      for r in job.ranks],
        })
    return out


def jobs_html(report: Report) -> list[str]:
    if not report.jobs:
        return []
    out = ["<h2>Distributed jobs</h2>"]
    for job in report.jobs:
        closest, highest = job.closest, job.highest
        out.append(f"<p>{escape(job_sentence(report, job))}</p>")
        out.append("<table><tr><th class=n>rank</th><th class=n>GPU</th><th class=n>PID</th>"
                   "<th class=n>step peak</th><th class=n>least headroom</th><th class=n>steps</th><th></th></tr>")
        for r in job.ranks:
            mark = ("◀ closest to OOM" if closest is r else "▲ highest peak" if highest is r and job.spread
                    else "")
            out.append(f"<tr><td class=n>{r.rank}</td><td class=n>{'?' if r.gpu_index is None else r.gpu_index}</td>"
                       f"<td class=n>{r.pid}</td><td class=n>{escape(fmt_mib(r.peak))}</td>"
                       f"<td class=n>{escape(fmt_mib(r.least_headroom))}</td><td class=n>{r.steps}</td>"
                       f"<td>{mark}</td></tr>")
        out.append("</table>")
    return out
