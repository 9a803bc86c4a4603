"""Writing a recording: one ``os.write`` per complete line, appended, never rewritten, so
``kill -9`` loses nothing written; packing the closed file into ``.xz`` or ``.gz`` atomically."""

from __future__ import annotations

import contextlib
import errno
import gzip
import lzma
import os
import shutil
from collections.abc import Callable
from typing import IO, Any

from vramtop.recording.records import encode

XZ_SUFFIX, GZIP_SUFFIX = ".xz", ".gz"
COMPRESSED_SUFFIXES = (XZ_SUFFIX, GZIP_SUFFIX)
CHUNK = 1 << 20  # bytes copied or read at a time


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
                shutil.copyfileobj(plain, packed, CHUNK)
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
