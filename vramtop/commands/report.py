"""``vramtop report FILE``: what a recording says, as text, JSON, a web page or a picture.

Damage never stops a report: whatever could be read is summed up and the damage is listed
under PROBLEMS. Only a file that cannot be read at all, or is not a (readable) vramtop
recording, ends the command with a one-line message.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from vramtop.commands.options import thresholds_from
from vramtop.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, VramtopError

EPILOG = """\
examples:
  vramtop report run.jsonl                   text summary (plain, .xz or .gz; also while recording)
  vramtop report run.jsonl.xz --json         the same as a JSON document (schema vramtop.report)
  vramtop report run.jsonl --html run.html   a web page with the memory timeline (works offline)
  vramtop report run.jsonl --png run.png     the timeline as a PNG (the same picture as --svg)
  vramtop report run.jsonl --svg run.svg     the timeline as an SVG image
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("file", metavar="FILE", help="a recording made by vramtop record (plain, xz or gzip)")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON document instead of text (schema vramtop.report, version 1)")
    parser.add_argument("--html", metavar="OUT.html",
                        help="also write a self-contained web page: summary and memory timeline")
    parser.add_argument("--png", metavar="OUT.png", help="also write the memory timeline as a PNG image")
    parser.add_argument("--svg", metavar="OUT.svg", help="also write the memory timeline as an SVG image")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite OUT files that exist (never FILE)")


def run(args: argparse.Namespace) -> int:
    from vramtop.analysis.report import summarize
    from vramtop.protocol import SchemaError
    from vramtop.recording import read_recording
    from vramtop.sinks.report_timeline import panels

    outputs = [path for path in (args.html, args.png, args.svg) if path]
    _check_outputs(args.file, outputs, args.force)
    try:
        recording = read_recording(args.file)
    except SchemaError as err:
        raise VramtopError(str(err), EXIT_FAILURE) from None
    report = summarize(recording, args.gpu, thresholds_from(args))
    if args.gpu and not report.gpus:
        known = ", ".join(f"{g.index} ({g.uuid})" for g in summarize(recording).gpus) or "none"
        raise VramtopError(f"--gpu {','.join(args.gpu)} matches no GPU of this recording; it has: {known}",
                           EXIT_USAGE)
    # The text first: a picture that cannot be written must not take the report with it.
    if args.json:
        from vramtop.sinks.report_json import render_json

        print(render_json(report))
    else:
        from vramtop.sinks.report_text import render_text

        print(render_text(report))
    sys.stdout.flush()
    if outputs:
        from vramtop.sinks.report_svg import render_svg

        svg = render_svg(panels(recording, report), report)
        if args.svg:
            _write(args.svg, svg.encode())
        if args.png:
            from vramtop.sinks.report_png import svg_to_png

            _write(args.png, svg_to_png(svg))
        if args.html:
            from vramtop.sinks.report_html import render_html

            _write(args.html, render_html(report, svg).encode())
    for path in outputs:
        print(f"vramtop: wrote {path}", file=sys.stderr)
    return EXIT_OK


def _check_outputs(source: str, outputs: list[str], force: bool) -> None:
    """Never overwrite the recording, nor a file that exists unless --force."""
    for path in outputs:
        if os.path.lexists(path) and os.path.exists(source) and os.path.samefile(path, source):
            raise VramtopError(f"{path} is the recording being read: choose another name", EXIT_USAGE)
        if os.path.lexists(path) and not force:
            raise VramtopError(f"{path} already exists: pass --force to overwrite it", EXIT_USAGE)
    if len(set(outputs)) < len(outputs):
        raise VramtopError("--html, --png and --svg must name different files", EXIT_USAGE)


def _write(path: str, data: bytes) -> None:
    """Write ``data`` whole or not at all (temporary file, then rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise VramtopError(f"cannot write {path}: {err.strerror or err}", EXIT_FAILURE) from None
