"""``vramtop record``: NVML samples into a recording file, headless, optionally around a command.

Without a command it records until Ctrl-C, SIGTERM or ``--duration``. With ``-- CMD`` it
starts CMD with the agent enabled (as ``vramtop run`` does), so its allocator figures are
recorded too, records until CMD exits and returns CMD's exit code. SIGTERM and SIGHUP
are passed on to CMD; Ctrl-C is not (the terminal already sends it to CMD): the recording
goes on until CMD has exited, so its last moments are in the file.

This module is the command: its arguments and the wiring. The session (the sampling loop, the
events and warnings written, the command's last words) is vramtop/sinks/record_session.py, the
command's start, signals and exit status vramtop/child.py, the file's name
vramtop/sinks/recording_names.py.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vramtop.commands.options import process_id, thresholds_from
from vramtop.errors import EXIT_USAGE, VramtopError
from vramtop.recording import XZ_SUFFIX
from vramtop.sinks.recording_names import output_paths

if TYPE_CHECKING:
    from vramtop.model import Sample

# A hung NVML call delays a sample by at most this long; then the last one is recorded as stale.
MIN_DEADLINE_S = 1.0
MAX_DEADLINE_S = 5.0
FIRST_READ_DEADLINE_S = 10.0

EPILOG = """\
examples:
  vramtop record                           record all GPUs until Ctrl-C
  vramtop record -o run.jsonl.xz -i 0.5    every 0.5 s, compress the file at the end
  vramtop record --duration 2h --gpu 0,1   two GPUs for two hours
  vramtop record -- python train.py        around a command; exits with its exit code
  vramtop record --pid 4242                one running process (its rows and agent) until it exits
  vramtop record --pid 4242 --job          every rank of 4242's distributed job, until 4242 exits
  vramtop record --pid 4242 --inject       one running process, starting the agent inside it first (see attach)

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
    parser.add_argument("--pid", type=process_id, metavar="PID",
                        help="record only this running process (the GPUs' totals, its own rows and its "
                             "agent) until it exits")
    parser.add_argument("--job", action="store_true",
                        help="with --pid: every rank of that process's distributed job (torchrun, "
                             "accelerate, DeepSpeed), not only that one")
    parser.add_argument("--inject", action="store_true",
                        help="with --pid: start the agent inside that running Python process first (Linux "
                             "x86_64, ptrace), so its bill is recorded too")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS",
                        help="run CMD with VRAMTOP_AGENT=1, record until it exits, "
                             "exit with its exit code")


def run(args: argparse.Namespace) -> int:
    command = list(args.cmd or [])
    if command[:1] == ["--"]:
        command = command[1:]
    if args.cmd and not command:
        raise VramtopError("nothing to run after --", EXIT_USAGE)
    if args.job and args.pid is None:
        raise VramtopError("--job needs --pid: the rank whose job to record (without --pid every "
                           "process is recorded, every rank included)", EXIT_USAGE)
    watched = _watched_command(args.pid, command)
    if args.inject and args.pid is None:
        raise VramtopError("--inject starts the agent in the process --pid names: give --pid", EXIT_USAGE)
    path, compress = output_paths(args.output, command or watched, compress=XZ_SUFFIX if args.compress else "",
                                  force=args.force)

    from vramtop.recording import compressed_path, header_record
    from vramtop.sinks.record_session import RecordingSession, only_process
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
            first = only_process(first, args.pid, args.job)
            _check_uses_gpu(first, args.pid)
            if args.inject:
                _inject(args.pid)
        header = header_record(first, interval=args.interval, command=command or watched or None, pid=args.pid)
        recorder = Recorder(path, header, overwrite=args.force)
        print(f"vramtop: recording to {path}"
              + (f" (compressed into {compressed_path(path, compress)} at the end)" if compress else ""),
              file=sys.stderr)
        from vramtop.analysis.risk import RiskTracker

        session = RecordingSession(reader, recorder, interval=args.interval, duration=args.duration,
                                   compress=compress, risk=RiskTracker(thresholds_from(args)), pid=args.pid,
                                   job=args.job)
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


def _inject(pid: int) -> None:
    """Start the agent in ``pid`` unless it runs one; the recorder finds it at its next rescan."""
    from vramtop.commands.attaching import start_agent_in
    from vramtop.inject import agent_serving
    from vramtop.protocol import runtime_dir

    if agent_serving(pid, runtime_dir()):
        return
    notice = start_agent_in(pid, ask=False, instead=f"`vramtop record --pid {pid}` without --inject records "
                                                    "NVML's view")
    print(f"vramtop: {notice or f'agent started in PID {pid}'}", file=sys.stderr)


def _check_uses_gpu(only: Sample, pid: int) -> None:
    """``only``: a sample reduced to ``pid`` (only_process); it must show the process somewhere."""
    from vramtop.processes import uses_no_gpu

    if not only.agents and not any(g.processes for g in only.gpus):
        raise uses_no_gpu(pid)


def read_deadline(interval: float) -> float:
    return min(max(interval, MIN_DEADLINE_S), MAX_DEADLINE_S)
