"""``vramtop replay FILE``: the monitor over a recording, with pause, step, jumps and speed;
``--follow`` shows a recording still being written as it grows."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from vramtop.commands.options import bounded, need_terminal, thresholds_from
from vramtop.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, VramtopError

if TYPE_CHECKING:
    from vramtop.recording import Recording
    from vramtop.sources.replay import ReplaySource


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a recording made by `vramtop record` (.jsonl, .jsonl.xz or .jsonl.gz)")
    parser.add_argument("--speed", type=speed, default=1.0, metavar="X",
                        help="playback speed, 0.25 to 32 (default: 1; + and - change it while playing)")
    parser.add_argument("--follow", "-f", action="store_true",
                        help="a recording still being written: start at its newest sample and show new "
                             "ones as the recorder appends them (like tail -f); space or ← stops "
                             "following, End follows again (not for .xz/.gz files: they are complete)")


def load(path: str, *, follow: bool = False) -> tuple[ReplaySource, str | None]:
    """(the recording as a source, a notice about damage) or a VramtopError in one line."""
    from vramtop.analysis.diagnosis import with_histories
    from vramtop.protocol import SchemaError
    from vramtop.recording import read_recording
    from vramtop.sources.replay import ReplaySource

    # with_histories: an older agent's OOM reports, diagnosed from the steps before as `report` does.
    try:
        if follow:  # kept open: refresh() reads on
            source = ReplaySource(path, prepare=with_histories)
            source.open()
        else:
            source = ReplaySource(read_recording(path), prepare=with_histories)
    except SchemaError as err:
        raise VramtopError(f"{path}: {err}", EXIT_FAILURE) from None
    recording = source.recording
    if follow and recording.compressed:
        source.close()
        raise VramtopError(f"{path}: a compressed recording is complete and cannot be followed; "
                           "replay it without --follow", EXIT_USAGE)
    if not recording.samples:
        source.close()
        raise VramtopError(f"{path}: no samples to replay"
                           + (f" ({recording.problems[0]})" if recording.problems else ""), EXIT_FAILURE)
    notes = []
    damaged = [p for p in recording.problems if p.line is not None]
    if damaged:
        notes.append(f"{len(damaged)} damaged line(s) skipped (first: {damaged[0]}); "
                     "replaying everything readable")
    if recording.writer_died and not follow:  # a followed recording says so as it goes
        notes.append("no end record: the recorder was killed or is still writing; "
                     f"replaying up to the last complete sample ({len(recording.samples)})")
    return source, " · ".join(notes) or None


def recorded_interval(recording: Recording) -> float | None:
    return recording.header.interval if recording.header else None


speed = bounded(0.25, 32)  # the playback speed of replay and demo


def refuse_gpu(args: argparse.Namespace, command: str) -> None:
    """A recording is replayed whole: --gpu would be silently ignored, so it is refused."""
    if getattr(args, "gpu", None):
        raise VramtopError(f"--gpu does not apply to {command}: it replays every GPU of the recording "
                           "(`vramtop report FILE --gpu IDS` summarises some of them)", EXIT_USAGE)


def run(args: argparse.Namespace) -> int:
    refuse_gpu(args, "replay")
    source, notice = load(args.file, follow=args.follow)
    try:
        need_terminal("replay", "`vramtop report FILE` summarises a recording as text")
        from vramtop.ui.replay import ReplayApp, replay_interval

        app = ReplayApp(source, title=os.path.basename(args.file),
                        interval=replay_interval(source.samples, recorded_interval(source.recording)),
                        speed=args.speed, notice=notice, thresholds=thresholds_from(args), follow=args.follow)
        app.run()
    finally:
        source.close()
    return EXIT_OK
