"""``vramtop``: the live terminal UI over NVML."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from vramtop.analysis.risk import Thresholds
from vramtop.errors import EXIT_OK, EXIT_USAGE, VramtopError
from vramtop.sources.agent import AgentSource, MonitorSource
from vramtop.sources.nvml import NvmlSource
from vramtop.sources.poller import open_with_deadline


def run_top(*, gpus: Sequence[str] | None, interval: float, thresholds: Thresholds | None = None) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise VramtopError("the live monitor needs a terminal; use --once or --once --json", EXIT_USAGE)
    # NVML for every process; the allocator bill for those that run the vramtop agent.
    source = MonitorSource(NvmlSource(gpus), AgentSource())
    open_with_deadline(source)  # fail here, with a clear message, rather than inside the UI
    from vramtop.ui.app import VramtopApp

    try:
        VramtopApp(source, interval=interval, thresholds=thresholds).run()
    finally:
        source.close()
    return EXIT_OK
