"""``vramtop report --json``: the report as one JSON document (schema ``vramtop.report``, version 1).

Memory in integer bytes (peaks of memory.used also in MiB as nvidia-smi rounds them), times
in seconds since the epoch plus ``*_offset``: seconds since the start of the recording.
A reader ignores fields it does not know; anything a version-1 reader would misread gets a new
``version``.
"""

from __future__ import annotations

import json
from typing import Any

from vramtop import __version__
from vramtop.analysis.oom_place import where
from vramtop.analysis.report import GpuSummary, Report
from vramtop.analysis.report_processes import AgentSummary, PeakBill, ProcessSummary
from vramtop.codec import to_dict
from vramtop.sinks.report_jobs import jobs_json
from vramtop.sinks.report_words import event_label, peak_note, problems
from vramtop.units import mib

REPORT_SCHEMA = "vramtop.report"
REPORT_VERSION = 1


def render_json(report: Report) -> str:
    return json.dumps(report_document(report), indent=2)


def report_document(report: Report) -> dict[str, Any]:
    return {
        "schema": REPORT_SCHEMA,
        "version": REPORT_VERSION,
        "vramtop": __version__,
        "file": report.path,
        "compressed": report.compressed,
        "run": {
            "host": report.host,
            "driver": report.driver,
            "cuda_driver": report.cuda_driver,
            "written_by": report.vramtop,
            "command": None if report.command is None else list(report.command),
            "interval": report.interval,
            "started": report.started,
            "ended": report.ended,
            "duration": report.duration,
            "samples": report.samples,
            "stale_samples": report.stale_samples,
            "end_reason": report.end_reason,
            "writer_died": report.writer_died,
        },
        "gpus": [_gpu(report, g) for g in report.gpus],
        "processes": [_process(report, p) for p in report.processes],
        "jobs": jobs_json(report),
        "events": [
            {"time": e.time, "offset": report.offset(e.time), "kind": e.kind, "pid": e.pid,
             "label": event_label(e), "data": e.data}
            for e in report.events
        ],
        "warnings": [
            {"time": w.time, "offset": report.offset(w.time), "level": w.level, "kind": w.kind, "pid": w.pid,
             "gpu_index": w.gpu_index, "title": w.title, "sentence": w.sentence, "action": w.action}
            for w in report.warnings
        ],
        "postmortems": [
            {"time": pm.time, "offset": report.offset(pm.time), "pid": pm.pid, "oom": to_dict(pm.oom),
             "where": where(pm.oom),
             "lines": list(pm.lines)}
            for pm in report.postmortems
        ],
        "problems": problems(report),
    }


def _mib(value: int | float | None) -> int | None:
    return None if value is None else mib(int(value + 0.5) if isinstance(value, float) else value)


def _gpu(report: Report, g: GpuSummary) -> dict[str, Any]:
    return {
        "index": g.index, "uuid": g.uuid, "name": g.name, "memory_total": g.memory_total,
        "samples": g.samples,
        "peak_used": g.peak_used, "peak_used_mib": _mib(g.peak_used),
        "peak_time": g.peak_time, "peak_offset": report.offset(g.peak_time),
        "average_used": None if g.average_used is None else round(g.average_used),
        "average_used_mib": _mib(g.average_used),
    }


def _process(report: Report, p: ProcessSummary) -> dict[str, Any]:
    return {
        "pid": p.pid, "gpu_uuid": p.gpu_uuid, "gpu_index": p.gpu_index, "command": p.command,
        "user": p.user,
        "first_seen": p.first_seen, "last_seen": p.last_seen,
        "peak_used": p.peak_used, "peak_used_mib": _mib(p.peak_used),
        "peak_time": p.peak_time, "peak_offset": report.offset(p.peak_time),
        "agent": None if p.agent is None else _agent(report, p.agent),
    }


def _agent(report: Report, a: AgentSummary) -> dict[str, Any]:
    return {
        "torch_version": a.torch_version, "device_index": a.device_index, "rank": a.rank,
        "expandable_segments": a.expandable_segments,
        "samples": a.samples, "first_seen": a.first_seen, "last_seen": a.last_seen,
        "peak_allocated": a.peak_allocated, "peak_reserved": a.peak_reserved,
        "peak_time": a.peak_time, "peak_offset": report.offset(a.peak_time), "peak_step": a.peak_step,
        "bill_at_peak": None if a.at_peak is None else _bill(report, a.at_peak),
        "steps": a.steps, "step_time": a.step_time, "steps_measured": a.steps_measured,
        "highest_step_peak": a.highest_step_peak, "highest_allocated_sampled": a.highest_sampled,
        "num_alloc_retries": a.num_alloc_retries, "num_ooms": a.num_ooms,
        "oom_times": list(a.oom_times), "oom_offsets": [report.offset(t) for t in a.oom_times],
    }


def _bill(report: Report, peak: PeakBill) -> dict[str, Any]:
    bill = peak.bill
    return {
        "time": peak.time, "offset": report.offset(peak.time),
        "categories": dict(bill.categories()),
        "allocated": bill.allocated, "reserved": bill.reserved,
        "total": bill.total, "nvml_used": peak.nvml_used, "note": peak_note(peak),
    }
