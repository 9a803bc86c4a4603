"""Host-side facts from psutil: RAM, and who a GPU process is (user, command, RSS).

psutil is imported when the first GPU process is met (it costs ~6 ms): a host of idle GPUs draws
its first frame without it (RAM comes from /proc/meminfo)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from vramtop.model import MISMATCH, NOT_VISIBLE, VISIBLE, HostSample, ProcessSample

if TYPE_CHECKING:
    import psutil


@dataclass(frozen=True)
class _Identity:
    create_time: float
    name: str | None
    command: str | None
    user: str | None
    visibility: str
    pid_namespace: int | None = None
    ns_pid: int | None = None


class HostInfo:
    """Caches each process's identity (it never changes) and re-reads only its RSS."""

    def __init__(self, holds_gpu: Callable[[int], bool | None] | None = None) -> None:
        self._namespace = pid_namespace_of(os.getpid())[0]  # the monitor\'s own
        # Injected in CPU-only tests, where no process can hold /dev/nvidia*.
        self._holds_gpu = holds_gpu or holds_nvidia_device
        self._hostname = socket.gethostname()
        self._identities: dict[int, _Identity] = {}
        self._processes: dict[int, psutil.Process] = {}

    def host_sample(self) -> HostSample:
        memory = read_meminfo() or _psutil_memory()
        total, available, swap_total, swap_free = memory
        return HostSample(
            hostname=self._hostname,
            memory_total=total,
            memory_used=total - available,
            swap_total=swap_total,
            swap_used=swap_total - swap_free,
            pid_namespace=self._namespace,
        )

    def process_sample(self, *, pid: int, gpu_uuid: str, used_memory: int | None, kind: str,
                       gpu_instance_id: int | None, compute_instance_id: int | None) -> ProcessSample:
        base = ProcessSample(
            pid=pid,
            gpu_uuid=gpu_uuid,
            used_memory=used_memory,
            kind=kind,
            gpu_instance_id=gpu_instance_id,
            compute_instance_id=compute_instance_id,
        )
        proc = self._process(pid)
        if proc is None:
            return replace(base, visibility=NOT_VISIBLE)
        ident = self._identity(proc)
        if ident is None:
            return replace(base, visibility=NOT_VISIBLE)
        import psutil

        try:
            rss: int | None = int(proc.memory_info().rss)
        except (psutil.Error, OSError):
            rss = None
        return replace(
            base,
            visibility=ident.visibility,
            name=ident.name,
            command=ident.command,
            user=ident.user,
            host_rss=rss,
            create_time=ident.create_time,
            pid_namespace=ident.pid_namespace,
            ns_pid=ident.ns_pid,
        )

    def _process(self, pid: int) -> psutil.Process | None:
        import psutil

        proc = self._processes.get(pid)
        if proc is not None and proc.is_running():  # is_running also detects PID reuse
            return proc
        self._processes.pop(pid, None)
        self._identities.pop(pid, None)
        try:
            proc = psutil.Process(pid)
        except (psutil.Error, OSError):
            return None
        self._processes[pid] = proc
        return proc

    def _identity(self, proc: psutil.Process) -> _Identity | None:
        import psutil

        ident = self._identities.get(proc.pid)
        if ident is not None:
            return ident
        try:
            with proc.oneshot():
                create_time = proc.create_time()
                name = proc.name()
                try:
                    command = " ".join(proc.cmdline()) or name
                except (psutil.AccessDenied, psutil.ZombieProcess):
                    command = name
                try:
                    user = proc.username()
                except (psutil.Error, KeyError):
                    user = None
        except psutil.NoSuchProcess:
            return None
        except (psutil.Error, OSError):
            create_time, name, command, user = 0.0, None, None, None
        visibility = MISMATCH if self._holds_gpu(proc.pid) is False else VISIBLE
        ident = _Identity(create_time, name, command, user, visibility, *pid_namespace_of(proc.pid))
        self._identities[proc.pid] = ident
        return ident


def pid_namespace_of(pid: int) -> tuple[int | None, int | None]:
    """(the inode of the process's PID namespace, its PID inside that namespace): what joins an
    NVML row (host PIDs) to the agent of a process in a container, which knows only its own PID.
    (None, None) where /proc does not say (another user's process, no procfs)."""
    try:
        namespace: int | None = os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        namespace = None
    inner = None
    try:
        # Bytes: the Name line is the process's own and may be cut in the middle of a character.
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"NSpid:"):
                    inner = int(line.split()[-1])  # the innermost namespace's PID comes last
                    break
    except (OSError, ValueError):
        pass
    return namespace, inner


def holds_nvidia_device(pid: int) -> bool | None:
    """Whether the process holds a /dev/nvidia* device open; None when we cannot tell.

    NVML reports host PIDs. Inside a container with its own PID namespace the same number can
    belong to an unrelated local process; a process that really uses the GPU holds /dev/nvidia*
    open. When the check is impossible (other user's process, no /proc) we trust the PID.
    """
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return None
    for fd in fds:
        try:
            if os.readlink(f"{fd_dir}/{fd}").startswith("/dev/nvidia"):
                return True
        except OSError:
            continue
    return False


MEMINFO = "/proc/meminfo"
_MEMINFO_FIELDS = (b"MemTotal", b"MemAvailable", b"SwapTotal", b"SwapFree")


def read_meminfo(path: str | None = None) -> tuple[int, int, int, int] | None:
    """(RAM total, available, swap total, free) in bytes from one read of ``/proc/meminfo``
    (psutil reads it twice, and /proc/vmstat, for the same figures); None where a figure is
    missing or odd (an old kernel, a container's view), for psutil to work out."""
    try:
        with open(path or MEMINFO, "rb") as f:
            text = f.read()
    except OSError:
        return None
    found: dict[bytes, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(b":")
        if name in _MEMINFO_FIELDS:
            figure = _kibibytes(rest)
            if figure is None:
                return None
            found[name] = figure
    if len(found) < len(_MEMINFO_FIELDS):
        return None
    total, available, swap_total, swap_free = (found[name] for name in _MEMINFO_FIELDS)
    if not 0 < available <= total or swap_free > swap_total:
        return None
    return total, available, swap_total, swap_free


def _kibibytes(value: bytes) -> int | None:
    """Bytes from a meminfo value, ``"  24683792 kB"``; None for anything else (empty, no unit,
    not a whole number)."""
    parts = value.split()
    if len(parts) != 2 or parts[1] != b"kB" or not parts[0].isdigit():
        return None
    return int(parts[0]) * 1024


def _psutil_memory() -> tuple[int, int, int, int]:
    import psutil

    vm = psutil.virtual_memory()
    sw = psutil.swap_memory()
    return int(vm.total), int(vm.available), int(sw.total), int(sw.total - sw.used)
