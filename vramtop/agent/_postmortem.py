"""The OOM post-mortem: captured on the failing thread, written next to the program.

It must work with no monitor attached, so the agent writes it to a file in the program's
working directory (or, if that is not writable, the agent's runtime directory) and says where
once on stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from vramtop.codec import to_dict
from vramtop.model import OomReport

POSTMORTEM_SCHEMA = "vramtop.oom"


def filename(pid: int, when: float) -> str:
    return f"vramtop-oom-{pid}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(when))}.json"


def summary_lines(report: OomReport) -> list[str]:
    """A human summary; the analysis package words it when it can be imported."""
    try:
        from vramtop.analysis.postmortem import postmortem_of

        return list(postmortem_of(report).lines)
    except Exception:
        return [f"CUDA out of memory: asked for {report.requested} bytes with {report.device_free} free "
                f"of {report.device_limit}; PyTorch held {report.reserved} (allocated {report.allocated})."]


def write(report: OomReport, fallback_dir: Path) -> str | None:
    """Write the post-mortem; its path, or None if nowhere was writable."""
    document: dict[str, Any] = {"schema": POSTMORTEM_SCHEMA, "version": 1, "pid": os.getpid(),
                                "argv": sys.argv[:16], "summary": summary_lines(report), "report": to_dict(report)}
    data = json.dumps(document, indent=2).encode()
    name = filename(os.getpid(), report.time)
    for directory in (Path.cwd(), fallback_dir):
        path = directory / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError:
            continue
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return str(path)
    return None
