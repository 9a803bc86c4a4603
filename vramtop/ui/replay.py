"""The monitor over a recording: the same screen, driven by a playhead instead of a poller.

The playhead is a :class:`~vramtop.sources.replay.ReplaySource`'s position: every sample shown
is read from it and taken in as the live monitor takes a sample (history, risk rules, advice).
With ``follow``, the source is refreshed as its recorder appends to it, as ``tail -f`` does.
"""

from __future__ import annotations

import copy
import itertools
import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.binding import Binding

from vramtop.analysis.history import History
from vramtop.analysis.risk import RiskTracker, RiskWarning
from vramtop.analysis.thresholds import Thresholds
from vramtop.model import Sample
from vramtop.ui.app import SampleArrived, VramtopApp
from vramtop.units import clock

if TYPE_CHECKING:  # the command builds the source: the UI never reads a recording itself
    from vramtop.sources.replay import ReplaySource

SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
# A copy of the risk tracker is kept every this many samples: a jump back replays at most
# this many samples through the rules (~0.1 ms each) instead of the whole recording.
CHECKPOINT_EVERY = 256


def _peak_index(samples: Sequence[Sample]) -> int:
    """The sample where the GPUs together used the most memory."""
    return max(range(len(samples)), key=lambda i: sum(g.memory_used or 0 for g in samples[i].gpus))


def first_busy_index(samples: Sequence[Sample], lead: int = 2) -> int:
    """A few samples before the first process appears on a GPU (0 if there is none): where a
    recording that began before its program starts to say something."""
    busy = next((i for i, s in enumerate(samples) if any(g.processes for g in s.gpus) or s.agents), 0)
    return max(0, busy - lead)


class RiskTimeline:
    """The monitor's risk rules run along the whole recording, ahead of the playhead: the
    warnings in force at every sample (for "next warning") and copies of the tracker from which
    the playhead's own tracker is rebuilt after a jump."""

    def __init__(self, thresholds: Thresholds | None) -> None:
        self._head = RiskTracker(thresholds)
        self.warnings: list[tuple[RiskWarning, ...]] = []  # in force at each sample
        self._checkpoints: list[RiskTracker] = []  # [k]: the tracker before sample k * CHECKPOINT_EVERY

    def extend(self, samples: Sequence[Sample]) -> None:
        """Take the samples not seen yet (a recording still being written grows)."""
        for sample in samples[len(self.warnings):]:
            if len(self.warnings) % CHECKPOINT_EVERY == 0:
                self._checkpoints.append(copy.deepcopy(self._head))
            self.warnings.append(self._head.update(sample))

    def tracker_before(self, index: int) -> tuple[RiskTracker, int]:
        """A tracker as it was before some sample at or before ``index``, and that sample's index."""
        k = max(0, min(index // CHECKPOINT_EVERY, len(self._checkpoints) - 1))
        return copy.deepcopy(self._checkpoints[k]), k * CHECKPOINT_EVERY


class ReplayApp(VramtopApp):
    """Pause, step, jump to warnings and to the peak, change the speed; follow a growing file."""

    live = False

    # Added to the monitor's own keys (Textual merges bindings along the class hierarchy).
    # Priority: the process table would otherwise take the arrows, Home and End.
    BINDINGS = [
        Binding("right,l", "step(1)", "Step", key_display="→", priority=True),
        Binding("left,h", "step(-1)", "Back", key_display="←", priority=True),
        Binding("plus,equals_sign", "speed(1)", "Fast", key_display="+"),
        Binding("minus", "speed(-1)", "Slow", key_display="-"),
        Binding("w", "next_warning", "Warning"),
        Binding("P", "peak", "Peak"),
        Binding("home", "jump(0)", "Start", show=False, priority=True),
        Binding("end", "jump(-1)", "End", show=False, priority=True),
        # An 80-column footer has room for the replay's own keys: sorting and the GPU filter
        # still work, listed in the help.
        Binding("s", "cycle_sort", "Sort", show=False),
        Binding("g", "next_gpu", "GPU", show=False),
        Binding("pagedown", "scroll_detail(1)", "More", key_display="PgDn", show=False, priority=True),
        # A recording's PIDs are not this machine's processes: never signal them.
        Binding("t", "signal('SIGTERM')", "Term", show=False),
        Binding("k", "signal('SIGKILL')", "Kill", show=False),
    ]

    def __init__(self, source: ReplaySource, *, title: str, interval: float, speed: float = 1.0,
                 notice: str | None = None, thresholds: Thresholds | None = None, start: int = 0,
                 follow: bool = False, stall_after: float | None = None, **kwargs: Any) -> None:
        """``follow``: start at the newest sample and show new ones as they are appended;
        ``stall_after``: seconds without one before the writer is said to have died."""
        super().__init__(source, interval=interval, poll=False, notice=notice,
                         thresholds=thresholds, **kwargs)
        self.source = source
        self.recording_title = title
        self.speed = min(SPEEDS, key=lambda s: abs(s - speed))
        self.follow = follow
        self._start = -1 if follow else start
        self._recording_notice = notice
        self._stall_after = stall_after if stall_after is not None else max(10.0, 5 * interval)
        self._timeline = RiskTimeline(thresholds)
        self._timeline.extend(source.samples)
        self._timer: Any = None

    @property
    def position(self) -> int:
        """Index of the sample on screen (-1 before the first): the one the source read last."""
        return self.source.position - 1

    @property
    def following(self) -> bool:
        """Showing each new sample of a recording still being written as it arrives."""
        return (self.follow and self.source.growing and not self.paused
                and self.position >= len(self.source) - 1)

    def on_mount(self) -> None:
        super().on_mount()
        if len(self.source):
            self._show(self._start if self._start >= 0 else len(self.source) - 1)
        self._restart_timer()
        if self.follow:
            self.set_interval(min(1.0, self.interval / 2), self._refresh)
            self._say_how_following()
            self.render_view()

    def on_unmount(self) -> None:
        super().on_unmount()
        self.source.close()

    def _restart_timer(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_interval(max(0.02, self.interval / self.speed), self._advance)

    def _advance(self) -> None:
        if not self.paused and self.position < len(self.source) - 1:
            self._show(self.position + 1)

    def _show(self, index: int) -> None:
        """Put the playhead on ``index``: the screen, history and warnings as they were then."""
        if not len(self.source):
            return  # followed from before its first sample
        index = max(0, min(index, len(self.source) - 1))
        if index != self.position + 1:  # a jump: the history and the risk that lead here
            self._rewind(index)
        self.source.seek(index)
        self.take(self.source.read())
        self.sample = self.latest
        self.render_view()

    def _rewind(self, index: int) -> None:
        samples = self.source.samples
        self.history = History(self.history.maxlen)
        for sample in samples[max(0, index - self.history.maxlen):index]:
            self.history.add(sample)
        self.risk, first = self._timeline.tracker_before(index)
        for sample in samples[first:index]:
            self.risk.update(sample)

    def on_sample_arrived(self, message: SampleArrived) -> None:
        """Not used: the playhead reads the source."""

    # -- following a recording still being written -------------------------------------------

    def _refresh(self) -> None:
        """Read what the recorder appended; while following, show it at once."""
        was_following = self.following
        added = self.source.refresh()
        if added:
            self._timeline.extend(self.source.samples)
            if was_following or (self.position < 0 and not self.paused):
                while not self.source.at_end:  # each one, as the live monitor would have
                    self.take(self.source.read())
                self.sample = self.latest
        notice = self.notice
        self._say_how_following()
        if added or self.notice != notice:
            self.render_view()

    def _say_how_following(self) -> None:
        """The banner: following, the recording ended, or its writer seems to have died."""
        end = self.source.end
        if end is not None:
            state = f"The recording ended: the recorder closed it after {end.samples} samples" + (
                f" ({end.reason})" if end.reason else "")
        elif time.time() - self.source.grew_at > self._stall_after:
            state = (f"No sample since {clock(self.source.grew_at)} and no end record: "
                     "the recorder seems to have died")
        else:
            state = "Following the recording as it is written · space, ← stop · End resumes"
        self.notice = " · ".join(n for n in (state, self._recording_notice) if n)

    def status_extra(self) -> Text:
        t = Text(f" REPLAY {self.position + 1}/{len(self.source)} ×{self.speed:g}", style="bold magenta")
        if self.following:
            t.append(" FOLLOWING", style="bold green")
        elif self.position >= len(self.source) - 1 and not (self.follow and self.source.growing):
            t.append(" end", style="magenta")
        return t

    # -- keys --------------------------------------------------------------------------------

    def action_toggle_pause(self) -> None:
        if not self.follow and not self.paused and self.position >= len(self.source) - 1:
            self._show(0)  # at the end, "play" starts again
        super().action_toggle_pause()

    def action_step(self, delta: int) -> None:
        self.paused = True
        self._show(self.position + delta)

    def action_jump(self, index: int) -> None:
        if index < 0 and self.follow:
            self.paused = False  # the end of a recording being written: follow it again
        self._show(index if index >= 0 else len(self.source) - 1)

    def action_speed(self, direction: int) -> None:
        i = SPEEDS.index(self.speed)
        self.speed = SPEEDS[max(0, min(len(SPEEDS) - 1, i + direction))]
        self._restart_timer()
        self.render_view()

    def action_next_warning(self) -> None:
        """The next sample at which a warning appears (wrapping to the first)."""
        timeline = self._timeline.warnings

        def raised(i: int) -> bool:
            before = {w.key for w in timeline[i - 1]} if i else set()
            return any(w.key not in before for w in timeline[i])

        n = len(timeline)
        for offset in range(1, n + 1):
            i = (self.position + offset) % n
            if raised(i):
                self.paused = True
                self._show(i)
                return
        self.notify("no warning in this recording")

    def action_signal(self, name: str) -> None:
        self.notify("this is a recording: its processes are not signalled", severity="warning")

    def action_peak(self) -> None:
        if len(self.source):
            self.paused = True
            self._show(_peak_index(self.source.samples))


def replay_interval(samples: Sequence[Sample], recorded: float | None) -> float:
    """Seconds between samples as recorded: the header's interval, else their median spacing
    to a tenth of a second (1 s for a single sample)."""
    if recorded:
        return recorded
    gaps = [b.time - a.time for a, b in itertools.pairwise(samples) if b.time > a.time]
    return max(0.1, round(statistics.median(gaps), 1)) if gaps else 1.0
