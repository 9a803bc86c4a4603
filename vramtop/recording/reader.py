"""Reading a recording, whole or while it is written, plain, xz or gzip.

Never raises for damage: every record that can be read is returned with a list of
:class:`Problem` (torn last line, corrupt lines with their numbers, a missing end record, a
cut-off compressed stream). Raises only when the file cannot be opened (:class:`RecordingError`)
or is not a vramtop recording, or a newer one (SchemaError).
"""

from __future__ import annotations

import json
import lzma
import os
import zlib
from dataclasses import dataclass, replace
from typing import IO, Any

from vramtop.codec import DecodeError, from_dict
from vramtop.errors import VramtopError
from vramtop.model import AgentEvent, OomReport, Sample
from vramtop.protocol import RECORDING_SCHEMA, RECORDING_VERSION, SchemaError
from vramtop.recording.records import END, EVENT, HEADER, SAMPLE, End, Event, Header
from vramtop.recording.writer import CHUNK, COMPRESSED_SUFFIXES, compressed_path

_GZIP_MAGIC = b"\x1f\x8b"
_XZ_MAGIC = b"\xfd7zXZ\x00"


class RecordingError(VramtopError):
    """The recording cannot be opened at all (missing, unreadable)."""


@dataclass(frozen=True)
class Problem:
    """Damage found while reading. ``line`` is 1-based, None for the file as a whole."""

    line: int | None
    message: str

    def __str__(self) -> str:
        return self.message if self.line is None else f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class Recording:
    """Everything readable in a recording, and what was wrong with the rest."""

    path: str
    header: Header | None
    samples: tuple[Sample, ...]
    events: tuple[Event, ...]
    end: End | None
    problems: tuple[Problem, ...]
    compressed: bool = False
    ignored: int = 0  # records of a type this version does not know (from a newer minor version)

    @property
    def writer_died(self) -> bool:
        """No end record: the writer was killed or crashed (or is still writing)."""
        return self.end is None

    @property
    def damaged_lines(self) -> int:
        return sum(1 for p in self.problems if p.line is not None)

    def samples_with_events(self) -> list[Sample]:
        """The samples with the agents' events (OOMs) recorded between them put back inside the
        sample that followed each, as the live monitor received them."""
        ooms = sorted((e for e in self.events if e.kind == "oom" and isinstance(e.pid, int)), key=lambda e: e.time)
        out, i = [], 0
        for sample in self.samples:
            typed = []
            while i < len(ooms) and ooms[i].time <= sample.time:
                event = ooms[i]
                i += 1
                try:
                    report = from_dict(OomReport, event.data)
                except (DecodeError, TypeError, ValueError):
                    continue
                typed.append(AgentEvent("oom", event.pid or 0, report.time, report))
            out.append(replace(sample, events=tuple(typed)) if typed else sample)
        return out


def read_recording(path: str | os.PathLike[str]) -> Recording:
    """Read a whole recording, plain, xz or gzip. Raises only when it cannot be opened at all
    (:class:`RecordingError`) or is not a vramtop recording / is too new (SchemaError)."""
    reader = RecordingReader(path)
    try:
        reader.poll()
        if not reader.has_records and reader.damaged_lines:
            # Lines, and not one JSON record among them: some other file, not a damaged recording.
            raise SchemaError(f"{reader.path} is not a vramtop recording: none of its "
                              f"{reader.damaged_lines} lines is a JSON record")
        return reader.result()
    finally:
        reader.close()


class RecordingReader:
    """Reads a recording incrementally, also while another process is still writing it.

    :meth:`poll` parses the complete lines appended since the last call and keeps a trailing
    partial line for the next one; :meth:`result` says what is readable now. The open file
    stays open between polls, so compression at the writer's close (which removes the plain
    file) does not cut a tailing reader off before the end record.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.header: Header | None = None
        self.samples: list[Sample] = []
        self.events: list[Event] = []
        self.end: End | None = None
        self.problems: list[Problem] = []
        self.compressed = False
        self.ignored = 0
        self._file: IO[bytes] | None = None
        self._exhausted = False  # a compressed file is read once, whole
        self._format: str | None = None  # "xz", "gz" or None (plain)
        self._pending = b""
        self._lines = 0
        self._seen_first = False

    def poll(self) -> int:
        """Parse newly appended complete lines; the number of new samples."""
        before = len(self.samples)
        if self._exhausted:
            return 0
        if self._file is None:
            self._file = self._open()
            start = self._file.peek(6)[:6]  # type: ignore[attr-defined]
            self._format = "gz" if start[:2] == _GZIP_MAGIC else "xz" if start == _XZ_MAGIC else None
            self.compressed = self._format is not None
        if self._format is not None:
            self._read_compressed(self._file, self._format)
            self._exhausted = True
        else:
            while chunk := self._file.read(CHUNK):
                self._feed(chunk)
        return len(self.samples) - before

    @property
    def has_records(self) -> bool:
        """At least one line was a JSON record (a header, sample, event or end, whole or damaged)."""
        return self._seen_first

    @property
    def damaged_lines(self) -> int:
        """Complete lines skipped as damage so far (not a torn last line: it may yet be finished)."""
        return sum(1 for p in self.problems if p.line is not None)

    def result(self) -> Recording:
        """What has been read so far, with the damage a reader at this point must assume."""
        problems = list(self.problems)
        if self._pending.strip():
            problems.append(Problem(
                self._lines + 1,
                f"the last line is cut off ({len(self._pending)} bytes) and was skipped: "
                "the writer stopped in the middle of writing it",
            ))
        if self.header is None and not self._seen_first:
            problems.append(Problem(None, "empty recording: no header (the writer died at once?)"))
        if self.end is None:
            problems.append(Problem(
                None,
                f"no end record: the writer died (killed, crashed or out of disk) or is still "
                f"writing; {len(self.samples)} samples are readable",
            ))
        return Recording(
            path=self.path,
            header=self.header,
            samples=tuple(self.samples),
            events=tuple(self.events),
            end=self.end,
            problems=tuple(problems),
            compressed=self.compressed,
            ignored=self.ignored,
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._exhausted = True

    # -- internals ------------------------------------------------------------------------

    def _open(self) -> IO[bytes]:
        # After close the plain file becomes <name>.xz or .gz; a name from before or after works.
        candidates = [self.path]
        suffix = next((x for x in COMPRESSED_SUFFIXES if self.path.endswith(x)), None)
        if suffix is not None:
            candidates.append(self.path[: -len(suffix)])
        else:
            candidates += [compressed_path(self.path, x) for x in COMPRESSED_SUFFIXES]
        for candidate in candidates:
            try:
                f = open(candidate, "rb")  # noqa: SIM115 - kept open between polls
            except FileNotFoundError:
                continue
            except OSError as err:
                raise RecordingError(f"cannot read {candidate}: {err.strerror or err}") from None
            self.path = candidate
            return f
        raise RecordingError(f"cannot read {self.path}: no such file")

    def _read_compressed(self, raw: IO[bytes], fmt: str) -> None:
        # A streaming decompressor hands over every byte it could decode, so a file cut off
        # by a crash still yields all its complete lines (GzipFile.read would drop the chunk).
        def decompressor() -> Any:
            return zlib.decompressobj(wbits=31) if fmt == "gz" else lzma.LZMADecompressor()

        unpacked = 0
        inflate = decompressor()
        try:
            while chunk := raw.read(CHUNK):
                while chunk:
                    data = inflate.decompress(chunk)
                    unpacked += len(data)
                    self._feed(data)
                    chunk = inflate.unused_data  # a second member or stream, if any
                    if chunk:
                        inflate = decompressor()
            if not inflate.eof:
                raise EOFError("compressed file ended before the end-of-stream marker")
        except (EOFError, OSError, zlib.error, lzma.LZMAError) as err:
            self.problems.append(Problem(
                None,
                f"the compressed data is cut off or damaged after {unpacked} bytes ({err}); "
                "what follows is lost",
            ))

    def _feed(self, data: bytes) -> None:
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        for line in lines:
            self._lines += 1
            self._line(line, self._lines)

    def _problem(self, number: int, message: str) -> None:
        self.problems.append(Problem(number, message))

    def _line(self, line: bytes, number: int) -> None:
        if not line.strip():
            return
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # includes bad UTF-8
            self._problem(number, "not a JSON line: skipped")
            return
        if not isinstance(record, dict):
            self._problem(number, "not a JSON object: skipped")
            return
        first = not self._seen_first
        self._seen_first = True
        kind = record.get("type")
        if first:
            self._check_schema(record)
        if kind == HEADER:
            if not first:
                self._problem(number, "a second header (two recordings joined?): ignored")
                return
            try:
                self.header = from_dict(Header, record)
            except DecodeError as err:
                self._problem(number, f"damaged header: {err}")
            return
        if first:
            self._problem(number, "the recording does not start with a header")
        if self.end is not None and kind in (SAMPLE, EVENT, END):
            self._problem(number, "a record after the end record")
        try:
            if kind == SAMPLE:
                self.samples.append(from_dict(Sample, record.get("sample")))
            elif kind == EVENT:
                self.events.append(from_dict(Event, record))
            elif kind == END:
                self.end = from_dict(End, record)
            else:
                self.ignored += 1  # a record type from a newer minor version
        except DecodeError as err:
            self._problem(number, f"damaged {kind} record: {err}")

    def _check_schema(self, record: dict[str, Any]) -> None:
        """The first record decides whether this is a vramtop recording we can read."""
        schema = record.get("schema")
        if record.get("type") != HEADER and schema is None:
            return  # a damaged or missing header: reported as damage, not as a foreign file
        if schema != RECORDING_SCHEMA:
            raise SchemaError(f"{self.path} is not a vramtop recording (schema {schema!r})")
        version = record.get("version")
        if isinstance(version, int) and version > RECORDING_VERSION:
            raise SchemaError(
                f"{self.path} is a {RECORDING_SCHEMA} version {version} file, newer than this "
                f"vramtop understands ({RECORDING_VERSION}); upgrade vramtop to read it"
            )
