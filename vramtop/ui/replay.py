"""The monitor over a recording: the same screen, driven by a playhead instead of a poller."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual.binding import Binding

from vramtop.analysis.advice import Advice
from vramtop.analysis.diagnosis import with_histories
from vramtop.analysis.history import History
from vramtop.analysis.join import join
from vramtop.analysis.risk import advice_for, warnings_over
from vramtop.analysis.thresholds import Thresholds
from vramtop.model import Sample
from vramtop.ui.app import SampleArrived, VramtopApp

SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


class _NoSource:
    """A replay never polls: samples come from the recording, in order, by the playhead."""

    def open(self) -> None:
        pass

    def read(self) -> Sample:
        raise RuntimeError("a replay is fed by its playhead")

    def close(self) -> None:
        pass


def _peak_index(samples: Sequence[Sample]) -> int:
    """The sample where the GPUs together used the most memory."""
    return max(range(len(samples)), key=lambda i: sum(g.memory_used or 0 for g in samples[i].gpus))


def first_busy_index(samples: Sequence[Sample], lead: int = 2) -> int:
    """A few samples before the first process appears on a GPU (0 if there is none): where a
    recording that began before its program starts to say something."""
    busy = next((i for i, s in enumerate(samples) if any(g.processes for g in s.gpus) or s.agents), 0)
    return max(0, busy - lead)


class ReplayApp(VramtopApp):
    """Pause, step, jump to warnings and to the peak, change the speed."""

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

    def __init__(self, samples: Sequence[Sample], *, title: str, interval: float, speed: float = 1.0,
                 notice: str | None = None, thresholds: Thresholds | None = None, events: Sequence[Any] = (),
                 start: int = 0, **kwargs: Any) -> None:
        super().__init__(_NoSource(), interval=interval, poll=False, notice=notice,
                         thresholds=thresholds, **kwargs)
        self.samples = with_histories(samples)  # an older agent's OOM reports, diagnosed as in `report`
        self.recording_title = title
        self.position = -1
        self._start = start
        self.speed = min(SPEEDS, key=lambda s: abs(s - speed))
        # The warnings in force at every sample, computed once (the rules are pure).
        self._timeline = warnings_over(self.samples, events, thresholds)
        self._timer: Any = None

    def on_mount(self) -> None:
        super().on_mount()
        self._show(self._start)
        self._restart_timer()

    def _restart_timer(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_interval(max(0.02, self.interval / self.speed), self._advance)

    def _advance(self) -> None:
        if not self.paused and self.position < len(self.samples) - 1:
            self._show(self.position + 1)

    def _show(self, index: int) -> None:
        """Put the playhead on ``index``: the screen, history and warnings as they were then."""
        index = max(0, min(index, len(self.samples) - 1))
        if index != self.position + 1:  # a jump: rebuild the history that leads here
            self.history = History(self.history.maxlen)
            for sample in self.samples[max(0, index - self.history.maxlen):index]:
                self.history.add(sample)
        self.position = index
        self.warnings = self._timeline[index]
        sample = self.samples[index]
        self.history.add(sample)
        self.latest = sample
        self.sample = sample
        self.render_view()

    def on_sample_arrived(self, message: SampleArrived) -> None:
        """Not used: the playhead sets the sample (a recording's warnings are precomputed)."""

    def advice(self, sample: Sample, pid: int, uuid: str) -> tuple[Advice, ...]:
        """From the sample under the playhead alone (the live tracker is not fed in a replay)."""
        match = join(sample).of_pid(pid, uuid)
        return advice_for(sample, match.agent, match.device, self.risk.thresholds) if match else ()

    def status_extra(self) -> Text:
        t = Text(f" REPLAY {self.position + 1}/{len(self.samples)} ×{self.speed:g}", style="bold magenta")
        if self.position >= len(self.samples) - 1:
            t.append(" end", style="magenta")
        return t

    # -- keys --------------------------------------------------------------------------------

    def action_toggle_pause(self) -> None:
        if not self.paused and self.position >= len(self.samples) - 1:
            self._show(0)  # at the end, "play" starts again
        super().action_toggle_pause()

    def action_step(self, delta: int) -> None:
        self.paused = True
        self._show(self.position + delta)

    def action_jump(self, index: int) -> None:
        self._show(index if index >= 0 else len(self.samples) - 1)

    def action_speed(self, direction: int) -> None:
        i = SPEEDS.index(self.speed)
        self.speed = SPEEDS[max(0, min(len(SPEEDS) - 1, i + direction))]
        self._restart_timer()
        self.render_view()

    def action_next_warning(self) -> None:
        """The next sample at which a warning appears (wrapping to the first)."""
        def raised(i: int) -> bool:
            before = {w.key for w in self._timeline[i - 1]} if i else set()
            return any(w.key not in before for w in self._timeline[i])

        n = len(self.samples)
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
        self.paused = True
        self._show(_peak_index(self.samples))


def replay_interval(samples: Sequence[Sample], recorded: float | None) -> float:
    """Seconds between samples as recorded: the header's interval, else their median spacing
    to a tenth of a second (1 s for a single sample)."""
    if recorded:
        return recorded
    gaps = [b.time - a.time for a, b in itertools.pairwise(samples) if b.time > a.time]
    return max(0.1, round(statistics.median(gaps), 1)) if gaps else 1.0
