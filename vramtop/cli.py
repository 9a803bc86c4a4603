"""Command line: ``main(argv) -> exit code``. The composition root that builds sources and sinks.

Kept free of heavy imports so that ``vramtop --help`` and ``--version`` stay instant: textual,
pynvml and psutil are imported only by the command that needs them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Collection, Sequence

from vramtop import __version__
from vramtop.commands.options import bounded
from vramtop.errors import EXIT_FAILURE, EXIT_USAGE, VramtopError

EXIT_PIPE = 128 + 13  # what a shell reports for a command SIGPIPE ended

DESCRIPTION = """\
Live GPU-memory monitor for training: nvidia-smi's numbers per GPU and process, next to
PyTorch's allocator bill when the training process runs the vramtop agent.
"""

EPILOG = """\
examples:
  vramtop                      live monitor (q quits, ? lists the keys)
  vramtop --once               one text summary, like nvidia-smi
  vramtop --once --json        one JSON document (schema vramtop.sample, version 1)
  vramtop --gpu 0,GPU-3f2a     only these GPUs (index or UUID prefix)
  vramtop --remote node2:9400  this host's GPUs and node2's, read from its `vramtop export`
  vramtop --prometheus http://prom:9090   every host a Prometheus server scrapes vramtop from

exit codes: 0 ok, 1 error, 2 usage, 3 no NVIDIA driver, 4 no GPU, 5 NVML failed
"""


_interval = bounded(0.05, 3600, "seconds")


def _gpu_list(text: str) -> list[str]:
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected GPU indices or UUID prefixes, e.g. 0,1")
    return items


def _source_options(defaults: bool = True, interval: bool = True) -> argparse.ArgumentParser:
    """Options shared by every command that reads GPUs (defined once). Subcommands get them
    without defaults, so `vramtop -i 2 record` keeps the 2 given before the command name; those
    that read a recording have no refresh interval of their own (``interval=False``)."""
    shared = argparse.ArgumentParser(add_help=False)
    if interval:
        shared.add_argument("-i", "--interval", type=_interval, default=1.0 if defaults else argparse.SUPPRESS,
                            metavar="S",
                            help="seconds between refreshes (default: 1.0)")
    shared.add_argument("--gpu", type=_gpu_list, action="extend", default=None if defaults else argparse.SUPPRESS,
                        metavar="IDS",
                        help="only these GPUs: comma-separated NVML indices or UUID prefixes")
    shared.add_argument("--margin", type=_percent, default=10.0 if defaults else argparse.SUPPRESS, metavar="PCT",
                        help="share of each GPU to keep free for evaluation, profiling and debugging; "
                             "warn when the projected peak eats into it (default: 10)")
    shared.add_argument("--threshold", action="append", default=[] if defaults else argparse.SUPPRESS,
                        metavar="NAME=VALUE",
                        help="change one risk threshold, e.g. frag_ratio=0.6, leak_min_growth=256MiB, "
                             "raise_after=5 (repeatable; the names, defaults and reasons: docs/risk.md)")
    return shared


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage: {text!r}") from None
    if not 0 <= value < 50:
        raise argparse.ArgumentTypeError("must be from 0 to 50 (percent of the GPU)")
    return value


# Subcommands: (name, module). Each module defines ``add_arguments(parser)`` and
# ``run(args) -> int`` and is imported only when its command runs (or to build the parser).
SUBCOMMANDS: list[tuple[str, str, str]] = [
    # (name, module, one-line help)
    ("attach", "vramtop.commands.attach", "the monitor focused on one process (PID), with its agent if it has one"),
    ("run", "vramtop.commands.run", "run a training command with the vramtop agent in every Python process"),
    ("replay", "vramtop.commands.replay",
     "the monitor over a recording (or one still being written: --follow): pause, step, jump to warnings"),
    ("record", "vramtop.commands.record", "record GPU memory to a file, headless or around a command"),
    ("demo", "vramtop.commands.demo", "no GPU needed: replay a real H100 training run recorded with vramtop"),
    ("report", "vramtop.commands.report", "summarize a recording: text, JSON, a web page or a PNG timeline"),
    ("export", "vramtop.commands.export",
     "serve GPU memory, each process's bill and the warnings to Prometheus (/metrics)"),
]


# Commands that read a recording: its own interval applies, not -i.
RECORDED = {"report", "replay", "demo"}


def build_parser(commands_used: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``commands_used`` (the words of argv), only the subcommands
    named there get their own options, so only their modules are imported (the live monitor
    starts sooner without the recorder's and the reports')."""
    shared = _source_options()
    parser = argparse.ArgumentParser(
        prog="vramtop",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[shared],
    )
    parser.add_argument("-V", "--version", action="version", version=f"vramtop {__version__}")
    parser.add_argument("-1", "--once", action="store_true",
                        help="print one summary and exit (no terminal UI)")
    parser.add_argument("--json", action="store_true",
                        help="with --once: print a JSON document instead of text")
    parser.add_argument("--remote", action="append", metavar="HOST:PORT",
                        help="also show another host's GPUs, read from its `vramtop export` endpoint; "
                             "repeatable; read-only (its processes are never signalled)")
    parser.add_argument("--prometheus", metavar="URL",
                        help="also show every host whose `vramtop export` a Prometheus server scrapes, read "
                             "from its HTTP API (one query per refresh); read-only")
    if SUBCOMMANDS:
        commands = parser.add_subparsers(dest="command", metavar="COMMAND")
        # One parent of each kind, shared by the subcommands (argparse copies a parent's options
        # into each child): every parser built costs the live monitor's start some gettext look-ups.
        shared_options = {interval: _source_options(defaults=False, interval=interval) for interval in (True, False)}
        for name, module, summary in SUBCOMMANDS:
            sub = commands.add_parser(name, help=summary, description=summary,
                                      parents=[shared_options[name not in RECORDED]])
            sub.set_defaults(module=module)
            if commands_used is None or name in commands_used:
                importlib.import_module(module).add_arguments(sub)
    return parser


def _negative_values_joined(argv: Sequence[str]) -> list[str]:
    """``-i -1`` as ``--interval=-1``: argparse takes "-1" for the ``-1`` (--once) option and says
    "expected one argument"; joined, the value gets its own, clearer message."""
    out = list(argv)
    for i in range(len(out) - 1):
        if out[i] in ("-i", "--interval") and re.fullmatch(r"-[0-9.]+", out[i + 1]):
            out[i:i + 2] = [f"--interval={out[i + 1]}", ""]
    return [a for a in out if a != ""]


def main(argv: Sequence[str] | None = None) -> int:
    words = _negative_values_joined(sys.argv[1:] if argv is None else argv)
    parser = build_parser(commands_used=words)
    args = parser.parse_args(words)
    try:
        module = getattr(args, "module", None)
        if module is None:
            if args.json and not args.once:
                parser.error("--json needs --once")
            module = "vramtop.commands.once" if args.once else "vramtop.commands.top"
        return int(importlib.import_module(module).run(args))
    except VramtopError as err:
        print(f"vramtop: {err.message}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except BrokenPipeError:
        # The reader went away (`vramtop report F | head`): stop quietly, as SIGPIPE stops the
        # standard tools, and keep the interpreter from complaining while it flushes stdout.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE


__all__ = ["EXIT_USAGE", "build_parser", "main"]
