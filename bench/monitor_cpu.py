#!/usr/bin/env python3
"""Side-by-side cost of vramtop and nvitop: CPU of the live TUI, time to first frame, one-shot.

Three measurements in one run (see bench/README.md):

1. CPU time (user + sys, whole process tree, from /proc) that each live monitor burns over a
   fixed window, at refresh 1 s and 0.2 s: ``vramtop -i 1``, ``vramtop -i 0.2``,
   ``nvitop -m full --interval 1``, ``nvitop -m full --interval 0.2``. The four run at the same
   time, each in its own pseudo-terminal of a fixed size whose output is drained continuously.
2. Time to first frame: wall time from spawn until the TUI has drawn the GPU memory figures.
3. One-shot: wall time of ``vramtop --once --json`` against ``nvitop --once``, interleaved.

Results: a Markdown report on stdout, the same data as JSON with ``--json-out``. Progress goes
to stderr. Every child runs in its own session and process group and is killed at the end,
on errors and on Ctrl-C; on Linux it also dies with this script (``PR_SET_PDEATHSIG``).

Linux only (pty, /proc). Standard library only.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import datetime as dt
import errno
import fcntl
import json
import os
import platform
import re
import resource
import select
import shlex
import signal
import statistics
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "vramtop.bench.monitor_cpu"
FLOOR = "textual floor"  # bench/textual_floor.py: one Static in a minimal Textual app
SCHEMA_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

# What counts as "a frame with the GPU memory figures", searched in the terminal output with
# escape sequences removed. vramtop prints "<used>/<total> MiB" per GPU (its status line's
# "RAM 450 MiB/23.5 GiB" must not count: it can reach the terminal a read before the GPU rows);
# "<used> MiB / <total> MiB" is accepted too. nvitop prints "<used> / <total>" in its device
# panel ("0B / 79.65GiB" on an idle H100, "1234MiB / 79.65GiB" in use): its only "x B / y iB".
DEFAULT_MARKERS = {
    "vramtop": r"\d\s?(?:MiB\s?)?/\s?\d+\s?MiB",
    "nvitop": r"\d(?:\.\d+)?\s?(?:[KMGTP]i)?B\s*/\s*\d+(?:\.\d+)?\s?[KMGTP]iB",
}
# nvitop 1.x refuses --interval below 0.25 s ("Expected 1/4 or higher").
NVITOP_MIN_INTERVAL = 0.25

_ANSI = re.compile(
    rb"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    rb"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC
    rb"|\x1bP[^\x1b]*\x1b\\"  # DCS
    rb"|\x1b[()*+][0-9A-Za-z]"  # charset designation
    rb"|\x1b[@-Z\\-_=>78]"  # other two-byte escapes
    rb"|[\x00-\x08\x0e-\x1f\x7f]"
)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def strip_ansi(data: bytes) -> str:
    return _ANSI.sub(b"", data).decode("utf-8", errors="replace")


def fmt_num(value: float) -> str:
    """1.0 -> '1', 0.2 -> '0.2' (as a command line would spell it)."""
    return f"{value:g}"


# -- process tree CPU (from /proc) ------------------------------------------------------------


def _proc_stats() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, CPU seconds of the process and of its reaped children)."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        # Fields after the command name, which is in parentheses and may contain anything.
        rest = raw[raw.rfind(b")") + 2:].split()
        try:
            ppid = int(rest[1])
            utime, stime, cutime, cstime = (int(x) for x in rest[11:15])
        except (IndexError, ValueError):
            continue
        stats[int(entry.name)] = (ppid, (utime + stime + cutime + cstime) / CLK_TCK)
    return stats


def _user_sys(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    rest = raw[raw.rfind(b")") + 2:].split()
    utime, stime, cutime, cstime = (int(x) for x in rest[11:15])
    return (utime + cutime) / CLK_TCK, (stime + cstime) / CLK_TCK


def descendants(root: int, stats: dict[int, tuple[int, float]] | None = None) -> list[int]:
    stats = stats if stats is not None else _proc_stats()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


@dataclass
class TreeCpu:
    """CPU seconds of a process tree: live processes plus everything they have reaped."""

    total: float
    user: float
    sys: float
    processes: int


def tree_cpu(root: int) -> TreeCpu | None:
    stats = _proc_stats()
    if root not in stats:
        return None
    pids = [root, *descendants(root, stats)]
    user = system = 0.0
    counted = 0
    for pid in pids:
        try:
            u, s = _user_sys(pid)
        except (OSError, ValueError, IndexError):
            continue  # exited between the scan and now
        user += u
        system += s
        counted += 1
    return TreeCpu(total=user + system, user=user, sys=system, processes=counted)


# -- children: spawning, draining, killing -----------------------------------------------------

_LIBC: Any = None
with contextlib.suppress(OSError):
    _LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1
_LIVE: set[Child] = set()


def _child_setup(parent: int, controlling_tty: bool) -> None:
    """Runs in the child between fork and exec (after setsid)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the script died before prctl took effect
        os._exit(1)
    if controlling_tty:
        with contextlib.suppress(OSError):
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def child_env(term: str) -> dict[str, str]:
    env = dict(os.environ)
    env["TERM"] = term
    # The size comes from the pty (TIOCSWINSZ); these would override it.
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    return env


class Child:
    """A command in its own session and process group, optionally on a fresh pty."""

    def __init__(self, argv: list[str], *, cwd: Path, env: dict[str, str],
                 pty_size: tuple[int, int] | None, marker: re.Pattern[bytes] | None = None,
                 keep_bytes: int = 1 << 20) -> None:
        self.argv = argv
        self.marker = marker
        self.keep_bytes = keep_bytes
        self.master: int | None = None
        self.output = bytearray()  # first keep_bytes bytes of what the terminal received
        self.tail = bytearray()  # last 64 KiB of it
        self.bytes_read = 0
        self.frame_at: float | None = None  # perf_counter when the marker first appeared
        self.frame_cpu: TreeCpu | None = None
        self.exit_code: int | None = None
        self.exit_cpu: TreeCpu | None = None  # read from the zombie, if it exited by itself
        self._scan_from = 0
        stdio: Any
        if pty_size is not None:
            master, slave = os.openpty()
            cols, rows = pty_size
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            stdio = slave
        else:
            stdio = subprocess.PIPE
        parent = os.getpid()
        self.started = time.perf_counter()
        try:
            self.proc = subprocess.Popen(
                argv, stdin=stdio if pty_size else subprocess.DEVNULL, stdout=stdio,
                stderr=stdio, cwd=cwd, env=env, start_new_session=True, close_fds=True,
                preexec_fn=lambda: _child_setup(parent, pty_size is not None),
            )
        except BaseException:
            if pty_size is not None:
                os.close(master)
                os.close(slave)
            raise
        _LIVE.add(self)
        if pty_size is not None:
            os.close(slave)
            os.set_blocking(master, False)
            self.master = master

    @property
    def pid(self) -> int:
        return self.proc.pid

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    # -- output ------------------------------------------------------------------------------

    def drain(self) -> bool:
        """Read what is available from the pty. False once the terminal has closed."""
        if self.master is None:
            return False
        while True:
            try:
                data = os.read(self.master, 65536)
            except BlockingIOError:
                return True
            except OSError as err:  # EIO: every slave fd is closed (the child is gone)
                if err.errno != errno.EIO:
                    raise
                data = b""
            if not data:
                self._close_master()
                return False
            self._take(data)

    def _take(self, data: bytes) -> None:
        now = time.perf_counter()
        self.bytes_read += len(data)
        if len(self.output) < self.keep_bytes:
            self.output += data[: self.keep_bytes - len(self.output)]
        self.tail += data
        del self.tail[:-65536]
        if self.frame_at is None and self.marker is not None:
            # Re-scan a little of the old output: an escape sequence or the marker may straddle
            # two reads. The first frame is small, so ``output`` still holds all of it.
            start = max(0, self._scan_from - 512)
            if self.marker.search(_ANSI.sub(b"", bytes(self.output[start:]))):
                self.frame_at = now
                self.frame_cpu = tree_cpu(self.pid)
            self._scan_from = len(self.output)

    def text_tail(self, chars: int = 600) -> str:
        text = strip_ansi(bytes(self.tail))
        return " ".join(text.split())[-chars:]

    def _close_master(self) -> None:
        if self.master is not None:
            with contextlib.suppress(OSError):
                os.close(self.master)
            self.master = None

    # -- life cycle ----------------------------------------------------------------------------

    def exited(self) -> bool:
        """True once the child has exited; its CPU is read from the zombie before it is reaped."""
        if self.exit_code is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # already reaped
            self.exit_code = self.proc.returncode if self.proc.returncode is not None else -1
            return True
        if info is None:
            return False
        self.exit_cpu = tree_cpu(self.pid)
        self.exit_code = self.proc.wait()
        return True

    def kill(self) -> None:
        """SIGKILL the process group and every descendant (even ones that left the group)."""
        stray = descendants(self.pid) if self.proc.returncode is None else []
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        for pid in stray:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        if self.exit_code is None:
            self.exit_code = code
        if self.master is not None:
            with contextlib.suppress(OSError):
                self.drain()
        self._close_master()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        _LIVE.discard(self)


def kill_all() -> None:
    for child in list(_LIVE):
        with contextlib.suppress(Exception):
            child.kill()


def pump(children: list[Child], timeout: float) -> None:
    """Wait up to ``timeout`` s for output on any pty and drain every one that has some."""
    fds = {c.master: c for c in children if c.master is not None}
    if not fds:
        time.sleep(timeout)
        return
    try:
        ready, _, _ = select.select(list(fds), [], [], timeout)
    except InterruptedError:
        return
    for fd in ready:
        fds[fd].drain()


# -- measurements --------------------------------------------------------------------------------


@dataclass
class Tool:
    name: str  # "vramtop", "nvitop" or "textual floor"
    base: list[str]
    marker: re.Pattern[bytes]
    version: str | None = None

    def live(self, interval: float) -> list[str]:
        if self.name == FLOOR:
            return list(self.base)
        if self.name == "vramtop":
            return [*self.base, "-i", fmt_num(interval)]
        return [*self.base, "-m", "full", "--interval", fmt_num(interval)]

    def once(self) -> list[str]:
        if self.name == "vramtop":
            return [*self.base, "--once", "--json"]
        return [*self.base, "--once"]


@dataclass
class Settings:
    cwd: Path
    env: dict[str, str]
    size: tuple[int, int]
    keep_output: Path | None


@dataclass
class CpuRun:
    tool: Tool
    interval_requested: float
    interval: float
    seconds: float
    warmup: float
    retry: bool = False  # a second try at a longer interval after a refusal
    child: Child | None = None
    deadline: float = 0.0
    steady: tuple[float, float] | None = None  # (elapsed s, tree CPU s) at the warm-up mark
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def argv(self) -> list[str]:
        return self.tool.live(self.interval)

    def start(self, settings: Settings) -> None:
        self.child = Child(self.argv, cwd=settings.cwd, env=settings.env, pty_size=settings.size,
                           marker=self.tool.marker)
        self.deadline = self.child.started + self.seconds

    def tick(self) -> None:
        child = self.child
        assert child is not None
        if self.steady is None and child.frame_at is not None:
            elapsed = child.elapsed()
            if elapsed >= self.warmup:
                cpu = tree_cpu(child.pid)
                if cpu is not None:
                    self.steady = (elapsed, cpu.total)

    def finish(self, settings: Settings, *, exited: bool) -> None:
        child = self.child
        assert child is not None
        if exited:
            cpu, wall = child.exit_cpu, child.elapsed()
        else:
            child.drain()
            cpu, wall = tree_cpu(child.pid), child.elapsed()  # just before stopping it
        child.kill()
        status = "ok"
        if exited:
            status = f"exited early (code {child.exit_code})"
        elif cpu is None:
            status = "vanished"
        elif child.frame_at is None:
            status = "no frame with the memory figures"
        steady_pct = None
        if cpu is not None and self.steady is not None and not exited and wall - self.steady[0] > 0:
            steady_pct = 100.0 * (cpu.total - self.steady[1]) / (wall - self.steady[0])
        self.result = {
            "tool": self.tool.name,
            "interval_requested_s": self.interval_requested,
            "interval_s": self.interval,
            "argv": self.argv,
            "command": shlex.join(self.argv),
            "status": status,
            "exit_code": child.exit_code if exited else None,
            "note": None,
            "wall_s": round(wall, 3),
            "cpu_user_s": round(cpu.user, 3) if cpu else None,
            "cpu_sys_s": round(cpu.sys, 3) if cpu else None,
            "cpu_s": round(cpu.total, 3) if cpu else None,
            "cpu_pct_of_one_core": (round(100.0 * cpu.total / wall, 2)
                                    if cpu and wall and not exited else None),
            "steady_from_s": round(self.steady[0], 3) if self.steady else None,
            "steady_cpu_pct_of_one_core": round(steady_pct, 2) if steady_pct is not None else None,
            "first_frame_s": round(child.frame_at - child.started, 3) if child.frame_at else None,
            "cpu_to_first_frame_s": round(child.frame_cpu.total, 3) if child.frame_cpu else None,
            "processes_in_tree": cpu.processes if cpu else None,
            "tty_bytes": child.bytes_read,
            "tty_bytes_per_s": round(child.bytes_read / wall) if wall else None,
            "output_tail": child.text_tail() if status != "ok" else None,
        }
        save_output(settings, f"cpu-{self.tool.name}-{fmt_num(self.interval)}", child)


def save_output(settings: Settings, name: str, child: Child) -> None:
    if settings.keep_output is None:
        return
    settings.keep_output.mkdir(parents=True, exist_ok=True)
    (settings.keep_output / f"{name}.raw").write_bytes(bytes(child.output))
    (settings.keep_output / f"{name}.txt").write_text(strip_ansi(bytes(child.output)))


def measure_cpu(tools: list[Tool], intervals: list[float], args: argparse.Namespace,
                settings: Settings) -> list[dict[str, Any]]:
    pending = [CpuRun(t, i, i, args.seconds, args.warmup) for i in intervals for t in tools]
    runs: list[CpuRun] = []
    for run in pending if not args.sequential else []:
        run.start(settings)
        runs.append(run)
    log(f"CPU: {len(runs) or len(pending)} monitors, {args.seconds:g} s window each, "
        f"{'one after another' if args.sequential else 'concurrently'}")
    queue = list(pending) if args.sequential else []
    active = list(runs)
    done: list[CpuRun] = []
    while active or queue:
        if not active and queue:
            run = queue.pop(0)
            run.start(settings)
            active.append(run)
        pump([r.child for r in active if r.child], 0.05)
        now = time.perf_counter()
        for run in list(active):
            assert run.child is not None
            run.tick()
            exited = run.child.exited()
            if not exited and now < run.deadline:
                continue
            run.finish(settings, exited=exited)
            active.remove(run)
            done.append(run)
            log(f"  {run.result['command']}: {run.result['status']}, "
                f"CPU {run.result['cpu_s']} s over {run.result['wall_s']} s")
            retry = nvitop_fallback(run, args)
            if retry is not None:
                retry.start(settings)
                active.append(retry)
    tool_order = [t.name for t in tools]
    done.sort(key=lambda r: (intervals.index(r.interval_requested), tool_order.index(r.tool.name),
                             r.retry))
    return [r.result for r in done]


def start_job(args: argparse.Namespace, settings: Settings) -> subprocess.Popen[bytes]:
    """The workload vramtop exists for: a training process with the agent (``--job``), started
    before the monitors and left running while they are measured. Waits for its first steps."""
    argv = shlex.split(args.job)
    log(f"job: {args.job}")
    job = subprocess.Popen(argv, cwd=settings.cwd, env=settings.env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + args.job_warmup
    while time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.5)
    if job.poll() is not None:
        err = job.stderr.read().decode(errors="replace")[-2000:] if job.stderr else ""
        raise SystemExit(f"the job ended before the measurement (rc {job.returncode}):\n{err}")
    return job


def stop_job(job: subprocess.Popen[bytes] | None) -> None:
    if job is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(job.pid, signal.SIGKILL)
    job.wait()


def nvitop_fallback(run: CpuRun, args: argparse.Namespace) -> CpuRun | None:
    """nvitop refuses short intervals: measure it again at the shortest one it accepts."""
    refused = run.result["status"].startswith("exited") and run.result["exit_code"] != 0
    if (run.tool.name != "nvitop" or not refused or run.retry
            or run.interval >= args.nvitop_min_interval):
        return None
    tail = run.result.get("output_tail") or ""
    match = re.search(r"error: (.*)", tail)
    why = (match.group(1) if match else tail).strip()[-200:]
    run.result["status"] = "refused"
    run.result["note"] = (f"nvitop refused --interval {fmt_num(run.interval)} ({why}); "
                          f"measured at {fmt_num(args.nvitop_min_interval)} s instead")
    log(f"  {run.result['note']}")
    return CpuRun(run.tool, run.interval_requested, args.nvitop_min_interval, run.seconds,
                  run.warmup, retry=True)


def first_frame_once(tool: Tool, interval: float, timeout: float, settings: Settings,
                     name: str) -> dict[str, Any]:
    child = Child(tool.live(interval), cwd=settings.cwd, env=settings.env, pty_size=settings.size,
                  marker=tool.marker)
    try:
        while child.frame_at is None and child.elapsed() < timeout and not child.exited():
            pump([child], 0.02)
        child.drain()
        result: dict[str, Any] = {
            "first_frame_s": round(child.frame_at - child.started, 4) if child.frame_at else None,
            "cpu_to_first_frame_s": round(child.frame_cpu.total, 3) if child.frame_cpu else None,
        }
        if child.frame_at is None:
            exited = child.exit_code is not None
            result["error"] = (f"exited with code {child.exit_code}" if exited
                               else f"no frame within {timeout:g} s")
            result["output_tail"] = child.text_tail()
        return result
    finally:
        child.kill()
        save_output(settings, name, child)


def measure_first_frame(tools: list[Tool], args: argparse.Namespace,
                        settings: Settings) -> dict[str, Any]:
    log(f"first frame: 1 untimed warm-up + {args.repeats} runs each, interleaved")
    out: dict[str, Any] = {}
    for tool in tools:
        argv = tool.live(args.frame_interval)
        # The warm-up compiles and caches what only the TUI imports (textual, curses screens).
        cold = first_frame_once(tool, args.frame_interval, args.frame_timeout, settings,
                                f"frame-{tool.name}-warmup")
        log(f"  {tool.name} warm-up: {cold.get('first_frame_s')} s {cold.get('error', '')}")
        out[tool.name] = {"argv": argv, "command": shlex.join(argv), "cold": cold, "runs": []}
    for n in range(args.repeats):
        for tool in tools:
            run = first_frame_once(tool, args.frame_interval, args.frame_timeout, settings,
                                   f"frame-{tool.name}-{n}")
            out[tool.name]["runs"].append(run)
            log(f"  {tool.name} #{n + 1}: {run.get('first_frame_s')} s {run.get('error', '')}")
            time.sleep(0.1)
    for entry in out.values():
        times = [r["first_frame_s"] for r in entry["runs"] if r["first_frame_s"] is not None]
        cpus = [r["cpu_to_first_frame_s"] for r in entry["runs"]
                if r["cpu_to_first_frame_s"] is not None]
        entry.update(summary(times))
        entry["cpu_to_first_frame_median_s"] = round(statistics.median(cpus), 3) if cpus else None
    return out


def run_once(argv: list[str], settings: Settings, timeout: float,
             expect_json: bool = False) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = Child(argv, cwd=settings.cwd, env=settings.env, pty_size=None)
    try:
        try:
            stdout, stderr = child.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"wall_s": None, "error": f"no exit within {timeout:g} s"}
        wall = child.elapsed()
    finally:
        child.kill()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result: dict[str, Any] = {"wall_s": round(wall, 4), "cpu_s": round(cpu, 3),
                              "exit_code": child.proc.returncode}
    if child.proc.returncode != 0:
        text = (stderr or b"").decode(errors="replace").strip() or stdout.decode(errors="replace")
        result["error"] = f"exit code {child.proc.returncode}: {text[-300:]}"
    elif expect_json:
        try:
            json.loads(stdout)
        except ValueError:
            result["error"] = f"output is not JSON: {stdout[:200]!r}"
    return result


def measure_once(tools: list[Tool], args: argparse.Namespace,
                 settings: Settings) -> dict[str, Any]:
    log(f"one-shot: 1 untimed warm-up + {args.repeats} runs each, interleaved")
    out: dict[str, Any] = {}
    for tool in tools:
        argv = tool.once()
        cold = run_once(argv, settings, args.once_timeout, tool.name == "vramtop")
        out[tool.name] = {"argv": argv, "command": shlex.join(argv), "cold": cold, "runs": []}
        log(f"  {tool.name} warm-up: {cold.get('wall_s')} s {cold.get('error', '')[:120]}")
    for n in range(args.repeats):
        for tool in tools:
            run = run_once(tool.once(), settings, args.once_timeout, tool.name == "vramtop")
            out[tool.name]["runs"].append(run)
            log(f"  {tool.name} #{n + 1}: {run.get('wall_s')} s {run.get('error', '')[:120]}")
    for entry in out.values():
        ok = [r for r in entry["runs"] if "error" not in r]
        entry.update(summary([r["wall_s"] for r in ok]))
        cpus = [r["cpu_s"] for r in ok]
        entry["cpu_median_s"] = round(statistics.median(cpus), 3) if cpus else None
    return out


def summary(times: list[float]) -> dict[str, Any]:
    return {
        "ok": len(times),
        "median_s": round(statistics.median(times), 4) if times else None,
        "min_s": round(min(times), 4) if times else None,
        "max_s": round(max(times), 4) if times else None,
    }


# -- machine facts ---------------------------------------------------------------------------------


def run_text(argv: list[str], settings: Settings, timeout: float = 60) -> tuple[int | None, str]:
    """Exit code and stripped output of a short command; (None, why) if it cannot run."""
    try:
        done = subprocess.run(argv, cwd=settings.cwd, env=settings.env, capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=timeout, start_new_session=True)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, str(err)
    text = (done.stdout + done.stderr).decode(errors="replace").strip()
    return done.returncode, text


def machine_facts(settings: Settings) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_count_usable": len(os.sched_getaffinity(0)),
        "cpu_model": None,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "memory_total_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "gpus": [],
        "nvidia_smi_error": None,
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu_model"] = line.split(":", 1)[1].strip()
                break
    fields = ["name", "driver_version", "persistence_mode", "memory.total"]
    query = ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"]
    code, text = run_text(query, settings)
    if code != 0:  # an old nvidia-smi may not know a field: ask for the two that matter
        fields = ["name", "driver_version"]
        code, text = run_text(["nvidia-smi", "--query-gpu=name,driver_version",
                               "--format=csv,noheader"], settings)
    if code == 0:
        for line in text.splitlines():
            values = [v.strip() for v in line.split(",")]
            facts["gpus"].append(dict(zip(fields, values, strict=False)))
    else:
        facts["nvidia_smi_error"] = text[-300:] or "nvidia-smi failed"
    code, text = run_text(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
                          settings, timeout=10)
    facts["git"] = text if code == 0 else None
    return facts


def probe(tool: Tool, settings: Settings) -> str | None:
    """The tool's version, or None and a log line if it cannot be run."""
    code, text = run_text([*tool.base, "--version"], settings)
    if code != 0:
        log(f"{tool.name} cannot run ({shlex.join(tool.base)} --version): {text[-300:]}")
        return None
    return text.splitlines()[-1] if text else ""


# -- report ----------------------------------------------------------------------------------------


def _cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def markdown(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    lines = ["## vramtop vs nvitop: monitor cost", ""]
    if m["gpus"]:
        for g in m["gpus"]:
            extra = ", ".join(f"{k} {v}" for k, v in g.items() if k not in ("name",))
            lines.append(f"- GPU: {g.get('name')} ({extra})")
    else:
        lines.append(f"- GPU: none found (nvidia-smi: {m['nvidia_smi_error']})")
    lines += [
        f"- CPU: {m['cpu_count']} cores ({m['cpu_count_usable']} usable), {m['cpu_model']}; "
        f"load average at start {m['load_average_at_start']}",
        f"- Date (UTC): {m['date_utc']}; Python {m['python']}; kernel {m['kernel']}",
        f"- vramtop: {report['versions']['vramtop']} (git {m.get('git')}); "
        f"nvitop: {report['versions']['nvitop'] or 'not run'}",
        f"- Terminal: pty {s['cols']}x{s['rows']}, TERM={s['term']}",
    ]
    for note in report["notes"]:
        lines.append(f"- Note: {note}")
    cpu = report.get("cpu")
    if cpu:
        first = [r for r in cpu if r["interval_s"] == r["interval_requested_s"]]
        how = "one after another" if s["sequential"] else f"{len(first)} monitors concurrently"
        lines += [
            "",
            f"### CPU of the live monitor ({s['seconds']:g} s window, {how})",
            "",
            "CPU = user + sys of the whole process tree, read just before the monitor is stopped. "
            "% = of one core, averaged over the window; steady = from the warm-up mark "
            f"({s['warmup']:g} s, or the first frame if later) to the end.",
            "",
            "| on the GPU | monitor | refresh | CPU s | CPU % | steady % | user s | sys s | first frame s "
            "| tty KiB/s | status | command |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for r in cpu:
            kib = r["tty_bytes_per_s"] / 1024 if r["tty_bytes_per_s"] is not None else None
            status = r["status"]
            if r["interval_s"] != r["interval_requested_s"]:
                status += f" (asked for {fmt_num(r['interval_requested_s'])} s)"
            on_gpu = "a training job with the agent" if r.get("scenario") == "job" else "nothing (idle)"
            lines.append(
                f"| {on_gpu} | {r['tool']} | {fmt_num(r['interval_s'])} s | {_cell(r['cpu_s'])} "
                f"| {_cell(r['cpu_pct_of_one_core'], 1)} "
                f"| {_cell(r['steady_cpu_pct_of_one_core'], 1)} | {_cell(r['cpu_user_s'])} "
                f"| {_cell(r['cpu_sys_s'])} | {_cell(r['first_frame_s'])} | {_cell(kib, 1)} "
                f"| {_cell(status)} | `{r['command']}` |"
            )
    frame = report.get("first_frame")
    if frame:
        lines += [
            "",
            f"### Time to first frame ({s['repeats']} runs each, interleaved, after one untimed "
            f"warm-up; refresh {fmt_num(s['frame_interval'])} s)",
            "",
            "Wall time from spawn until the terminal output contains the GPU memory figures.",
            "",
            "| monitor | median s | min s | max s | ok/runs | CPU to first frame s (median) "
            "| warm-up s | command |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for name, e in frame.items():
            lines.append(
                f"| {name} | {_cell(e['median_s'], 3)} | {_cell(e['min_s'], 3)} "
                f"| {_cell(e['max_s'], 3)} | {e['ok']}/{len(e['runs'])} "
                f"| {_cell(e['cpu_to_first_frame_median_s'])} "
                f"| {_cell(e['cold'].get('first_frame_s'), 3)} | `{e['command']}` |"
            )
    once = report.get("once")
    if once:
        lines += [
            "",
            f"### One-shot ({s['repeats']} runs each, interleaved, after one untimed warm-up)",
            "",
            "| command | median s | min s | max s | ok/runs | CPU s (median) | warm-up s |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for e in once.values():
            lines.append(
                f"| `{e['command']}` | {_cell(e['median_s'], 3)} | {_cell(e['min_s'], 3)} "
                f"| {_cell(e['max_s'], 3)} | {e['ok']}/{len(e['runs'])} "
                f"| {_cell(e['cpu_median_s'])} | {_cell(e['cold'].get('wall_s'), 3)} |"
            )
    errors = [f"first frame of `{e['command']}`: {r['error']}: {r.get('output_tail', '')}"
              for e in (frame or {}).values() for r in [e["cold"], *e["runs"]] if "error" in r]
    errors += [f"`{e['command']}`: {r['error']}"
               for e in (once or {}).values() for r in [e["cold"], *e["runs"]] if "error" in r]
    errors += [f"`{r['command']}`: {r['status']}: {r['output_tail']}"
               for r in cpu or [] if r["output_tail"] and r["status"] != "refused"]
    shown = list(dict.fromkeys(" ".join(e.split())[:300] for e in errors))  # unique, in order
    if shown:
        lines += ["", "### Problems", ""] + [f"- {e}" for e in shown[:20]]
    return "\n".join(lines) + "\n"


# -- main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="CPU of the live TUI, time to first frame and one-shot latency: "
                    "vramtop against nvitop.",
    )
    p.add_argument("--vramtop", default=shlex.join([sys.executable, "-m", "vramtop"]),
                   help="command that runs vramtop (default: %(default)s)")
    p.add_argument("--nvitop", default=shlex.join([sys.executable, "-m", "nvitop"]),
                   help="command that runs nvitop (default: %(default)s)")
    p.add_argument("--skip-floor", action="store_true",
                   help="leave out the first-frame row of a minimal Textual app (bench/textual_floor.py)")
    p.add_argument("--skip-nvitop", action="store_true", help="measure vramtop only")
    p.add_argument("--seconds", type=float, default=60.0,
                   help="CPU window per live monitor, seconds (default: 60)")
    p.add_argument("--intervals", default="1,0.2",
                   help="refresh intervals for the CPU window, comma-separated (default: 1,0.2)")
    p.add_argument("--warmup", type=float, default=5.0,
                   help="seconds after spawn before the steady-state CPU rate starts "
                        "(default: 5, at most half the window)")
    p.add_argument("--sequential", action="store_true",
                   help="run the CPU windows one after another instead of concurrently")
    p.add_argument("--repeats", type=int, default=5,
                   help="runs of each first-frame and one-shot measurement (default: 5)")
    p.add_argument("--frame-interval", type=float, default=1.0,
                   help="refresh interval of the first-frame runs (default: 1)")
    p.add_argument("--frame-timeout", type=float, default=30.0,
                   help="give up on a first frame after this many seconds (default: 30)")
    p.add_argument("--once-timeout", type=float, default=60.0,
                   help="give up on a one-shot run after this many seconds (default: 60)")
    p.add_argument("--only", action="append", choices=["cpu", "frame", "once"],
                   help="run only this measurement (repeatable; default: all three)")
    p.add_argument("--cols", type=int, default=160, help="pty width (default: 160)")
    p.add_argument("--rows", type=int, default=48, help="pty height (default: 48)")
    p.add_argument("--term", default="xterm-256color", help="TERM of the children")
    p.add_argument("--vramtop-marker", default=DEFAULT_MARKERS["vramtop"],
                   help="regex that marks vramtop's first frame (default: %(default)s)")
    p.add_argument("--nvitop-marker", default=DEFAULT_MARKERS["nvitop"],
                   help="regex that marks nvitop's first frame (default: %(default)s)")
    p.add_argument("--nvitop-min-interval", type=float, default=NVITOP_MIN_INTERVAL,
                   help="if nvitop refuses a shorter interval, measure it at this one "
                        "(default: %(default)s)")
    p.add_argument("--cwd", type=Path, default=REPO_ROOT,
                   help="working directory of the children (default: the repository root)")
    p.add_argument("--json-out", type=Path, help="write the results as JSON here")
    p.add_argument("--scenarios", default="job,idle",
                   help="comma-separated: job (a training process with the agent on screen, --job), idle "
                        "(nothing on the GPU); default: job,idle")
    p.add_argument("--job", default=shlex.join([sys.executable, "-m", "vramtop", "run", "--", sys.executable,
                                                "bench/train_demo.py", "--steps", "1000000", "--batch", "8"]),
                   help="the training job of the job scenario, run from --cwd (default: GPT-2 small under "
                        "`vramtop run`)")
    p.add_argument("--job-warmup", type=float, default=40.0,
                   help="seconds the job trains before the monitors start (default: 40)")
    p.add_argument("--keep-output", type=Path, metavar="DIR",
                   help="save each child's raw terminal output (first MiB) here, for checking")
    args = p.parse_args(argv)
    try:
        args.interval_list = [float(x) for x in args.intervals.split(",") if x.strip()]
    except ValueError:
        p.error(f"--intervals: not numbers: {args.intervals!r}")
    args.scenario_list = [x for x in args.scenarios.split(",") if x]
    if not set(args.scenario_list) <= {"job", "idle"} or not args.scenario_list:
        p.error("--scenarios: job, idle or both")
    if not args.interval_list or min(args.interval_list) <= 0:
        p.error("--intervals: give positive numbers of seconds")
    if args.seconds <= 0 or args.repeats < 1:
        p.error("--seconds must be positive and --repeats at least 1")
    if args.cols < 20 or args.rows < 5:
        p.error("the pty must be at least 20x5")
    args.warmup = max(0.0, min(args.warmup, args.seconds / 2))
    return args


def _raise_exit(signum: int, frame: Any) -> None:
    log(f"got signal {signum}: stopping every child")
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("monitor_cpu.py needs Linux (pty and /proc)", file=sys.stderr)
        return 2
    atexit.register(kill_all)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)
    settings = Settings(cwd=args.cwd.resolve(), env=child_env(args.term),
                        size=(args.cols, args.rows), keep_output=args.keep_output)
    try:
        return _main(args, settings)
    except KeyboardInterrupt:
        log("interrupted: stopping every child")
        return 130
    finally:
        kill_all()


def _main(args: argparse.Namespace, settings: Settings) -> int:
    phases = args.only or ["cpu", "frame", "once"]
    notes: list[str] = []
    vramtop = Tool("vramtop", shlex.split(args.vramtop), re.compile(args.vramtop_marker.encode()))
    vramtop.version = probe(vramtop, settings)
    if vramtop.version is None:
        print(f"vramtop cannot be run with: {args.vramtop}", file=sys.stderr)
        return 1
    tools = [vramtop]
    nvitop = Tool("nvitop", shlex.split(args.nvitop), re.compile(args.nvitop_marker.encode()))
    if args.skip_nvitop:
        notes.append("nvitop skipped (--skip-nvitop)")
    else:
        nvitop.version = probe(nvitop, settings)
        if nvitop.version is None:
            notes.append(f"nvitop not run: `{args.nvitop} --version` failed "
                         "(not installed or not importable)")
        else:
            tools.append(nvitop)
    machine = machine_facts(settings)
    if len(tools) * len(args.interval_list) > machine["cpu_count_usable"] and not args.sequential:
        notes.append(f"{len(tools) * len(args.interval_list)} concurrent monitors on "
                     f"{machine['cpu_count_usable']} usable cores: they compete for CPU")
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "machine": machine,
        "versions": {"vramtop": vramtop.version, "nvitop": nvitop.version},
        "settings": {
            "seconds": args.seconds, "intervals_s": args.interval_list, "warmup": args.warmup,
            "sequential": args.sequential, "repeats": args.repeats,
            "frame_interval": args.frame_interval, "cols": args.cols, "rows": args.rows,
            "term": args.term, "cwd": str(settings.cwd), "phases": phases,
            "markers": {t.name: t.marker.pattern.decode() for t in tools},
        },
        "commands": {
            t.name: {"base": t.base, "live": [shlex.join(t.live(i)) for i in args.interval_list],
                     "once": shlex.join(t.once())}
            for t in tools
        },
        "argv": sys.argv,
        "notes": notes,
    }
    if "once" in phases:
        report["once"] = measure_once(tools, args, settings)
    if "frame" in phases:
        floor = Tool(FLOOR, [sys.executable, str(REPO_ROOT / "bench" / "textual_floor.py")], vramtop.marker)
        frame_tools = tools if args.skip_floor else [*tools, floor]
        report["first_frame"] = measure_first_frame(frame_tools, args, settings)
    if "cpu" in phases:
        report["cpu"] = []
        for scenario in args.scenario_list:
            job = start_job(args, settings) if scenario == "job" else None
            try:
                results = measure_cpu(tools, args.interval_list, args, settings)
            finally:
                stop_job(job)
            for r in results:
                r["scenario"] = scenario
                if r["note"]:
                    notes.append(r["note"])
            report["cpu"].extend(results)
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    report["bench_self_cpu_s"] = round(
        (self_after.ru_utime - self_before.ru_utime) + (self_after.ru_stime - self_before.ru_stime),
        3,
    )
    print(markdown(report), end="")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
        log(f"JSON written to {args.json_out}")
    return 0 if vramtop_ok(report) else 1


def vramtop_ok(report: dict[str, Any]) -> bool:
    cpu_ok = all(r["status"] == "ok" for r in report.get("cpu", []) if r["tool"] == "vramtop")
    frame_ok = all(e["ok"] == len(e["runs"])
                   for n, e in report.get("first_frame", {}).items() if n == "vramtop")
    once_ok = all(e["ok"] == len(e["runs"]) for n, e in report.get("once", {}).items()
                  if n == "vramtop")
    return cpu_ok and frame_ok and once_ok


if __name__ == "__main__":
    sys.exit(main())
