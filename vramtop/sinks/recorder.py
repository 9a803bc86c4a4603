"""The recorder sink: samples and events into a recording file (format: vramtop/recording/).

Every record is in the kernel when its call returns, so ``kill -9`` loses nothing written;
an fsync every ``sync_interval`` seconds and at close bounds what a power cut can lose.
A write that fails (disk full, I/O error) leaves every earlier record intact and raises a
:class:`RecorderError` that says how many samples were saved.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from vramtop.errors import VramtopError
from vramtop.model import Sample
from vramtop.recording import (
    RecordingWriter,
    compress_recording,
    end_record,
    event_record,
    sample_record,
)

_WHAT_WENT_WRONG = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EIO: "I/O error",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EFBIG: "file too large",
    errno.EROFS: "read-only file system",
}


class RecorderError(VramtopError):
    """The recording could not be created or written."""


class Recorder:
    """Writes a header, then samples and events as they come, then an end record at close.

    Thread-safe: samples and events may arrive from different threads.
    """

    def __init__(self, path: str | os.PathLike[str], header: dict[str, Any], *,
                 overwrite: bool = False, sync_interval: float = 10.0,
                 write: Callable[[int, bytes], int] = os.write,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = os.fspath(path)
        self.samples = 0
        self.events = 0
        self._lock = threading.Lock()
        self._sync_interval = sync_interval
        self._clock = clock
        self._failed: RecorderError | None = None
        try:
            self._writer = RecordingWriter(self.path, overwrite=overwrite, write=write)
        except FileExistsError:
            raise RecorderError(f"{self.path} already exists") from None
        except OSError as err:
            raise RecorderError(f"cannot create {self.path}: {err.strerror or err}") from None
        self._last_sync = clock()
        try:
            self._append(header)
        except RecorderError:
            self._writer.close()
            if not overwrite:  # our own empty file; never unlink something we were told to reuse
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            raise

    @property
    def closed(self) -> bool:
        return self._writer.closed

    def write_sample(self, sample: Sample) -> None:
        with self._lock:
            self._append(sample_record(sample))
            self.samples += 1

    def write_event(self, kind: str, data: dict[str, Any] | None = None, *, pid: int | None = None,
                    time: float | None = None) -> None:
        """``data`` must be JSON-serialisable (dicts, lists, numbers, strings, None)."""
        with self._lock:
            self._append(event_record(kind, data, pid=pid, time=time))
            self.events += 1

    def close(self, reason: str = "stopped", *, compress: str = "") -> str:
        """Write the end record and close; with ``compress`` (".xz" or ".gz"), pack the file.
        The final path.

        After a failed write there is no end record (a reader then reports that the writer
        died, which is close to the truth) and no compression: the plain file is kept.
        """
        with self._lock:
            if self._writer.closed:
                return self.path
            try:
                if self._failed is None:
                    self._append(end_record(self.samples, reason))
                    self._sync()
            finally:
                self._writer.close()
        if not compress:
            return self.path
        try:
            return compress_recording(self.path, suffix=compress)
        except OSError as err:
            raise RecorderError(
                f"could not compress {self.path} ({err.strerror or err}); "
                "the uncompressed recording is complete and kept"
            ) from None

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close("error" if exc[0] is not None else "stopped")

    # -- internals ------------------------------------------------------------------------

    def _append(self, record: dict[str, Any]) -> None:
        if self._failed is not None:
            raise self._failed
        try:
            self._writer.write(record)
            if self._clock() - self._last_sync >= self._sync_interval:
                self._sync()
        except OSError as err:
            self._failed = self._error(err)
            raise self._failed from None

    def _sync(self) -> None:
        self._last_sync = self._clock()
        try:
            self._writer.sync()
        except OSError as err:
            if err.errno == errno.EINVAL:  # a pipe or character device: nothing to sync
                return
            raise

    def _error(self, err: OSError) -> RecorderError:
        what = _WHAT_WENT_WRONG.get(err.errno or 0, f"error ({err.strerror or err})")
        saved = f"{self.samples} sample{'' if self.samples == 1 else 's'} saved"
        return RecorderError(f"{what} while writing {self.path}: {saved}")
