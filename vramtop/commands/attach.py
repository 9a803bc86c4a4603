"""``vramtop attach PID``: the monitor focused on one process, with its agent: one it runs already,
or one started inside it now (asked once; see vramtop/commands/attaching.py)."""

from __future__ import annotations

import argparse

from vramtop.commands.options import need_terminal, process_id, thresholds_from
from vramtop.errors import EXIT_OK, EXIT_USAGE, VramtopError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pid", type=process_id, help="the process to watch (a PID on this host)")
    parser.add_argument("-y", "--yes", action="store_true",
                        help="start the agent inside PID without asking (when it runs none)")
    parser.add_argument("--no-inject", action="store_true",
                        help="never start the agent: NVML's view and how to enable it")


def enable_hint(pid: int) -> str:
    """How to get the allocator bill for a process that runs without the agent."""
    import psutil

    try:
        proc = psutil.Process(pid)
        argv = proc.cmdline()
        name = proc.name()
    except psutil.Error:
        argv, name = [], "?"
    if not any("python" in part.rsplit("/", 1)[-1] for part in [*argv[:1], name]):
        return f"PID {pid} ({name}) is not a Python process: NVML figures only."
    command = " ".join(argv) or "python train.py"
    return (f"No vramtop agent in PID {pid}: NVML shows how much it holds, not why. For the bill, "
            f"`vramtop attach {pid}` starts it inside (Linux x86_64), or restart it as "
            f"`vramtop run -- {command}`.")


def run(args: argparse.Namespace) -> int:
    import psutil

    from vramtop.commands.attaching import Declined, start_agent_in
    from vramtop.inject import agent_serving
    from vramtop.processes import uses_no_gpu
    from vramtop.protocol import runtime_dir
    from vramtop.sources.monitor import monitor_source
    from vramtop.sources.poller import DeadlineReader, open_with_deadline

    pid = args.pid
    if not psutil.pid_exists(pid):
        raise VramtopError(f"no process with PID {pid}", EXIT_USAGE)
    source = monitor_source(args.gpu)
    open_with_deadline(source)
    try:
        sample = DeadlineReader(source, deadline=10.0).read()
        on_gpu = any(p.pid == pid for g in sample.gpus for p in g.processes)
        has_agent = agent_serving(pid, runtime_dir())
        if not on_gpu and not has_agent:
            raise uses_no_gpu(pid)
        need_terminal("the live monitor", "`vramtop --once` (or `--once --json`) prints one summary")
        from vramtop.ui.app import VramtopApp

        hint = None
        if not has_agent and args.no_inject:
            hint = enable_hint(pid)
        elif not has_agent:
            try:
                hint = start_agent_in(pid, ask=not args.yes,
                                      instead=f"`vramtop attach --no-inject {pid}` shows NVML's view")
            except Declined:
                hint = enable_hint(pid)

        VramtopApp(source, interval=args.interval, focus_pid=pid, notice=hint,
                   thresholds=thresholds_from(args)).run()
    finally:
        source.close()
    return EXIT_OK
