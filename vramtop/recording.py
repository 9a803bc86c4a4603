"""Recordings: samples and events in a JSON Lines file, to replay, tail, report on or share.

Format (schema ``vramtop.recording``, version 1; docs/recording.md has the long version):

- UTF-8 JSON Lines. Every record is one JSON object on one line, written with a single
  ``os.write`` of the complete line (newline included), appended, never rewritten. A reader
  therefore never sees half a record, except a torn last line after a crash or a full disk.
- Line 1 is the header::

    {"type":"header","schema":"vramtop.recording","version":1,"vramtop":"0.1.0",
     "host":"gpu-box","driver":"580.159.04","cuda_driver":"13.0",
     "gpus":[{"index":0,"uuid":"GPU-...","name":"NVIDIA H100 80GB HBM3",
              "memory_total":85520809984}],
     "interval":1.0,"started":1795000000.0,"command":["python","train.py"]}

  ``command`` is null when nothing was launched; ``gpus`` lists the GPUs at the start.
- Then samples and events, in the order they happened::

    {"type":"sample","sample":{...}}     the sample exactly as codec.to_dict writes it
                                         (the same shape as ``vramtop --once --json``)
    {"type":"event","time":...,"kind":"command.started","pid":4242,"data":{...}}

  Events are generic: ``kind`` names them ("command.started", "command.exited"; later steps,
  warnings, OOM post-mortems), ``pid`` is the process they concern or null, ``data`` is free.
- The last line is the end record: ``{"type":"end","time":...,"samples":N,"reason":"..."}``.
  No end record means the writer died (killed, crashed, lost power) or is still writing.
- Memory is in integer bytes; times are seconds since the epoch.
- Closing with compression packs the file into ``<name>.xz`` (or ``<name>.gz``; temporary file
  + rename) and removes the plain file; while recording, the plain file is readable and can be
  tailed. xz is the default: agent samples repeat long structures with changing numbers, and
  its large window packs them ~30% smaller than gzip's 32 KiB one (bench/RESULTS.md).

Compatibility: readers ignore unknown fields and unknown record types (minor additions keep
``version`` 1) and refuse a newer ``version`` with :class:`~vramtop.protocol.SchemaError`.

Reading never raises for damage: :func:`read_recording` returns every record it could read
plus a list of :class:`Problem` (torn last line, corrupt lines with their line numbers, a
missing end record, a cut-off compressed stream).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import lzma
import os
import shutil
import time as _time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import IO, Any

from vramtop import __version__
from vramtop.codec import DecodeError, from_dict, to_dict
from vramtop.errors import VramtopError
from vramtop.model import AgentEvent, OomReport, Sample
from vramtop.protocol import RECORDING_SCHEMA, RECORDING_VERSION, SchemaError

HEADER = "header"
SAMPLE = "sample"
EVENT = "event"
END = "end"

XZ_SUFFIX, GZIP_SUFFIX = ".xz", ".gz"
COMPRESSED_SUFFIXES = (XZ_SUFFIX, GZIP_SUFFIX)
_GZIP_MAGIC = b"\x1f\x8b"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_CHUNK = 1 << 20


# -- records ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedGpu:
    """A GPU as the header lists it."""

    index: int
    uuid: str
    name: str
    memory_total: int | None = None


@dataclass(frozen=True)
class Header:
    """What the recording is: who wrote it, where, of which GPUs, how often."""

    version: int
    started: float
    interval: float | None = None
    vramtop: str | None = None
    host: str | None = None
    driver: str | None = None
    cuda_driver: str | None = None
    gpus: tuple[RecordedGpu, ...] = ()
    command: tuple[str, ...] | None = None
    pid: int | None = None  # recorded with --pid: only this process


@dataclass(frozen=True)
class Event:
    """Something that happened at one instant (a command started, a step ended, an OOM)."""

    time: float
    kind: str
    pid: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class End:
    """The recording was closed on purpose; ``samples`` is how many were written."""

    time: float
    samples: int
    reason: str = ""


def header_record(first: Sample, *, interval: float | None, command: Sequence[str] | None,
                  started: float | None = None, pid: int | None = None) -> dict[str, Any]:
    """The header for a recording whose first sample is ``first``."""
    return {
        "type": HEADER,
        "schema": RECORDING_SCHEMA,
        "version": RECORDING_VERSION,
        "vramtop": __version__,
        "host": first.host.hostname,
        "driver": first.driver_version,
        "cuda_driver": first.cuda_driver_version,
        "gpus": [
            {"index": g.index, "uuid": g.uuid, "name": g.name, "memory_total": g.memory_total}
            for g in first.gpus
        ],
        "interval": interval,
        "started": first.time if started is None else started,
        "command": None if command is None else list(command),
        "pid": pid,  # `record --pid`: the one process recorded (None: all of them)
    }


def sample_record(sample: Sample) -> dict[str, Any]:
    return {"type": SAMPLE, "sample": to_dict(sample)}


def event_record(kind: str, data: dict[str, Any] | None = None, *, pid: int | None = None,
                 time: float | None = None) -> dict[str, Any]:
    return {"type": EVENT, "time": _time.time() if time is None else time, "kind": kind,
            "pid": pid, "data": dict(data or {})}


def end_record(samples: int, reason: str, *, time: float | None = None) -> dict[str, Any]:
    return {"type": END, "time": _time.time() if time is None else time, "samples": samples,
            "reason": reason}


def encode(record: dict[str, Any]) -> bytes:
    """One record as one line. ASCII-escaped: command lines may hold undecodable bytes."""
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


# -- writing ------------------------------------------------------------------------------


class RecordingWriter:
    """Appends records to a new file, each with one ``os.write`` of one complete line.

    There is no user-space buffer: once :meth:`write` returns, the line is in the kernel and
    survives the death of this process. :meth:`sync` also makes it survive a power cut.
    """

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False,
                 write: Callable[[int, bytes], int] = os.write) -> None:
        self.path = os.fspath(path)
        self._write = write
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        flags |= os.O_TRUNC if overwrite else os.O_EXCL
        self._fd: int | None = os.open(self.path, flags, 0o644)
        self.size = 0  # bytes of complete lines

    @property
    def closed(self) -> bool:
        return self._fd is None

    def write(self, record: dict[str, Any]) -> None:
        """Append one record; OSError (disk full, I/O error) leaves the file as it was."""
        self.write_line(encode(record))

    def write_line(self, line: bytes) -> None:
        if self._fd is None:
            raise ValueError("write to a closed recording")
        done = 0
        try:
            while done < len(line):
                # One call writes the whole line on a local file system; a short count comes only
                # with a full disk or a signal, and the loop then finds out which.
                n = self._write(self._fd, line[done:])
                if n <= 0:
                    raise OSError(errno.EIO, "write returned 0 bytes")
                done += n
        except OSError:
            if done:
                # Take the partial line back so the next line does not continue it: a damaged
                # line would then sit in the middle of the file instead of nowhere.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self.size)
            raise
        self.size += len(line)

    def sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def compressed_path(path: str, suffix: str = XZ_SUFFIX) -> str:
    return path + suffix


def compress_recording(path: str | os.PathLike[str], *, suffix: str = XZ_SUFFIX) -> str:
    """Pack a closed recording into ``<path>.xz`` (or ``.gz``) atomically, remove ``path``; the
    new path.

    The compressed file appears complete or not at all (temporary file, fsync, rename); the
    plain file is removed only after that, so a failure at any point loses nothing.
    """
    src = os.fspath(path)
    if suffix not in COMPRESSED_SUFFIXES:
        raise ValueError(f"unknown compression {suffix!r}")
    dest = compressed_path(src, suffix)
    tmp = f"{dest}.tmp-{os.getpid()}"
    try:
        with open(src, "rb") as plain, open(tmp, "xb") as raw:
            with _packer(raw, suffix, os.path.basename(src)) as packed:
                shutil.copyfileobj(plain, packed, _CHUNK)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_directory(dest)
    os.unlink(src)
    return dest


def _packer(raw: IO[bytes], suffix: str, name: str) -> gzip.GzipFile | lzma.LZMAFile:
    if suffix == GZIP_SUFFIX:
        return gzip.GzipFile(filename=name, mode="wb", fileobj=raw, compresslevel=6, mtime=0)
    # Preset 6 needs ~94 MiB to pack; 9 needs ~674 MiB and gains nothing on recordings.
    return lzma.LZMAFile(raw, mode="wb", preset=6)


def _sync_directory(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- reading ------------------------------------------------------------------------------


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
            while chunk := self._file.read(_CHUNK):
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
            while chunk := raw.read(_CHUNK):
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
