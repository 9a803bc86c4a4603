"""Processes the user names: the error for one that uses no GPU, and signalling a selected one
safely (only where allowed, never a recycled PID)."""

from __future__ import annotations

import os
import signal

import psutil

from vramtop.errors import EXIT_NO_GPU, VramtopError


def uses_no_gpu(pid: int) -> VramtopError:
    """The error for a PID that NVML lists on no GPU and that runs no agent."""
    try:
        name = psutil.Process(pid).name()
    except psutil.Error:
        name = "?"
    return VramtopError(f"PID {pid} ({name}) uses no NVIDIA GPU: NVML lists no GPU memory for it", EXIT_NO_GPU)


def signal_refusal(pid: int, create_time: float | None) -> str | None:
    """Why we may not signal ``pid`` (None when we may)."""
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 1.0:
            return f"PID {pid} is now a different process; not signalled"
        if pid == os.getpid():
            return "that is vramtop itself"
        if os.geteuid() != 0 and proc.uids().real != os.getuid():
            return f"PID {pid} belongs to {proc.username()}; only they or root may signal it"
    except psutil.NoSuchProcess:
        return f"PID {pid} has already exited"
    except psutil.AccessDenied:
        return f"permission denied for PID {pid}"
    return None


def send_signal(pid: int, create_time: float | None, signum: signal.Signals) -> str:
    """Send ``signum`` after re-checking; returns a line for the user saying what happened."""
    refusal = signal_refusal(pid, create_time)
    if refusal:
        return refusal
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return f"PID {pid} has already exited"
    except PermissionError:
        return f"permission denied for PID {pid}"
    return f"sent {signum.name} to PID {pid}"
