"""One ``vramtop record`` session: the sampling loop that feeds the recorder, the agents' events
and the warnings written as events, the command's last words collected after it exits, and how
the file is closed."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from vramtop.child import Signals, alive, exit_code, start_failure_code, start_with_agent
from vramtop.codec import to_dict
from vramtop.errors import EXIT_OK, VramtopError
from vramtop.model import AgentEvent

if TYPE_CHECKING:
    from vramtop.analysis.risk import RiskTracker, RiskWarning
    from vramtop.model import Sample
    from vramtop.sinks.recorder import Recorder
    from vramtop.sources.poller import DeadlineReader

TICK_S = 0.1  # how often the loop looks at signals and the command between samples
SETTLE_S = 1.0  # after the command ends, how long its agents' last frames may take to arrive

WarningKey = tuple[str, str, int | None]


def only_process(sample: Sample, pid: int, job: bool = False) -> Sample:
    """``sample`` with the GPUs' own figures, and only this process's rows, agent and events; with
    ``job``, those of every rank of its distributed job (analysis/jobs.py) too."""
    from vramtop.analysis.join import join

    pids = {pid}
    if job:
        from vramtop.analysis.jobs import job_with, jobs

        found = job_with(jobs(sample), pid)
        if found is not None:
            pids.update(r.pid for r in found.ranks)
    gpus = tuple(replace(g, processes=tuple(p for p in g.processes if p.pid in pids)) for g in sample.gpus)
    matches = [m for p in pids for m in join(sample).of_process(p)]
    agents = tuple(a for a in sample.agents if any(m.agent is a for m in matches))
    # An event names the process as its agent knows it (its own PID namespace).
    events = tuple(e for e in sample.events if e.pid in pids or any(e.pid == m.agent.pid for m in matches))
    return replace(sample, gpus=gpus, agents=agents, events=events)


@dataclass(frozen=True)
class EventToWrite:
    kind: str
    data: dict[str, Any]
    pid: int | None
    time: float


class WarningEvents:
    """The warnings the TUI would show, as events for the file: "warning" when one is raised or
    changes level, "warning.cleared" when it goes."""

    def __init__(self, risk: RiskTracker) -> None:
        self.risk = risk
        self._raised: dict[WarningKey, RiskWarning] = {}

    def update(self, sample: Sample) -> list[EventToWrite]:
        from vramtop.analysis.risk import warning_to_dict

        out = []
        now: dict[WarningKey, RiskWarning] = {}
        for w in self.risk.update(sample):
            now[w.key] = w
            before = self._raised.get(w.key)
            if before is None or before.level != w.level:
                out.append(EventToWrite("warning", warning_to_dict(w), w.pid, sample.time))
        for key in self._raised.keys() - now.keys():
            gone = self._raised[key]
            data = {"kind": gone.kind, "gpu_uuid": gone.gpu_uuid, "title": gone.title}
            out.append(EventToWrite("warning.cleared", data, gone.pid, sample.time))
        self._raised = now
        return out


class RecordingSession:
    """One recording: the sampling loop, the command, the signals and how it all ends."""

    def __init__(self, reader: DeadlineReader, recorder: Recorder, *, interval: float,
                 duration: float | None, compress: str, risk: RiskTracker | None = None,
                 pid: int | None = None, job: bool = False) -> None:
        self.reader = reader
        self.pid = pid  # --pid: only this process, until it exits
        self.job = job  # --job: and every rank of its distributed job
        self.recorder = recorder
        self.warnings = WarningEvents(risk) if risk is not None else None
        self.interval = interval
        self.duration = duration
        self.compress = compress
        self.failure: VramtopError | None = None  # the write error that stopped the recording
        self.started = time.time()
        self._pids: set[int] = set()  # processes seen: their post-mortem files belong to this recording
        self._written: set[tuple[str, int, float]] = set()
        self._told: set[str] = set()

    def run(self, first: Sample, command: Sequence[str]) -> int:
        """Record from ``first`` on, around ``command`` when there is one; the exit code."""
        with Signals() as signals:
            self._write(self.recorder.write_sample, first)
            if not command:
                return self._finish(self._record(lambda: self._stop_reason(signals, None)), EXIT_OK)
            child = self._start(command)
            signals.watch(child)
            reason = self._record(lambda: self._stop_reason(signals, child))
            self._last_events(child)
            if child.returncode is None:
                # --duration ended, or the disk is full: the recording stops, the command runs on.
                self._finish(reason, EXIT_OK)
                return exit_code(child.wait())
            self._write(self.recorder.write_event, "command.exited",
                        {"returncode": child.returncode}, pid=child.pid)
            return self._finish(reason, exit_code(child.returncode))

    def _start(self, command: Sequence[str]) -> subprocess.Popen[bytes]:
        try:
            child = start_with_agent(command)
        except OSError as err:
            code = start_failure_code(err)
            self._finish(f"command did not start: {err.strerror or err}", code)
            raise VramtopError(f"cannot run {command[0]}: {err.strerror or err}", code) from None
        self._write(self.recorder.write_event, "command.started", {"argv": list(command)},
                    pid=child.pid)
        return child

    def _stop_reason(self, signals: Signals, child: subprocess.Popen[bytes] | None) -> str | None:
        """Why to stop now (a write error, a signal, the command or process exited), or None."""
        if self.failure is not None:
            return f"write error: {self.failure.message}"
        if signals.reason is not None:
            return signals.reason
        if child is not None and child.poll() is not None:
            return f"command exited with {child.returncode}"
        if self.pid is not None and not alive(self.pid):
            return f"process {self.pid} exited"
        return None

    def _record(self, stop_reason: Callable[[], str | None]) -> str:
        """Sample every interval until ``stop_reason`` gives one or --duration ends; the reason."""
        started = time.monotonic()
        stop_at = None if self.duration is None else started + self.duration
        next_at = started + self.interval
        while True:
            reason = stop_reason()
            if reason is not None:
                return reason
            now = time.monotonic()
            if stop_at is not None and now >= stop_at:
                return "duration"
            if now < next_at:
                time.sleep(min(next_at - now, TICK_S))
                continue
            self._sample()
            # Keep the cadence; after a long stall, go on from now instead of catching up.
            next_at = max(next_at + self.interval, time.monotonic())

    def _sample(self) -> None:
        """Read one sample and write it, with its events and the warnings it raises or clears."""
        sample = self.reader.read()
        if sample.stale:  # the last good data again: record it at the time it stood in
            sample = replace(sample, time=time.time())
        if self.pid is not None:
            sample = only_process(sample, self.pid, self.job)
        # Events go into the file as event records of their own, not inside the sample.
        self._write(self.recorder.write_sample, replace(sample, events=()))
        self._pids.update(a.pid for a in sample.agents)
        self._pids.update(p.pid for g in sample.gpus for p in g.processes)
        for problem in sample.problems:  # in the file with the sample; said once on stderr
            if problem not in self._told:
                self._told.add(problem)
                print(f"vramtop: {problem}", file=sys.stderr)
        for event in sample.events:  # e.g. an OOM seen by a training process's agent
            self._write_event(event)
        if self.warnings is not None:
            for w in self.warnings.update(sample):
                self._write(self.recorder.write_event, w.kind, w.data, pid=w.pid, time=w.time)

    def _last_events(self, child: subprocess.Popen[bytes]) -> None:
        """What the command's agents said as it ended: the frames still on their way (an OOM's
        post-mortem sent by the failing thread just before the process died) and post-mortem
        files its processes wrote that no connection carried."""
        agents = getattr(self.reader.source, "agents", None)
        if agents is None:
            return
        from vramtop.sources.agent import typed_events

        agents.settle(SETTLE_S)
        agents.poll()
        messages = agents.drain_events()
        for pid in sorted(self._pids | {child.pid}):
            messages.extend(agents.postmortems(pid, since=self.started))
        events, _ = typed_events(messages)
        for event in events:
            self._write_event(event)

    def _write_event(self, event: AgentEvent) -> None:
        key = (event.kind, event.pid, event.time)
        if key in self._written:  # an OOM both sent on the socket and left in its file
            return
        self._written.add(key)
        data = to_dict(event.oom) if event.oom is not None else {}
        self._write(self.recorder.write_event, event.kind, data, pid=event.pid)

    def _write(self, fn: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        if self.failure is not None:
            return
        try:
            fn(*args, **kwargs)
        except VramtopError as err:
            self.failure = err
            print(f"vramtop: {err.message}", file=sys.stderr)

    def _finish(self, reason: str, code: int) -> int:
        """Close the recording; the exit code (``code`` unless recording failed without one)."""
        try:
            final = self.recorder.close(reason, compress=self.compress if self.failure is None else "")
        except VramtopError as err:
            print(f"vramtop: {err.message}", file=sys.stderr)
            return code if code != EXIT_OK else err.exit_code
        saved = self.recorder.samples
        print(f"vramtop: {saved} sample{'' if saved == 1 else 's'} in {final}", file=sys.stderr)
        if self.failure is not None and code == EXIT_OK:
            return self.failure.exit_code
        return code
