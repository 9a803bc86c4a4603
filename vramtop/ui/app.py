"""The live monitor. It is handed a source; a poller thread posts each frozen sample to it."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.css.query import NoMatches
from textual.events import Resize
from textual.message import Message

from vramtop.analysis.history import History
from vramtop.analysis.thresholds import Thresholds
from vramtop.model import Sample
from vramtop.sources.poller import DeadlineReader, Poller, Source
from vramtop.ui import collector
from vramtop.ui.widgets.detail import ProcessDetail
from vramtop.ui.widgets.gpus import GpuList
from vramtop.ui.widgets.keys import KeyBar
from vramtop.ui.widgets.panel import Panel
from vramtop.ui.widgets.processes import SORT_NAMES, ProcessTable
from vramtop.ui.widgets.ranks import RankView
from vramtop.ui.widgets.warnings import WarningList, render_warning_details
from vramtop.units import clock, fmt_bytes

if TYPE_CHECKING:
    from vramtop.analysis.advice import Advice
    from vramtop.analysis.jobs import Job
    from vramtop.analysis.risk import RiskTracker, RiskWarning

# Below this many columns the layout switches to the compact form (a tmux pane, 80x24).
NARROW_WIDTH = 110


class SampleArrived(Message):
    """A new sample. A newer one replaces an unprocessed older one: a slow terminal never lags."""

    def __init__(self, sample: Sample) -> None:
        super().__init__()
        self.sample = sample

    def can_replace(self, message: Message) -> bool:
        # Never drop a sample that carries events (an OOM's post-mortem): it is shown once.
        return isinstance(message, SampleArrived) and not message.sample.events


class SourceFailed(Message):
    """The source produced nothing usable (and there is no earlier sample to show)."""

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class VramtopApp(App[None]):
    CSS_PATH = "vramtop.tcss"
    TITLE = "vramtop"
    # Textual's command palette offers nothing vramtop's keys do not, and its footer entry
    # pushed vramtop's own keys off an 80-column footer.
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        # As in htop and nvitop: Ctrl-C quits (Textual would ask to press Ctrl-Q instead).
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("W", "warnings", "Warnings", show=False),
        Binding("space,p", "toggle_pause", "Pause", key_display="space"),
        Binding("s", "cycle_sort", "Sort"),
        Binding("g", "next_gpu", "GPU"),
        Binding("G", "all_gpus", "All GPUs", show=False),
        # Shown in the help and in the job's header line, which appears only with a job.
        Binding("r", "toggle_ranks", "Ranks", show=False),
        Binding("t", "signal('SIGTERM')", "Term"),
        Binding("k", "signal('SIGKILL')", "Kill"),
        # The process table has the focus (arrows select); these scroll the details below it.
        Binding("pagedown", "scroll_detail(1)", "More", key_display="PgDn", priority=True),
        Binding("pageup", "scroll_detail(-1)", "Details up", key_display="PgUp", show=False, priority=True),
    ]
    live = True  # a replay shows a recording: its PIDs and paths are another machine's

    def __init__(self, source: Source, *, interval: float = 1.0, deadline: float = 5.0,
                 poll: bool = True, focus_pid: int | None = None, notice: str | None = None,
                 thresholds: Thresholds | None = None, reader: DeadlineReader | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._thresholds = thresholds
        self._risk: RiskTracker | None = None
        # The first sample's GPUs and processes are drawn before the risk rules, the job grouping
        # and the details see it (their imports alone are ~5-10 ms of a start): those follow
        # right after the first frame.
        self._unanalysed: Sample | None = None
        self.warnings: tuple[RiskWarning, ...] = ()
        self.focus_pid = focus_pid  # `vramtop attach PID`
        self.notice = notice  # a standing message, e.g. how to enable the agent
        self._source = source
        self._reader = reader  # one that may have a read under way already (the first sample)
        self.interval = interval
        self._deadline = deadline
        self._poll = poll
        self._poller: Poller | None = None
        self.sample: Sample | None = None  # the sample on screen
        self.latest: Sample | None = None  # the newest sample, shown or not (pause)
        self.history = History()
        self.paused = False
        self.sort = SORT_NAMES[0]
        self.gpu_filter: str | None = None  # a GPU UUID, or None for all
        self.narrow = False
        self.ranks_expanded = False  # the rank view of a distributed job, in place of the GPU list
        self.failure: str | None = None
        # What the details show: the sample (compared by identity: comparing samples costs more
        # than drawing), the selected row, the layout.
        self._detail_of: tuple[Sample, str | None, bool, int] | None = None

    def compose(self) -> ComposeResult:
        yield Panel(id="status")
        yield Panel(id="banner")
        yield GpuList(id="gpus")
        yield RankView(id="ranks")
        yield WarningList(id="warnings")
        yield ProcessTable(id="procs")
        with VerticalScroll(id="detail-box"):
            yield ProcessDetail(id="detail")
        yield KeyBar(id="keys")

    def on_mount(self) -> None:
        self.query_one(ProcessTable).focus_pid = self.focus_pid
        self.query_one(KeyBar).show_keys(self.shown_keys())
        self._set_narrow(self.size.width)
        self.render_view()
        if self._poll:
            self._poller = Poller(
                self._reader or DeadlineReader(self._source, self._deadline),
                self.interval,
                deliver=lambda s: void(self.post_message(SampleArrived(s))),
                on_error=lambda e: void(self.post_message(SourceFailed(e.message))),
            )
            self._poller.start()

    def shown_keys(self) -> list[tuple[str, str]]:
        """The bindings marked to be shown, as Textual's Footer orders them: (key, description)."""
        keys: list[tuple[str, str]] = []
        actions: set[str] = set()
        for _, binding, _, _ in self.screen.active_bindings.values():
            if binding.show and binding.action not in actions:
                actions.add(binding.action)
                keys.append((self.get_key_display(binding), binding.description))
        return keys

    def on_unmount(self) -> None:
        if self._poller is not None:
            self._poller.stop()

    # -- data in -----------------------------------------------------------------------------

    def on_sample_arrived(self, message: SampleArrived) -> None:
        if self.latest is None:
            self._draw_first(message.sample)
        else:
            self.take(message.sample)
        self.failure = None
        self._resume_collector_once_drawn()
        if self.paused:
            return
        self.sample = message.sample
        self.render_view()

    @property
    def risk(self) -> RiskTracker:
        if self._risk is None:
            from vramtop.analysis.risk import RiskTracker

            self._risk = RiskTracker(self._thresholds)
        return self._risk

    @risk.setter
    def risk(self, tracker: RiskTracker) -> None:  # a replay's jump puts the tracker of that time
        self._risk = tracker

    def take(self, sample: Sample) -> None:
        """The next sample in time order into the history and the risk rules (shown or not):
        the one way the monitor and a replay's playhead learn from a sample."""
        self._analyse_first()  # in time order, should a second sample come before the first frame
        self.history.add(sample)
        self.warnings = self.risk.update(sample)  # stale data counts for nothing there
        self.latest = sample

    def _draw_first(self, sample: Sample) -> None:
        """The live monitor's first sample: into the history now, into the rules after it is drawn."""
        self.history.add(sample)
        self.latest = self._unanalysed = sample
        self.call_after_refresh(self._after_first_frame)

    def _analyse_first(self) -> None:
        if self._unanalysed is not None:
            self.warnings = self.risk.update(self._unanalysed)
            self._unanalysed = None

    def _after_first_frame(self) -> None:
        """The first sample into the rules, and drawn again with its warnings, ranks and details."""
        if self._unanalysed is not None:
            self._analyse_first()
            self.render_view()

    def on_source_failed(self, message: SourceFailed) -> None:
        self.failure = message.error
        self._resume_collector_once_drawn()
        self.render_view()

    def _resume_collector_once_drawn(self) -> None:
        # The live command paused garbage collection for its start (vramtop.ui.collector): back
        # on once the first sample, or the failure to read one, is on screen.
        if collector.paused():
            self.call_after_refresh(collector.resume)

    def on_resize(self, event: Resize) -> None:
        self._set_narrow(event.size.width)
        self.render_view()

    def on_data_table_row_highlighted(self) -> None:
        if self.sample is not None:
            self._show_detail(self.sample)

    def _set_narrow(self, width: int) -> None:
        self.narrow = width < NARROW_WIDTH
        self.set_class(self.narrow, "narrow")

    # -- rendering ---------------------------------------------------------------------------

    def render_view(self) -> None:
        try:
            status = self.query_one("#status", Panel)
        except NoMatches:
            return  # quitting: the poller posted a message just before the widgets were removed
        status.redraw(self._status_line())
        banner = self.query_one("#banner", Panel)
        problem = self._problem()
        banner.display = problem is not None or self.notice is not None
        banner.set_class(problem is None, "notice")
        banner.redraw(Text(f" ⚠ {problem}" if problem else f" ℹ {self.notice}" if self.notice else ""))
        sample = self.sample
        if sample is None:
            self.query_one(GpuList).waiting()
            return
        found = self._jobs(sample)
        ranks = self.query_one(RankView)
        ranks.show(found, self.ranks_expanded, self.narrow)
        gpu_list = self.query_one(GpuList)
        # The rank lines name each rank's GPU and its peak: the GPU list makes room for them.
        gpu_list.display = not (self.ranks_expanded and ranks.display)
        gpus = tuple(g for g in sample.gpus if self.gpu_filter in (None, g.uuid))
        gpu_list.show(gpus, self.history, self.narrow, self.gpu_filter)
        shown = tuple(w for w in self.warnings if self.gpu_filter in (None, w.gpu_uuid))
        self.query_one(WarningList).show(shown, self.narrow)
        table = self.query_one(ProcessTable)
        table.show(sample, self.gpu_filter, self.sort, self.narrow)
        self._show_detail(sample)

    def _show_detail(self, sample: Sample) -> None:
        if self._unanalysed is not None:
            return  # the first frame: the details (an agent's bill, its advice) come with the rules
        key = self.query_one(ProcessTable).selected_key()
        before = self._detail_of
        if before is not None and before[0] is sample and before[1:] == (key, self.narrow, self.size.width):
            return  # already shown (a rebuilt table announces its cursor row again)
        self._detail_of = (sample, key, self.narrow, self.size.width)
        advice: tuple[Advice, ...] = ()
        if key is not None:
            uuid, _, pid = key.rpartition(":")
            advice = self.advice(sample, int(pid), uuid)
        detail = self.query_one(ProcessDetail)
        detail.show(sample, key, self.narrow, advice, live=self.live)
        self.set_class(detail.has_class("agent"), "agent-view")  # the layout makes room for the bill

    def _jobs(self, sample: Sample) -> tuple[Job, ...]:
        if self._unanalysed is not None:
            return ()  # the first frame: a job's header and ranks come with the warnings
        from vramtop.analysis.jobs import jobs

        return jobs(sample)

    def advice(self, sample: Sample, pid: int, uuid: str) -> tuple[Advice, ...]:
        """The ranked advice for a process (PID as NVML reports it) on a GPU."""
        return self.risk.advice(pid, uuid)

    def status_extra(self) -> Text:
        """Shown right after the name in the status line (a replay's playhead)."""
        return Text()

    def _problem(self) -> str | None:
        if self.failure and self.sample is None:
            return self.failure
        if self.sample is not None and self.sample.error:
            since = self.sample.stale_since or self.sample.time
            return f"{self.sample.error} — showing data from {clock(since)}"
        if self.sample is not None and self.sample.problems:
            return " · ".join(self.sample.problems)
        return None

    def _status_line(self) -> Text:
        # What must never be cut off at 80 columns comes first: PAUSED and the GPU filter.
        t = Text()
        t.append(" vramtop ", style="bold reverse")
        t.append_text(self.status_extra())
        if self.paused:
            t.append(" PAUSED ", style="bold black on yellow")
        sample = self.sample
        if self.gpu_filter and sample is not None:
            gpu = sample.gpu(self.gpu_filter)
            t.append(f"  GPU {gpu.index if gpu else '?'} only", style="cyan")
        t.append("  sort ", style="dim")
        t.append(self.sort)
        if sample is not None:
            host = sample.host
            if not self.narrow:
                t.append(f"  {host.hostname}")
                if sample.driver_version:
                    t.append(f"  driver {sample.driver_version}", style="dim")
                if sample.cuda_driver_version:
                    t.append(f"  CUDA {sample.cuda_driver_version}", style="dim")
            t.append("  RAM ", style="dim")
            t.append(f"{fmt_bytes(host.memory_used)}/{fmt_bytes(host.memory_total)}")
            if host.swap_used:
                t.append(f"  swap {fmt_bytes(host.swap_used)}", style="yellow")
            t.append(f"  {clock(sample.time)}", style="dim")
        t.append(f"  every {self.interval:g}s", style="dim")
        return t

    # -- actions -----------------------------------------------------------------------------

    def action_scroll_detail(self, direction: int) -> None:
        # Over the main screen a modal (help, warnings) scrolls instead: these keys come here
        # first, ahead of the process table that would take them as its own.
        if self.screen is not self.screen_stack[0]:
            boxes = self.screen.query(VerticalScroll)
            box = boxes.first() if boxes else None
            if box is None:
                return
        else:
            box = self.query_one("#detail-box", VerticalScroll)
        page = max(1, box.scrollable_content_region.height - 1)
        box.scroll_relative(y=direction * page, animate=False)

    def action_help(self) -> None:
        # One help screen for the app's life: Textual keeps caches of every closed screen's
        # widgets (up to a thousand), so a new one per `?` grew the monitor by ~0.13 MiB a time.
        if not self.is_screen_installed("help"):
            from vramtop.ui.screens import HelpScreen

            self.install_screen(HelpScreen(), "help")
        self.push_screen("help")

    def action_warnings(self) -> None:
        from vramtop.ui.screens import WarningsScreen

        self.push_screen(WarningsScreen(render_warning_details(self.warnings)))

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            # Show what arrived during the pause now: the next sample may be a long interval away.
            self.sample = self.latest
        self.render_view()

    def action_cycle_sort(self) -> None:
        self.sort = SORT_NAMES[(SORT_NAMES.index(self.sort) + 1) % len(SORT_NAMES)]
        self.render_view()

    def action_next_gpu(self) -> None:
        """All GPUs → GPU 0 → GPU 1 → … → all GPUs."""
        if self.sample is None or not self.sample.gpus:
            return
        uuids = [g.uuid for g in self.sample.gpus]
        position = uuids.index(self.gpu_filter) + 1 if self.gpu_filter in uuids else 0
        self.gpu_filter = uuids[position] if position < len(uuids) else None
        self.render_view()

    def action_toggle_ranks(self) -> None:
        """The ranks of a distributed job, a line each (the GPU list gives way), or folded back."""
        if self.sample is None or not any(len(j.ranks) >= 2 for j in self._jobs(self.sample)):
            self.notify("no distributed job here: no agent reports two ranks of one job", severity="warning")
            return
        self.ranks_expanded = not self.ranks_expanded
        self.render_view()

    def action_all_gpus(self) -> None:
        self.gpu_filter = None
        self.render_view()

    def action_signal(self, name: str) -> None:
        key = self.query_one(ProcessTable).selected_key()
        if self.sample is None or key is None:
            self.notify("select a process first", severity="warning")
            return
        uuid, _, pid_text = key.rpartition(":")
        gpu = self.sample.gpu(uuid)
        if gpu is not None and gpu.host:
            self.notify(f"PID {pid_text} runs on {gpu.host}: another host's processes are shown, never signalled",
                        severity="error")
            return
        proc = next((p for p in gpu.processes if p.pid == int(pid_text)), None) if gpu else None
        if proc is None:
            return
        # The screens only keys open, and psutil's process lookups: off the way to the first frame.
        from vramtop.processes import send_signal, signal_refusal
        from vramtop.ui.screens import ConfirmScreen

        refusal = signal_refusal(proc.pid, proc.create_time)
        if refusal:
            self.notify(refusal, severity="error")
            return
        signum = signal.Signals[name]
        command = proc.command or proc.name or "?"
        if len(command) > 60:
            command = command[:59] + "…"

        def answered(yes: bool | None) -> None:
            if yes:
                self.notify(send_signal(proc.pid, proc.create_time, signum))

        self.push_screen(ConfirmScreen(f"Send {name} to PID {proc.pid}?\n{command}"), answered)




def void(_: object) -> None:
    """Drop a result (post_message says whether the message was queued; the poller does not care)."""
