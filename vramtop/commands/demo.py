"""``vramtop demo``: what vramtop shows, with no GPU at all: the replay of a real recording."""

from __future__ import annotations

import argparse
import sys

from vramtop.commands.options import need_terminal, thresholds_from
from vramtop.errors import EXIT_OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vramtop.commands.replay import speed

    parser.add_argument("--speed", type=speed, default=2.0, metavar="X",
                        help="playback speed, 0.25 to 32 (default: 2; + and - change it while playing)")
    parser.add_argument("--report", action="store_true",
                        help="print the recording's report (what `vramtop report` says of it) and its path")


def run(args: argparse.Namespace) -> int:
    from vramtop.commands.replay import load, recorded_interval, refuse_gpu
    from vramtop.demo import RECORDING

    refuse_gpu(args, "the demo")
    if args.report:
        from vramtop.analysis.report import summarize
        from vramtop.recording import read_recording
        from vramtop.sinks.report_text import render_text

        print(f"vramtop demo: the recording is {RECORDING}", file=sys.stderr)
        print(render_text(summarize(read_recording(RECORDING), None, thresholds_from(args))))
        return EXIT_OK
    source, _ = load(str(RECORDING))
    samples = source.samples
    need_terminal("the demo", "`vramtop demo --report` prints what the recording says")
    from vramtop.ui.replay import ReplayApp, first_busy_index, replay_interval

    notice = ("Demo: a recording of GPT-2 small training on an NVIDIA H100 with the vramtop agent. "
              "space pauses · → ← step · w next warning · P peak · q quits")
    ReplayApp(source, title="demo", interval=replay_interval(samples, recorded_interval(source.recording)),
              speed=args.speed, notice=notice, thresholds=thresholds_from(args),
              start=first_busy_index(samples)).run()  # not 20 s of an idle GPU before the run starts
    return EXIT_OK
