"""Render SVG screenshots of the live monitor from recorded samples.

Each ``DATA/NAME.json`` holds one ``vramtop --once --json`` document, a JSON list of them, or
several of them one after another (what that command prints when run repeatedly); each
``DATA/NAME.jsonl[.gz]`` is a `vramtop record` recording. The samples
are shown in time order; the earlier ones build the sparkline history. For each file and size this
writes ``OUT/NAME-<width>x<height>.svg``. A recording gives up to two moments: NAME, shortly after
the first warning (or its last sample with an agent), and NAME-oom, its last sample with an
agent if a process ran out of memory (the post-mortem), plus NAME-report.svg, the timeline
`vramtop report` draws. Samples whose last one shows a distributed job (two ranks or more) also
give NAME-ranks-<width>x<height>.svg: the rank view, as the `r` key opens it. The monitor is
rendered off-screen, fed the samples in order, exactly as the live poller would deliver them.
Times are shown in UTC (``--tz``) so that the output does not depend on where it is rendered.

    python scripts/screenshots.py                       # screenshots/data/*.json -> screenshots/
    python scripts/screenshots.py --data DIR --out DIR --size 100x30

How to capture data: screenshots/data/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing vramtop
    sys.path.insert(0, str(ROOT))

from vramtop.codec import DecodeError  # noqa: E402
from vramtop.model import Sample  # noqa: E402
from vramtop.protocol import SchemaError, sample_from_document  # noqa: E402

SIZES = ((80, 24), (160, 48))  # a tmux pane, and a large terminal


class InputError(Exception):
    """A data file that cannot be turned into samples."""


class _NoSource:
    """The app is run with poll=False and fed the recorded samples; it never reads a source."""

    def open(self) -> None:
        raise RuntimeError("screenshots are rendered from recorded samples only")

    read = close = open  # type: ignore[assignment]


def read_documents(text: str) -> list[object]:
    """One JSON document, a JSON list of them, or documents one after another (the output of
    ``vramtop --once --json`` run repeatedly)."""
    decoder = json.JSONDecoder()
    values = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            break
        value, position = decoder.raw_decode(text, position)
        values.append(value)
    if len(values) == 1 and isinstance(values[0], list):
        return values[0]
    return values


def load_samples(path: Path) -> list[Sample]:
    try:
        documents = read_documents(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read JSON: {err}") from None
    if not documents:
        raise InputError(f"{path}: no samples")
    try:
        samples = [sample_from_document(doc) for doc in documents]
    except (SchemaError, DecodeError) as err:
        raise InputError(f"{path}: {err}") from None
    return sorted(samples, key=lambda s: s.time)


# Samples shown after the first warning, so that it has settled on screen.
AFTER_WARNING = 4


def recording_moments(path: Path) -> list[tuple[str, list[Sample]]]:
    """The moments of a `vramtop record` file worth a picture, each as the samples up to it:
    ("", ...) shortly after the first warning, else the last sample in which a process reports
    through the agent, else the whole file; ("-oom", ...) the last agent sample, when an agent
    captured an out-of-memory error."""
    from vramtop.analysis.risk import INFO, warnings_over
    from vramtop.recording import RecordingError, read_recording

    try:
        recording = read_recording(path)
    except (OSError, RecordingError) as err:
        raise InputError(f"{path}: {err}") from None
    samples = recording.samples_with_events()  # an OOM's post-mortem reaches the TUI as it did live
    if not samples:
        raise InputError(f"{path}: no samples")
    with_agents = [i for i, s in enumerate(samples) if any(a.devices for a in s.agents)]
    last = with_agents[-1] if with_agents else len(samples) - 1
    timeline = warnings_over(samples)
    warned = next((i for i, ws in enumerate(timeline) if any(w.level != INFO for w in ws)), None)
    main = last if warned is None else min(last, warned + AFTER_WARNING)
    moments = [("", samples[: main + 1])]
    if with_agents and any(a.last_oom for a in samples[last].agents) and last != main:
        moments.append(("-oom", samples[: last + 1]))
    return moments


def report_svg(path: Path) -> str:
    """The memory timeline `vramtop report FILE --svg` draws for a recording."""
    from vramtop.analysis.report import summarize
    from vramtop.recording import read_recording
    from vramtop.sinks.report_svg import render_svg
    from vramtop.sinks.report_timeline import panels

    recording = read_recording(path)
    report = summarize(recording, None)
    return render_svg(panels(recording, report), report)


def has_job(samples: Sequence[Sample]) -> bool:
    """The last sample shows a distributed job of two ranks or more (the rank view has something)."""
    from vramtop.analysis.jobs import jobs

    return bool(samples) and any(len(j.ranks) >= 2 for j in jobs(samples[-1]))


async def render(samples: Sequence[Sample], size: tuple[int, int], title: str, press: Sequence[str] = ()) -> str:
    from vramtop.ui.app import SampleArrived, VramtopApp
    from vramtop.ui.replay import replay_interval

    app = VramtopApp(_NoSource(), poll=False, interval=replay_interval(samples, None))  # type: ignore[arg-type]
    async with app.run_test(size=size) as pilot:
        for sample in samples:
            # One at a time: a newer SampleArrived replaces an unprocessed one.
            app.post_message(SampleArrived(sample))
            await pilot.pause()
        if press:
            await pilot.press(*press)
        await pilot.wait_for_scheduled_animations()
        await pilot.pause()
        return app.export_screenshot(title=title)


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (80x24), not {text!r}") from None
    if width < 20 or height < 10:
        raise argparse.ArgumentTypeError("at least 20x10")
    return width, height


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "screenshots" / "data",
                        help="directory of recorded *.json samples (default: screenshots/data)")
    parser.add_argument("--out", type=Path, default=ROOT / "screenshots",
                        help="directory for the SVG files (default: screenshots)")
    parser.add_argument("--size", type=_size, action="append", metavar="WxH",
                        help="terminal size; repeatable (default: 80x24 and 160x48)")
    parser.add_argument("--tz", default="UTC", help="time zone of the clock shown (default: UTC)")
    args = parser.parse_args(argv)

    os.environ["TZ"] = args.tz
    time.tzset()
    files = sorted([*args.data.glob("*.json"), *args.data.glob("*.jsonl"), *args.data.glob("*.jsonl.gz")])
    if not files:
        print(f"screenshots: no *.json in {args.data}; see screenshots/data/README.md",
              file=sys.stderr)
        return 1
    try:
        inputs: list[tuple[str, list[Sample]]] = []
        for path in files:
            name = path.name.split(".")[0]
            if path.name.endswith((".jsonl", ".jsonl.gz")):
                inputs += [(name + suffix, samples) for suffix, samples in recording_moments(path)]
            else:
                inputs.append((name, load_samples(path)))
    except InputError as err:
        print(f"screenshots: {err}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for path in files:  # recordings also get their `vramtop report` timeline
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            target = args.out / f"{path.name.split('.')[0]}-report.svg"
            target.write_text(report_svg(path))
            print(target)
    views = [(name, samples, ()) for name, samples in inputs]
    views += [(f"{name}-ranks", samples, ("r",)) for name, samples in inputs if has_job(samples)]
    for name, samples, press in views:
        for width, height in args.size or SIZES:
            svg = asyncio.run(render(samples, (width, height), title=f"vramtop — {name}", press=press))
            target = args.out / f"{name}-{width}x{height}.svg"
            target.write_text(svg)
            print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
