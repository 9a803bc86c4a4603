"""``vramtop run -- CMD ARGS...``: run a command with the agent enabled in every Python process."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import NoReturn

from vramtop.commands.options import bounded
from vramtop.errors import EXIT_USAGE, VramtopError

# The agent's own range (agent/_runtime.py MIN_INTERVAL, MAX_INTERVAL), not imported: the command
# line would load the agent's runtime for --help.
AGENT_INTERVAL = bounded(0.01, 3600, "seconds")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agent-interval", type=AGENT_INTERVAL, default=None, metavar="S",
                        help="seconds between the agent's samples (default 0.25)")
    parser.add_argument("--trace", action="store_true",
                        help="record PyTorch's allocation history (off by default; it costs step time: see "
                             "bench/trace_cost.py): an OOM's post-mortem then names the largest live allocations "
                             "by stack and saves a snapshot that https://pytorch.org/memory_viz opens")
    parser.add_argument("--trace-entries", type=int, default=None, metavar="N",
                        help="with --trace: allocation events kept (default 100000, a ring buffer)")
    parser.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS",
                        help="the command to run, e.g. -- python train.py --lr 3e-4")


def run(args: argparse.Namespace) -> NoReturn:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise VramtopError("nothing to run: vramtop run -- python train.py", EXIT_USAGE)
    if shutil.which(argv[0]) is None:
        raise VramtopError(f"command not found: {argv[0]}", EXIT_USAGE)
    from vramtop.launch import DEFAULT_TRACE_ENTRIES, agent_environment

    if args.trace_entries is not None and (not args.trace or args.trace_entries < 1):
        raise VramtopError("--trace-entries N takes a positive N, with --trace", EXIT_USAGE)
    trace = (args.trace_entries or DEFAULT_TRACE_ENTRIES) if args.trace else None
    env = agent_environment(os.environ, args.agent_interval, trace)
    print(f"vramtop: agent enabled for {' '.join(argv)[:120]} (pid {os.getpid()}); "
          + ("with PyTorch's allocation history (--trace); " if trace else "")
          + "watch it with `vramtop` in another pane", file=sys.stderr)
    sys.stderr.flush()
    # Become the command: signals, the exit status and the PID are the program's own.
    os.execvpe(argv[0], argv, env)  # does not return
