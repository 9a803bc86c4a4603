"""Capturing an out-of-memory error, on the thread whose allocation failed.

The allocator calls the observer before the program sees the exception (its lock released): an
uncaught OOM ends the process within milliseconds, so everything is recorded, sent and written
down before the observer returns. On this thread tensors are safe to read.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from vramtop.model import OomReport, TensorCensus

from . import _postmortem
from . import _torchstats as ts
from ._devices import DeviceState
from ._peaks import lowest_recent
from ._place import place_of_oom
from ._stack import inspect_thread

OomHandler = Callable[[int, int, int, int], None]  # (device, requested, device limit, device free)


def oom_report(torch: Any, device: int, requested: int, device_limit: int, device_free: int, *,
               state: DeviceState | None, census: Callable[[], TensorCensus | None], step: int,
               train_thread: int | None, pid: int, models: list[Any], light: bool = False) -> OomReport:
    """Everything known at the moment of failure. ``census`` counts now (the last census of
    ``state`` stands in when it fails); ``train_thread`` is the training thread, if known;
    ``models`` the models found (to name the module of a backward); ``light``: the allocation
    history is on, and this snapshot leaves it out (_trace.py takes it)."""
    raw = ts.raw_stats(torch, device)
    snapshot = ts.take_snapshot(torch, live_blocks=8, light=light)
    try:
        counted = census()
    except Exception:
        counted = state.census if state is not None else None
    place = place_of_oom(torch, models, train_thread)
    # The autograd engine's threads run no Python: an OOM in backward shows on the training thread.
    phase = inspect_thread(threading.get_ident())
    if phase == "unknown" and train_thread not in (None, threading.get_ident()):
        phase = inspect_thread(train_thread or 0)
    if place.node is not None:  # the engine was running a node on this very thread
        phase = "backward"
    total = state.memory_total if state is not None else None
    if total is None:  # an OOM before the sampler saw the device
        total, _ = ts.memory_limits(torch, device)
    first = state.persistent_first if state is not None else None
    last = lowest_recent(list(state.recent)) if state is not None else None
    return OomReport(
        time=time.time(),
        device=device,
        requested=int(requested),
        device_limit=int(device_limit),
        device_free=int(device_free),
        allocated=int(raw["allocated_bytes"]["all"]["current"]),
        reserved=int(raw["reserved_bytes"]["all"]["current"]),
        step=step,
        phase=phase,
        largest_free_block=snapshot.largest_free.get(device) if snapshot else None,
        largest_live_blocks=tuple(snapshot.largest_live.get(device, ())) if snapshot else (),
        census=counted,
        device_total=total,
        step_peak=state.boundary_peak if state is not None else None,
        persistent_first=first[1] if first else None,
        persistent_first_step=first[0] if first else None,
        persistent_last=last[1] if last else None,
        persistent_last_step=last[0] if last else None,
        pid=pid,
        module=place.module,
        module_class=place.module_class,
        module_near=place.module_near,
        autograd_node=place.node,
        place_note=place.note,
        frames=place.frames,
    )


class PostMortems:
    """Writes each OOM's post-mortem file and says where, once per process (OOMs often come in
    bursts)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._told = False

    def record(self, report: OomReport, publish: Callable[[OomReport], None],
               history: Callable[[OomReport], OomReport] | None = None) -> None:
        """The file first (a few ms, no summary yet), so that the report ``publish`` sends names
        it; with ``history`` (``--trace``) what the allocation history adds, which can take a
        while; then the summary in words, which takes longer."""
        path = _postmortem.write(report, self._directory)
        report = replace(report, path=path)
        if history is not None:
            report = history(report)
        publish(report)
        if path:
            _postmortem.add_summary(report, path)
            if not self._told:
                self._told = True
                print(f"vramtop: CUDA out of memory in PID {report.pid}; post-mortem: {path}", file=sys.stderr)


class OomObserver:
    """torch keeps every observer it is given for the life of the process, so one is attached
    per process and forwards to whichever agent is current."""

    def __init__(self) -> None:
        self.attached_to: set[int] = set()  # id() of each torch._C given the observer
        self.handler: OomHandler | None = None

    def attach(self, torch: Any, handler: OomHandler) -> None:
        self.handler = handler
        if id(torch._C) in self.attached_to:
            return
        attach = getattr(torch._C, "_cuda_attach_out_of_memory_observer", None)
        if attach is not None:
            with contextlib.suppress(Exception):
                attach(self)
                self.attached_to.add(id(torch._C))

    def __call__(self, device: int, requested: int, device_total: int, device_free: int) -> None:
        handler = self.handler
        if handler is not None:
            handler(device, requested, device_total, device_free)


oom_observer = OomObserver()
