"""``vramtop record``: NVML samples into a recording file, headless, optionally around a command.

Without a command it records until Ctrl-C, SIGTERM or ``--duration``. With ``-- CMD`` it
starts CMD with the agent enabled (as ``vramtop run`` does), so its allocator figures are
recorded too, records until CMD exits and returns CMD's exit code. SIGTERM and SIGHUP
are passed on to CMD; Ctrl-C is not (the terminal already sends it to CMD): the recording
goes on until CMD has exited, so its last moments are in the file.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from types import FrameType
from typing import TYPE_CHECKING, Any

from vramtop.codec import to_dict
from vramtop.commands.options import thresholds_from
from vramtop.errors import EXIT_OK, EXIT_USAGE, VramtopError
from vramtop.model import AgentEvent
from vramtop.recording import COMPRESSED_SUFFIXES, XZ_SUFFIX

if TYPE_CHECKING:
    from vramtop.analysis.risk import RiskTracker, RiskWarning
    from vramtop.model import Sample
    from vramtop.sinks.recorder import Recorder
    from vramtop.sources.poller import DeadlineReader

# A hung NVML call delays a sample by at most this long; then the last one is recorded as stale.
MIN_DEADLINE_S = 1.0
MAX_DEADLINE_S = 5.0
FIRST_READ_DEADLINE_S = 10.0
_TICK_S = 0.1  # how often the loop looks at signals and the command between samples
SETTLE_S = 1.0  # after the command ends, how long its agents' last frames may take to arrive

EPILOG = """\
examples:
  vramtop record                           record all GPUs until Ctrl-C
  vramtop record -o run.jsonl.xz -i 0.5    every 0.5 s, compress the file at the end
  vramtop record --duration 2h --gpu 0,1   two GPUs for two hours
  vramtop record -- python train.py        around a command; exits with its exit code
  vramtop record --pid 4242                one running process (its rows and agent) until it exits

The file is JSON Lines (schema vramtop.recording, version 1), readable while it is written.
"""

_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*", text)
    if not match or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"not a positive duration: {text!r} (e.g. 90, 30m, 12h)")
    return float(match[1]) * _DURATION_UNITS[match[2]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="where to write (default: vramtop-<program>-<date>-<time>.jsonl "
                             "here); a name ending in .xz or .gz is compressed that way at the end")
    parser.add_argument("--compress", action="store_true",
                        help="compress the recording into FILE.xz when it ends (plain while recording)")
    parser.add_argument("--duration", type=_duration, metavar="S",
                        help="stop after S seconds (or 30m, 12h, 2d)")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite FILE if it exists")
    parser.add_argument("--pid", type=int, metavar="PID",
                        help="record only this running process (the GPUs' totals, its own rows and its "
                             "agent) until it exits")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS",
                        help="run CMD with VRAMTOP_AGENT=1, record until it exits, "
                             "exit with its exit code")


def run(args: argparse.Namespace) -> int:
    command = list(args.cmd or [])
    if command[:1] == ["--"]:
        command = command[1:]
    if args.cmd and not command:
        raise VramtopError("nothing to run after --", EXIT_USAGE)
    watched = _watched_command(args.pid, command)
    path, compress = output_paths(args.output, command or watched, compress=XZ_SUFFIX if args.compress else "",
                                  force=args.force)

    from vramtop.recording import compressed_path, header_record
    from vramtop.sinks.recorder import Recorder
    from vramtop.sources.monitor import monitor_source
    from vramtop.sources.poller import DeadlineReader, open_with_deadline

    # NVML for every process, plus the allocator figures of every process running the agent.
    source = monitor_source(args.gpu)
    open_with_deadline(source)  # no driver, no GPU, a hung driver: say so before anything starts
    try:
        deadline = read_deadline(args.interval)
        # The first read may look up every process on every GPU: give it time.
        reader = DeadlineReader(source, deadline=max(FIRST_READ_DEADLINE_S, deadline))
        first = reader.read()
        reader.deadline = deadline
        if args.pid is not None:
            first = only_process(first, args.pid)
            _check_uses_gpu(first, args.pid)
        header = header_record(first, interval=args.interval, command=command or watched or None, pid=args.pid)
        recorder = Recorder(path, header, overwrite=args.force)
        print(f"vramtop: recording to {path}"
              + (f" (compressed into {compressed_path(path, compress)} at the end)" if compress else ""),
              file=sys.stderr)
        from vramtop.analysis.risk import RiskTracker

        session = _Session(reader, recorder, interval=args.interval, duration=args.duration,
                           compress=compress, risk=RiskTracker(thresholds_from(args)), pid=args.pid)
        try:
            return session.run(first, command)
        finally:
            if not recorder.closed:  # an unexpected error: still end the file properly
                recorder.close("vramtop failed")
    finally:
        source.close()


def _watched_command(pid: int | None, command: Sequence[str]) -> list[str]:
    """The command line of the process ``--pid`` names (it must exist), for the file's name."""
    if pid is None:
        return []
    if command:
        raise VramtopError("--pid records a running process; -- CMD starts one: give one of them", EXIT_USAGE)
    import psutil

    try:
        return list(psutil.Process(pid).cmdline())
    except psutil.NoSuchProcess:
        raise VramtopError(f"no process with PID {pid}", EXIT_USAGE) from None
    except psutil.Error:
        return []  # someone else's process: its command line may be hidden


def _check_uses_gpu(only: Sample, pid: int) -> None:
    """``only``: a sample reduced to ``pid`` (only_process); it must show the process somewhere."""
    from vramtop.processes import uses_no_gpu

    if not only.agents and not any(g.processes for g in only.gpus):
        raise uses_no_gpu(pid)


def only_process(sample: Sample, pid: int) -> Sample:
    """``sample`` with the GPUs' own figures, and only this process's rows and agent."""
    gpus = tuple(replace(g, processes=tuple(p for p in g.processes if p.pid == pid)) for g in sample.gpus)
    from vramtop.analysis.join import join

    matched = {id(m.agent) for m in join(sample).of_process(pid)}
    agents = tuple(a for a in sample.agents if id(a) in matched)
    return replace(sample, gpus=gpus, agents=agents)


def read_deadline(interval: float) -> float:
    return min(max(interval, MIN_DEADLINE_S), MAX_DEADLINE_S)


def output_paths(output: str | None, command: Sequence[str], *, compress: str, force: bool,
                 now: float | None = None) -> tuple[str, str]:
    """(the file written while recording, the compression at the end: ".xz", ".gz" or "")."""
    if output:
        for suffix in COMPRESSED_SUFFIXES:
            if output.endswith(suffix):
                output, compress = output[: -len(suffix)], suffix
        if not force:
            for taken in (output, output + compress) if compress else (output,):
                if os.path.lexists(taken):
                    raise VramtopError(f"{taken} already exists: pass --force to overwrite it, "
                                       "or choose another name with -o", EXIT_USAGE)
        return output, compress
    base = default_name(command, now)
    for n in range(1000):
        candidate = f"{base}{'' if n == 0 else f'-{n}'}.jsonl"
        if not any(os.path.lexists(candidate + suffix) for suffix in ("", *COMPRESSED_SUFFIXES)):
            return candidate, compress
    raise VramtopError(f"too many recordings named {base}*: choose a name with -o", EXIT_USAGE)


def default_name(command: Sequence[str], now: float | None = None) -> str:
    """``vramtop-<program>-<YYYYmmdd>-<HHMMSS>`` in local time; the host name without a command."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", program_name(command))[:40].strip("._") or "run"
    return f"vramtop-{name}-{stamp}"


def program_name(command: Sequence[str]) -> str:
    """What the command runs: ``train`` for ``python train.py``, ``torchrun ... train.py`` or
    ``python -m pkg.train``; the executable's name otherwise."""
    if not command:
        return socket.gethostname().split(".")[0]
    for i, arg in enumerate(command[1:], start=1):
        if arg.endswith((".py", ".sh")) and not arg.startswith("-"):
            return os.path.splitext(os.path.basename(arg))[0]
        if arg == "-m" and i + 1 < len(command):
            return command[i + 1].rsplit(".", 1)[-1]
    return os.path.basename(command[0])


class _Signals:
    """Turns SIGINT/SIGTERM/SIGHUP into a stop reason (or a signal for the command).

    The handlers only set attributes: a lock taken in a signal handler can deadlock the thread
    it interrupted.
    """

    NAMES: dict[int, str] = {
        signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", signal.SIGHUP: "hangup"}

    def __init__(self) -> None:
        self.reason: str | None = None
        self.child: subprocess.Popen[bytes] | None = None  # gets SIGTERM/SIGHUP instead of us
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        for signum in self.NAMES:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                break
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.child is None:
            self.reason = self.NAMES.get(signum, f"signal {signum}")
        elif signum != signal.SIGINT and self.child.returncode is None:
            # The terminal delivers Ctrl-C to the whole foreground group, the command included.
            self.child.send_signal(signum)


class _Session:
    """One recording: the sampling loop, the command, the signals and how it all ends."""

    def __init__(self, reader: DeadlineReader, recorder: Recorder, *, interval: float,
                 duration: float | None, compress: str, risk: RiskTracker | None = None,
                 pid: int | None = None) -> None:
        self.reader = reader
        self.pid = pid  # --pid: only this process, until it exits
        self.recorder = recorder
        self.risk = risk  # warnings go into the file as events when raised, changed or cleared
        self._raised: dict[tuple[str, str, int | None], RiskWarning] = {}
        self.interval = interval
        self.duration = duration
        self.compress = compress
        self.failure: VramtopError | None = None  # the write error that stopped the recording
        self.started = time.time()
        self._pids: set[int] = set()  # processes seen: their post-mortem files belong to this recording
        self._written: set[tuple[str, int, float]] = set()
        self._told: set[str] = set()

    def run(self, first: Sample, command: Sequence[str]) -> int:
        with _Signals() as signals:
            self._write(self.recorder.write_sample, first)
            if not command:
                return self._finish(self._record(signals, None), EXIT_OK)
            child = self._start(command)
            signals.child = child
            if signals.reason is not None:  # a signal came while the command was starting
                child.send_signal(signal.SIGTERM if signals.reason != "hangup" else signal.SIGHUP)
            reason = self._record(signals, child)
            self._last_events(child)
            if child.returncode is None:
                # --duration ended, or the disk is full: the recording stops, the command runs on.
                self._finish(reason, EXIT_OK)
                return _exit_code(child.wait())
            self._write(self.recorder.write_event, "command.exited",
                        {"returncode": child.returncode}, pid=child.pid)
            return self._finish(reason, _exit_code(child.returncode))

    def _start(self, command: Sequence[str]) -> subprocess.Popen[bytes]:
        try:
            from vramtop.launch import agent_environment

            child = subprocess.Popen(list(command), env=agent_environment(os.environ))
        except OSError as err:
            code = 127 if isinstance(err, FileNotFoundError) else 126  # as shells do
            self._finish(f"command did not start: {err.strerror or err}", code)
            raise VramtopError(f"cannot run {command[0]}: {err.strerror or err}", code) from None
        self._write(self.recorder.write_event, "command.started", {"argv": list(command)},
                    pid=child.pid)
        return child

    def _record(self, signals: _Signals, child: subprocess.Popen[bytes] | None) -> str:
        """Sample every interval until a signal, the command's exit, --duration or a write
        error; the reason it stopped."""
        started = time.monotonic()
        stop_at = None if self.duration is None else started + self.duration
        next_at = started + self.interval
        while True:
            if self.failure is not None:
                return f"write error: {self.failure.message}"
            if signals.reason is not None:
                return signals.reason
            if child is not None and child.poll() is not None:
                return f"command exited with {child.returncode}"
            if self.pid is not None and not _alive(self.pid):
                return f"process {self.pid} exited"
            now = time.monotonic()
            if stop_at is not None and now >= stop_at:
                return "duration"
            if now < next_at:
                time.sleep(min(next_at - now, _TICK_S))
                continue
            sample = self.reader.read()
            if sample.stale:  # the last good data again: record it at the time it stood in
                sample = replace(sample, time=time.time())
            if self.pid is not None:
                sample = only_process(sample, self.pid)
            # Events go into the file as event records of their own, not inside the sample.
            self._write(self.recorder.write_sample, replace(sample, events=()))
            self._pids.update(a.pid for a in sample.agents)
            self._pids.update(p.pid for g in sample.gpus for p in g.processes)
            for problem in sample.problems:  # in the file with the sample; said once on stderr
                if problem not in self._told:
                    self._told.add(problem)
                    print(f"vramtop: {problem}", file=sys.stderr)
            events = [e for e in sample.events if self.pid is None or e.pid == self.pid]
            for event in events:  # e.g. an OOM seen by a training process's agent
                self._write_event(event)
            self._warnings(sample, events)
            # Keep the cadence; after a long stall, go on from now instead of catching up.
            next_at = max(next_at + self.interval, time.monotonic())

    def _last_events(self, child: subprocess.Popen[bytes]) -> None:
        """What the command's agents said as it ended: the frames still on their way (an OOM's
        post-mortem sent by the failing thread just before the process died) and post-mortem
        files its processes wrote that no connection carried."""
        agents = getattr(self.reader.source, "agents", None)
        if agents is None:
            return
        from vramtop.sources.agent import typed_events

        agents.settle(SETTLE_S)
        agents.poll()
        messages = agents.drain_events()
        for pid in sorted(self._pids | {child.pid}):
            messages.extend(agents.postmortems(pid, since=self.started))
        events, _ = typed_events(messages)
        for event in events:
            self._write_event(event)

    def _write_event(self, event: AgentEvent) -> None:
        key = (event.kind, event.pid, event.time)
        if key in self._written:  # an OOM both sent on the socket and left in its file
            return
        self._written.add(key)
        data = to_dict(event.oom) if event.oom is not None else {}
        self._write(self.recorder.write_event, event.kind, data, pid=event.pid)

    def _warnings(self, sample: Sample, events: Sequence[AgentEvent]) -> None:
        """A "warning" event when a warning is raised or changes level, "warning.cleared" when
        it goes: the same warnings the TUI shows, kept in the file."""
        if self.risk is None:
            return
        from vramtop.analysis.risk import warning_to_dict

        now: dict[tuple[str, str, int | None], RiskWarning] = {}
        for w in self.risk.update(sample, events):
            now[w.key] = w
            before = self._raised.get(w.key)
            if before is None or before.level != w.level:
                self._write(self.recorder.write_event, "warning", warning_to_dict(w), pid=w.pid, time=sample.time)
        for key in self._raised.keys() - now.keys():
            gone = self._raised[key]
            self._write(self.recorder.write_event, "warning.cleared",
                        {"kind": gone.kind, "gpu_uuid": gone.gpu_uuid, "title": gone.title},
                        pid=gone.pid, time=sample.time)
        self._raised = now

    def _write(self, fn: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        if self.failure is not None:
            return
        try:
            fn(*args, **kwargs)
        except VramtopError as err:
            self.failure = err
            print(f"vramtop: {err.message}", file=sys.stderr)

    def _finish(self, reason: str, code: int) -> int:
        """Close the recording; the exit code (``code`` unless recording failed without one)."""
        try:
            final = self.recorder.close(reason, compress=self.compress if self.failure is None else "")
        except VramtopError as err:
            print(f"vramtop: {err.message}", file=sys.stderr)
            return code if code != EXIT_OK else err.exit_code
        saved = self.recorder.samples
        print(f"vramtop: {saved} sample{'' if saved == 1 else 's'} in {final}", file=sys.stderr)
        if self.failure is not None and code == EXIT_OK:
            return self.failure.exit_code
        return code


def _alive(pid: int) -> bool:
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _exit_code(returncode: int) -> int:
    """A child's exit status the way a shell reports it: 128 + N when signal N killed it."""
    return 128 - returncode if returncode < 0 else returncode
