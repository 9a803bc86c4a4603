"""``vramtop``: the live terminal UI over NVML."""

from __future__ import annotations

import argparse

from vramtop.commands.options import need_terminal, thresholds_from, with_other_hosts
from vramtop.errors import EXIT_OK
from vramtop.sources.monitor import monitor_source
from vramtop.sources.poller import DeadlineReader
from vramtop.ui import collector


def run(args: argparse.Namespace) -> int:
    need_terminal("the live monitor", "`vramtop --once` (or `--once --json`) prints one summary")
    # No garbage collection until the first frame is drawn (the app resumes it): see collector.
    collector.pause()
    try:
        return _run(args)
    finally:
        collector.resume()  # start-up failed, or the app ended before its first frame


def _run(args: argparse.Namespace) -> int:
    # NVML for every process; the allocator bill for those that run the vramtop agent.
    source = with_other_hosts(monitor_source(args.gpu), args)
    reader = DeadlineReader(source)
    # NVML starts, and then the first sample is read, while Textual is imported: a sooner first frame.
    opened = reader.open_in_background()
    from vramtop.ui.app import VramtopApp

    opened()  # fail here, with a clear message, rather than inside the UI

    try:
        VramtopApp(source, reader=reader, interval=args.interval, thresholds=thresholds_from(args)).run()
    finally:
        source.close()
    return EXIT_OK
