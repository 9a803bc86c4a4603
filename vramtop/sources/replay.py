"""ReplaySource: a recording played back through the same ``open/read/close`` protocol as NVML.

``read()`` returns the recorded samples in order (stale ones still marked stale) and raises
:class:`EndOfRecording` after the last; a :class:`~vramtop.sources.poller.DeadlineReader` turns
that into the last sample marked stale with "end of recording". A replay UI also gets random
access (``len``, ``position``, ``seek``, ``seek_time``, indexing), the events, and the problems
found while loading. ``refresh()`` picks up samples appended to a recording still being written.
"""

from __future__ import annotations

import bisect
import os

from vramtop.errors import EXIT_FAILURE, VramtopError
from vramtop.model import Sample
from vramtop.recording import End, Event, Header, Problem, Recording, RecordingReader


class EndOfRecording(VramtopError):
    """``read()`` was called after the last sample."""


class ReplaySource:
    """Samples from a recording file (plain, xz or gzip), or from an already loaded Recording."""

    def __init__(self, recording: str | os.PathLike[str] | Recording) -> None:
        if isinstance(recording, Recording):
            self._recording: Recording | None = recording
            self.path = recording.path
        else:
            self._recording = None
            self.path = os.fspath(recording)
        self._reader: RecordingReader | None = None
        self._position = 0

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
        self._recording = reader.result()
        if reader.end is None and not reader.compressed:
            self._reader = reader  # maybe still being written: refresh() reads on
        else:
            reader.close()

    def read(self) -> Sample:
        """The next sample; EndOfRecording after the last one."""
        samples = self.recording.samples
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

    def __len__(self) -> int:
        return len(self.recording.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.recording.samples[index]

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
        times = [s.time for s in self.recording.samples]
        index = max(bisect.bisect_right(times, when) - 1, 0)
        self.seek(index)
        return self._position

    def refresh(self) -> int:
        """Read what the writer appended since loading; the number of new samples."""
        if self._reader is None:
            return 0
        added = self._reader.poll()
        self._recording = self._reader.result()
        if self._reader.end is not None:
            self.close()
        return added

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
