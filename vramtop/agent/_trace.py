"""``vramtop run --trace``: PyTorch's allocation history, and at an OOM its snapshot.

Off by default. When ``VRAMTOP_AGENT_TRACE`` holds a number of entries, the agent turns on
``torch.cuda.memory._record_memory_history`` (Python stacks only: C++ frames cost more to
collect) on the training thread, at its first model call or optimizer step: PyTorch registers
part of the history (its record_function annotations) for the calling thread only. Its stacks
are read only once that cannot make torch import anything (_torchstats.stacks_readable). At an
OOM the post-mortem names the largest live blocks by the stack that allocated them, and the
snapshot is saved beside the post-mortem file, as ``torch.cuda.memory._dump_snapshot`` saves it
(a pickle that PyTorch's memory_viz opens). The agent writes that pickle; nothing in vramtop
ever reads one.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any

from vramtop.model import CodeFrame, LiveAllocation, OomReport
from vramtop.protocol import AGENT_TRACE_ENV

from ._place import CodeKinds, pick_frames
from ._torchstats import stacks_readable

LARGEST = 5  # live blocks named
FRAMES = 3  # frames kept per block
KEEP = 4  # history files kept in the directory (each can be large); older ones are removed
# Why an OOM has no history when it came before the training thread turned it on.
NOT_YET = "it was not on yet: it starts at the training thread's first model call or optimizer step"


def entries_from_env(environ: Any = os.environ) -> int | None:
    """The history's size asked for by ``vramtop run --trace``; None: tracing is off."""
    value = str(environ.get(AGENT_TRACE_ENV, "")).strip()
    return int(value) if value.isdecimal() and int(value) > 0 else None


def start_history(torch: Any, max_entries: int) -> str | None:
    """Turn the allocation history on; why not, or None when it is on."""
    record = getattr(getattr(getattr(torch, "cuda", None), "memory", None), "_record_memory_history", None)
    if record is None:
        return "this torch has no allocation history (torch.cuda.memory._record_memory_history)"
    try:
        record(enabled="all", context="all", stacks="python", max_entries=max_entries)
        return None
    except TypeError:  # torch < 2.1: the older signature
        try:
            record(True, trace_alloc_max_entries=max_entries, trace_alloc_record_context=True)
            return None
        except Exception as err:
            return f"the allocation history could not be turned on: {err}"
    except Exception as err:
        return f"the allocation history could not be turned on: {err}"


def stop_history(torch: Any) -> None:
    record = getattr(getattr(getattr(torch, "cuda", None), "memory", None), "_record_memory_history", None)
    with contextlib.suppress(Exception):
        if record is not None:
            record(enabled=None)


def save_history(torch: Any, device: int, postmortem: str | None,
                 kinds: CodeKinds) -> tuple[tuple[LiveAllocation, ...], str | None, str | None]:
    """At an OOM: (the largest live blocks of ``device`` with their stacks, the history file
    saved beside ``postmortem``, why it could not be saved). Never raises."""
    snapshot_fn = getattr(getattr(getattr(torch, "cuda", None), "memory", None), "_snapshot", None)
    if snapshot_fn is None:
        return (), None, "this torch cannot take an allocation snapshot (torch.cuda.memory._snapshot)"
    if not stacks_readable(torch):
        return (), None, ("its stacks were not read: PyTorch would import torch._inductor to read them, "
                          "and the program had not imported it")
    try:
        snapshot = snapshot_fn()
    except Exception as err:
        return (), None, f"the allocation snapshot failed: {err}"
    try:
        largest = largest_allocations(snapshot, device, kinds)
    except Exception:
        largest = ()
    if postmortem is None:
        return largest, None, "no post-mortem file to save the allocation history beside"
    path, note = _dump(snapshot, Path(postmortem).with_suffix(".pickle"))
    return largest, path, note


def with_history(torch: Any, report: OomReport, problem: str | None) -> OomReport:
    """``report`` with what the allocation history says (``problem``: why it is not on)."""
    if problem is not None:
        return replace(report, trace_note=problem)
    largest, path, note = save_history(torch, report.device, report.path, CodeKinds(torch))
    return replace(report, largest_allocations=largest, trace_path=path, trace_note=note)


def largest_allocations(snapshot: Any, device: int, kinds: CodeKinds) -> tuple[LiveAllocation, ...]:
    """The biggest allocated blocks of ``device`` in a snapshot, with their frames outside torch;
    those the history saw allocated first (blocks allocated before it was on have no stack)."""
    blocks = []
    for segment in snapshot.get("segments", ()) if isinstance(snapshot, dict) else ():
        if int(segment.get("device", 0)) != device:
            continue
        for block in segment.get("blocks", ()):
            if block.get("state") == "active_allocated":
                blocks.append(block)
    blocks.sort(key=lambda b: (bool(b.get("frames")), int(b.get("size", 0))), reverse=True)
    return tuple(LiveAllocation(int(b.get("size", 0)), _frames(b.get("frames") or (), kinds))
                 for b in blocks[:LARGEST])


def _frames(frames: Any, kinds: CodeKinds) -> tuple[CodeFrame, ...]:
    """The history's frames (innermost first) outside torch and the standard library."""
    entries = ((str(f.get("filename", "")), int(f.get("line", 0) or 0), str(f.get("name", "")))
               for f in list(frames)[:200] if isinstance(f, dict))
    return pick_frames(entries, kinds, FRAMES)


def _dump(snapshot: Any, path: Path) -> tuple[str | None, str | None]:
    """Pickle the snapshot into the private directory as _dump_snapshot does, without following
    a planted name; (its path, None) or (None, why not)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as err:
        return None, f"the allocation history could not be saved: {err.strerror or err}"
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(snapshot, f)
    except Exception as err:
        with contextlib.suppress(OSError):
            path.unlink()
        return None, f"the allocation history could not be saved: {err}"
    _prune(path.parent)
    return str(path), None


def _prune(directory: Path) -> None:
    with contextlib.suppress(OSError):
        files = sorted(directory.glob("oom-*.pickle"), key=lambda p: p.stat().st_mtime)
        for old in files[:-KEEP]:
            with contextlib.suppress(OSError):
                old.unlink()
