"""The OOM post-mortem file: written on the failing thread, in the agent's private directory.

It must outlive the process and need no monitor: the agent writes it to its per-user runtime
directory (0700, the one that holds its socket), never to the program's working directory, and
says where once on stderr. Monitors and ``vramtop record`` pick it up from there by PID
(``oom-<pid>-*.json``). The file is created with O_EXCL and O_NOFOLLOW: a name planted in
advance (a symlink to a file of the user's) makes the write fail rather than follow it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from vramtop.codec import to_dict
from vramtop.model import OomReport
from vramtop.protocol import POSTMORTEM_SCHEMA, ensure_private_dir, postmortem_name

KEEP = 32  # post-mortem files kept in the directory; older ones are removed


def summary_lines(report: OomReport) -> list[str]:
    """A human summary; the analysis package words it when it can be imported."""
    try:
        from vramtop.analysis.postmortem import postmortem_of

        return list(postmortem_of(report).lines)
    except Exception:
        return [f"CUDA out of memory: asked for {report.requested} bytes with {report.device_free} free "
                f"of {report.device_limit}; PyTorch held {report.reserved} (allocated {report.allocated})."]


def write(report: OomReport, directory: Path) -> str | None:
    """Write the post-mortem into ``directory`` (created private if need be) at once, without
    its summary (add_summary adds it once the report has reached the monitors); its path, or
    None when that is impossible (the directory is not safe, or the disk is full)."""
    try:
        ensure_private_dir(directory)
    except OSError:
        return None
    path = directory / postmortem_name(os.getpid(), report.time)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError:
        return None
    try:
        os.write(fd, _document(replace_path(report, str(path)), summary=False))
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    finally:
        os.close(fd)
    _prune(directory)
    return str(path)


def add_summary(report: OomReport, path: str) -> None:
    """Rewrite the post-mortem with its summary in words (which imports vramtop's analysis: too
    slow for the moments before the report has been sent). Atomic: a new file renamed over."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError:
        return
    try:
        os.write(fd, _document(report, summary=True))
        os.close(fd)
        os.replace(tmp, target)
    except OSError:
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()


def _document(report: OomReport, summary: bool) -> bytes:
    document: dict[str, Any] = {"schema": POSTMORTEM_SCHEMA, "version": 1, "pid": os.getpid(),
                                "argv": sys.argv[:16], "report": to_dict(report)}
    if summary:
        document["summary"] = summary_lines(report)
    return json.dumps(document, indent=2).encode()


def replace_path(report: OomReport, path: str) -> OomReport:
    from dataclasses import replace

    return replace(report, path=path)


def _prune(directory: Path) -> None:
    with contextlib.suppress(OSError):
        files = sorted(directory.glob("oom-*.json"), key=lambda p: p.stat().st_mtime)
        for old in files[:-KEEP]:
            with contextlib.suppress(OSError):
                old.unlink()
