"""ReplaySource: a recording played back through the same ``open/read/close`` protocol as NVML.

``read()`` returns the recorded samples in order (stale ones still marked stale) and raises
:class:`EndOfRecording` after the last; a :class:`~vramtop.sources.poller.DeadlineReader` turns
that into the last sample marked stale with "end of recording". A replay UI also gets random
access (``len``, ``position``, ``seek``, ``seek_time``, indexing), the events, and the problems
found while loading. ``refresh()`` picks up samples appended to a recording still being written.

The samples come as the live monitor received them: the agents' events (OOMs) recorded between
two samples travel inside the sample that followed them.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import time
from collections.abc import Callable, Sequence

from vramtop.errors import EXIT_FAILURE, VramtopError
from vramtop.model import Sample
from vramtop.recording import End, Event, Header, Problem, Recording, RecordingReader


class EndOfRecording(VramtopError):
    """``read()`` was called after the last sample."""


class ReplaySource:
    """Samples from a recording file (plain, xz or gzip), or from an already loaded Recording."""

    def __init__(self, recording: str | os.PathLike[str] | Recording, *,
                 prepare: Callable[[Sequence[Sample]], Sequence[Sample]] | None = None) -> None:
        """``prepare`` rewrites the samples once loaded (and again when ``refresh`` finds more),
        e.g. to add what a reader of the whole recording knows; it must keep their number."""
        self._prepare = prepare
        self._recording: Recording | None = None
        self._samples: Sequence[Sample] = ()
        if isinstance(recording, Recording):
            self._load(recording)
            self.path = recording.path
        else:
            self.path = os.fspath(recording)
        self._reader: RecordingReader | None = None
        self._position = 0
        self.grew_at = time.time()  # when the recording last grew, as far as is known (wall clock)

    def _load(self, recording: Recording) -> None:
        self._recording = recording
        samples = recording.samples_with_events()
        self._samples = self._prepare(samples) if self._prepare is not None else samples

    # -- Source protocol ------------------------------------------------------------------

    def open(self) -> None:
        """Load the recording. Raises RecordingError (unreadable) or SchemaError (too new)."""
        if self._recording is not None:
            return
        reader = RecordingReader(self.path)
        try:
            reader.poll()
        except BaseException:
            reader.close()
            raise
        self._load(reader.result())
        if reader.end is None and not reader.compressed:
            self._reader = reader  # maybe still being written: refresh() reads on
            with contextlib.suppress(OSError):  # a writer that died long ago shows in the file's age
                self.grew_at = os.stat(self.path).st_mtime
        else:
            reader.close()

    def read(self) -> Sample:
        """The next sample; EndOfRecording after the last one."""
        samples = self.samples
        if self._position >= len(samples):
            raise EndOfRecording(f"end of recording ({len(samples)} samples)", EXIT_FAILURE)
        sample = samples[self._position]
        self._position += 1
        return sample

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # -- random access --------------------------------------------------------------------

    @property
    def samples(self) -> Sequence[Sample]:
        if self._recording is None:
            self.open()
        return self._samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    @property
    def position(self) -> int:
        """Index of the sample the next ``read()`` returns."""
        return self._position

    @property
    def at_end(self) -> bool:
        return self._position >= len(self)

    def seek(self, index: int) -> None:
        """Make ``read()`` return sample ``index`` next (clamped to 0..len; negative counts
        from the end, like a list index)."""
        if index < 0:
            index += len(self)
        self._position = min(max(index, 0), len(self))

    def seek_time(self, when: float) -> int:
        """Seek to the last sample taken at or before ``when`` (the first if none); its index."""
        times = [s.time for s in self.samples]
        index = max(bisect.bisect_right(times, when) - 1, 0)
        self.seek(index)
        return self._position

    def refresh(self) -> int:
        """Read what the writer appended since loading; the number of new samples."""
        if self._reader is None:
            return 0
        reader = self._reader
        before = len(reader.events), len(reader.problems)
        added = reader.poll()
        # Samples are rebuilt (events put inside them, ``prepare``) only when something came.
        if added or reader.end is not None or (len(reader.events), len(reader.problems)) != before:
            self._load(reader.result())
            self.grew_at = time.time()
        if reader.end is not None:
            self.close()
        return added

    @property
    def growing(self) -> bool:
        """The recording may still grow: no end record yet, and a plain file (a compressed one
        is written whole, at the recorder's close)."""
        return self._reader is not None

    # -- what was recorded ----------------------------------------------------------------

    @property
    def recording(self) -> Recording:
        if self._recording is None:
            self.open()
        assert self._recording is not None
        return self._recording

    @property
    def header(self) -> Header | None:
        return self.recording.header

    @property
    def events(self) -> tuple[Event, ...]:
        return self.recording.events

    @property
    def end(self) -> End | None:
        return self.recording.end

    @property
    def problems(self) -> tuple[Problem, ...]:
        return self.recording.problems
