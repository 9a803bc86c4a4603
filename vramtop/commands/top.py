"""``vramtop``: the live terminal UI over NVML."""

from __future__ import annotations

import argparse

from vramtop.commands.options import need_terminal, thresholds_from
from vramtop.errors import EXIT_OK
from vramtop.sources.monitor import monitor_source
from vramtop.sources.poller import DeadlineReader
from vramtop.sources.remote import with_remotes


def run(args: argparse.Namespace) -> int:
    need_terminal("the live monitor", "`vramtop --once` (or `--once --json`) prints one summary")
    # NVML for every process; the allocator bill for those that run the vramtop agent.
    source = with_remotes(monitor_source(args.gpu), args.remote, args.prometheus)
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
