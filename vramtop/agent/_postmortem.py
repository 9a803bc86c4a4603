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
    """Write the post-mortem into ``directory`` (created private if need be); its path, or None
    when that is impossible (the directory is not safe, or the disk is full)."""
    try:
        ensure_private_dir(directory)
    except OSError:
        return None
    path = directory / postmortem_name(os.getpid(), report.time)
    document: dict[str, Any] = {"schema": POSTMORTEM_SCHEMA, "version": 1, "pid": os.getpid(),
                                "argv": sys.argv[:16], "report": to_dict(replace_path(report, str(path)))}
    document["summary"] = summary_lines(report)
    data = json.dumps(document, indent=2).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError:
        return None
    try:
        os.write(fd, data)
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    finally:
        os.close(fd)
    _prune(directory)
    return str(path)


def replace_path(report: OomReport, path: str) -> OomReport:
    from dataclasses import replace

    return replace(report, path=path)


def _prune(directory: Path) -> None:
    with contextlib.suppress(OSError):
        files = sorted(directory.glob("oom-*.json"), key=lambda p: p.stat().st_mtime)
        for old in files[:-KEEP]:
            with contextlib.suppress(OSError):
                old.unlink()
