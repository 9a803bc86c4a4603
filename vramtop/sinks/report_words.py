"""Words for the report's sinks: which recorded events a reader wants listed, and a short
label for each (text, JSON, HTML and the picture's marks say the same)."""

from __future__ import annotations

from vramtop.analysis.report import Report
from vramtop.recording import Event


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
