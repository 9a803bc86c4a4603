"""Words for the report's sinks, so that text, JSON, HTML and the picture say the same: the
problems of a recording, which recorded events a reader wants listed and a label for each, why
the bill at the peak lacks a figure."""

from __future__ import annotations

from vramtop.analysis.report import Report
from vramtop.analysis.report_processes import LAGGING_PROCESS_FIGURE, NO_PROCESS_FIGURE, PeakBill
from vramtop.recording import Event


def problems(report: Report) -> list[str]:
    """What is wrong with the recording or limits the report: the reader's damage first."""
    out = list(report.damage)
    stale = report.stale_samples
    if stale:
        out.append(f"{stale} of {report.samples} samples are stale: NVML did not answer in time "
                   "and the last good figures were recorded again (left out of peaks and averages)")
    errors = report.sample_errors
    if errors:
        out.append(f"{len(errors)} samples carry an error, e.g. {errors[0]}")
    ignored = report.ignored_records
    if ignored:
        out.append(f"{ignored} record{'s' if ignored != 1 else ''} of an unknown type "
                   "ignored (from a newer vramtop, or not vramtop's)")
    return out


PEAK_NOTES = {
    NO_PROCESS_FIGURE: "NVML gave no per-process figure for this process: non-PyTorch memory unknown",
    LAGGING_PROCESS_FIGURE: ("NVML's per-process figure was older than the allocator's at the peak: "
                             "non-PyTorch memory unknown"),
}


def peak_note(peak: PeakBill) -> str | None:
    """Why the bill at the peak has no non-PyTorch figure (and no total), when it has none."""
    return None if peak.missing_non_pytorch is None else PEAK_NOTES[peak.missing_non_pytorch]


def logged_events(report: Report) -> list[Event]:
    """The events a reader wants in the log: the recorder's warning events are left out, since
    the report lists the warnings in full (raised again from the samples)."""
    return [e for e in report.events if e.kind not in ("warning", "warning.cleared")]


def event_label(event: Event) -> str:
    """A short description of an event for people."""
    data = event.data
    if event.kind == "command.started":
        argv = data.get("argv")
        return "command started" + (f": {' '.join(map(str, argv))}" if isinstance(argv, list) else "")
    if event.kind == "command.exited":
        code = data.get("returncode")
        if isinstance(code, int) and code < 0:
            return f"command killed by signal {-code}"
        return f"command exited with {code}"
    if event.kind == "oom":
        parts = ["OOM"]
        for key in ("requested", "device_free", "free"):
            value = data.get(key)
            if isinstance(value, int) and 0 <= value < 1 << 63:  # anything else is damage: left out
                parts.append(f"{key.replace('_', ' ')} {value >> 20} MiB")
        return ", ".join(parts)
    message = data.get("message") or data.get("text") or data.get("title")
    if event.kind == "warning":
        level = data.get("level")
        return f"warning{f' ({level})' if level else ''}" + (f": {message}" if message else "")
    if event.kind == "warning.cleared":
        return "warning cleared" + (f": {message}" if message else "")
    return event.kind + (f": {message}" if message else "")
