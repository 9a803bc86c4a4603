"""The agent: waits for the program to use CUDA, then samples the allocator and serves it.

Tensors are only ever touched on the program's own thread, in the optimizer-step hook (and,
without an optimizer, after a model's forward call): the autograd engine writes ``.grad`` from
its own threads without the GIL, so reading a tensor from the sampler thread is a data race
that can crash the process. The sampler thread reads only the allocator's own statistics and
snapshots, which the allocator serves under its lock.

Rules it keeps (each has a test): it never initialises CUDA (it waits for
``torch.cuda.is_initialized()``), never creates a context on a device the program did not
use, never synchronises, resets peaks, empties the cache or changes allocator settings; its
code never raises into the program; the only work on the training thread in the steady state
is counting the step in the optimizer-step hook (a step boundary with work to do comes every
50 ms or so, see _after_optimizer_step); it stops in forked children and outlives monitors.

The agent's thread never imports, nor makes torch import: a first import of a module from a
second thread races the program's own imports, and Python's deadlock avoidance can then hand
the program a half-initialised module (torch imports torch._dynamo and torch._inductor lazily,
on first access). So the agent's thread only reads what the program has imported, and any call
that could import (turning ``--trace``'s allocation history on, reading its stacks) runs on the
training thread or waits until the program has imported what it needs.

This module keeps the life cycle (waiting for CUDA, starting, stopping, forks) and the wiring of
the optimizer-step hook; each job it wires lives in a module of its own: the devices in use
(_devices.py), model discovery (_discovery.py), the step's phases (_phases.py) and their
arithmetic (_peaks.py), step boundaries (_boundaries.py), the census and when it runs
(_census.py, _census_schedule.py), OOM capture (_oom.py; where it happened: _place.py; the
allocation history of ``--trace``: _trace.py), the sampler (_sampler.py), and the socket with its
answers (_server.py, _answers.py).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from vramtop import __version__, protocol
from vramtop.codec import to_dict
from vramtop.model import AgentSample, Launch, OomReport

from . import _torchstats as ts
from ._answers import Answers
from ._boundaries import StepBoundaries
from ._census import take_census
from ._census_schedule import CensusSchedule
from ._devices import DeviceTable
from ._discovery import ModelDiscovery
from ._launch import launch_env
from ._oom import PostMortems, oom_observer, oom_report
from ._peaks import ClosedStep
from ._phases import StepPhases
from ._sampler import DeviceSampler, sample_until_stopped
from ._server import AgentServer
from ._stack import inspect_thread
from ._trace import NOT_YET, entries_from_env, start_history, stop_history, with_history

DEFAULT_INTERVAL = 0.25  # seconds between samples
MIN_INTERVAL, MAX_INTERVAL = 0.01, 3600.0  # the range an asked-for interval is brought into
CUDA_WAIT = 0.1  # seconds between checks for the program's CUDA initialisation (~1 us each)
# An OOM's post-mortem is sent to connected monitors from the failing thread, at most this long,
# before the program sees the exception (an uncaught OOM ends the process within milliseconds).
OOM_FLUSH = 0.2


class Agent:
    def __init__(self, interval: float = DEFAULT_INTERVAL, directory: Path | None = None,
                 torch: Any = None, device_type: str = "cuda", attached: bool = False) -> None:
        self.interval = interval
        self.attached = attached  # started in a running program: it saw none of the steps before
        # Allocator snapshots give the largest free block (exact fragmentation); without them
        # fragmentation is the inactive-split proxy. VRAMTOP_AGENT_SNAPSHOTS=0 turns them off.
        snapshots = os.environ.get("VRAMTOP_AGENT_SNAPSHOTS", "1") != "0"
        # Both are injected only by CPU-only tests, which fake the CUDA allocator.
        self._given_torch = torch
        self._device_type = device_type
        self.directory = directory or protocol.runtime_dir()
        self.pid = os.getpid()
        self.step = 0
        self.phase = "unknown"
        self.error: str | None = None  # why the agent stopped working, for tests and the beacon
        self._torch: Any = None
        self._server: AgentServer | None = None
        self._stop = threading.Event()
        self._devices = DeviceTable()
        self._beacon_lock = threading.Lock()  # the last beacon written lists every device found
        self._optimizers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._discovery = ModelDiscovery(device_type, self._stop_is_set, self._model_found, self._between_calls)
        self._census = CensusSchedule(device_type, self._optimizers, self._discovery.models)
        self._boundaries = StepBoundaries()
        # ``vramtop run --trace``: PyTorch's allocation history, for the OOM post-mortem.
        self._trace_entries = entries_from_env()
        self._trace_problem: str | None = NOT_YET  # why there is no history (None: it is on)
        self._history_started = False
        self._sampler = DeviceSampler(snapshots, light=self._trace_entries is not None)
        self._answers = Answers()
        self._post_mortems = PostMortems(self.directory)
        self._train_thread: int | None = None
        self._phases: StepPhases | None = None
        # Until this monotonic time no optimizer step boundary has work (0: the next one may).
        # Whatever stops the agent sets it to 0, so that the next step sees the stop.
        self._quiet_until = 0.0
        self._last_optimizer: Any = _nothing  # a weak reference to the last optimizer that stepped
        self._hooks: list[Any] = []
        self._pid_namespace = _pid_namespace()
        self._launch: Launch | None = None  # read when it starts serving (a forked child reads its own)
        self.last_oom: OomReport | None = None
        self._thread = threading.Thread(target=self._run, name="vramtop-agent", daemon=True)

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        os.register_at_fork(after_in_child=self._forked)
        self._thread.start()

    def stop(self) -> None:
        """Stop and remove the hooks. Call it from the program's own thread (as
        ``vramtop.agent.stop()`` is): torch's hook dictionaries are not locked."""
        self._stop.set()
        self._quiet_until = 0.0
        self._discovery.end()
        for hook in self._hooks:
            with contextlib.suppress(Exception):
                hook.remove()
        self._hooks.clear()
        if self._phases is not None:
            self._phases.remove()
        oom_observer.handler = None
        if self._history_started:
            stop_history(self._torch)
        if self._server is not None:
            self._server.stop()

    def _forked(self) -> None:
        # A DataLoader worker or any fork: the threads did not come along.
        if self._server is not None or self._stop.is_set():
            # The parent already used CUDA, which a forked child cannot: drop our copies of the
            # sockets without touching the parent's files, and stay silent in the child.
            self._stop.set()
            self._quiet_until = 0.0
            if self._server is not None:
                self._server.abandon_after_fork()
                self._server = None
            return
        # The parent was still waiting for CUDA; the child may be the one that uses it.
        self.pid = os.getpid()
        self._devices.after_fork()
        self._beacon_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vramtop-agent", daemon=True)
        self._thread.start()

    def _stop_is_set(self) -> bool:
        return self._stop.is_set()  # the event is replaced in a forked child: read it each time

    @property
    def active(self) -> bool:
        """Serving samples: the socket is up and the first sample is taken."""
        return (self._server is not None and self._answers.latest is not None and not self._stop.is_set()
                and os.getpid() == self.pid)

    def _run(self) -> None:
        try:
            torch = self._wait_for_cuda()
            if torch is None:
                return
            self._activate(torch)
            sample_until_stopped(self.tick, self._stop, self.interval, lambda: os.getpid() != self.pid,
                                 self._tick_failed)
        except Exception as err:
            self.error = f"{type(err).__name__}: {err}"
            if self._server is None and os.getpid() == self.pid:
                # It never served: one line to the program's own output, so nobody waits for a
                # bill that cannot come.
                with contextlib.suppress(Exception):
                    print(f"vramtop agent: not serving PID {self.pid}: {err}", file=sys.stderr)
            # Give up quietly. The hooks stay registered but inert (they check the stop flag):
            # removing them from this thread could mutate torch's hook dictionaries while the
            # training thread iterates them, which would raise in the program. The next
            # optimizer step removes the module-call hooks from the training thread.
            self._stop.set()
            self._quiet_until = 0.0
            if self._phases is not None:
                self._phases.stopped = True  # inert; removed at the next optimizer step
            with contextlib.suppress(Exception):
                if self._server is not None:
                    self._server.stop()

    def _tick_failed(self, error: str) -> None:
        self.error = error

    def _wait_for_cuda(self) -> Any:
        """The program's torch, once it has initialised CUDA itself; None if we are stopped."""
        while not self._stop.is_set():
            torch = self._given_torch or sys.modules.get("torch")
            if torch is not None and ts.cuda_ready(torch):
                return torch
            self._stop.wait(CUDA_WAIT)
        return None

    def _activate(self, torch: Any) -> None:
        self._torch = torch
        self._launch = launch_env()
        optim = _optim_module(torch)
        self._phases = StepPhases(self._read_counters, self._census.trainable_parameters,
                                  self._devices.counted, self._step_measured, torch, self._device_type,
                                  getattr(optim, "register_optimizer_step_pre_hook", None))
        self._phases.arm()  # the first steps are measured
        register = getattr(optim, "register_optimizer_step_post_hook", None)
        if register is not None:
            self._hooks.append(register(self._after_optimizer_step))
        self._discovery.attach(torch)
        oom_observer.attach(torch, self._on_oom)
        self._rescan_devices(force=True)
        server = AgentServer(self.directory, self._beacon(), self._answers.respond)
        server.start()  # refuses an unsafe directory: the agent then never serves (see _run)
        self._server = server
        self.tick()

    def _beacon(self) -> dict[str, Any]:
        return {
            "protocol": [protocol.AGENT_PROTOCOL_MIN, protocol.AGENT_PROTOCOL_MAX],  # as the hello says
            "vramtop": __version__,
            "pid": self.pid,
            "started": time.time(),
            "argv": [a[:200] for a in sys.argv[:16]],
            "rank": self._launch.rank if self._launch else None,
            "torch": str(getattr(self._torch, "__version__", "?")),
            "devices": [d.uuid for d in self._devices.states.values()],
        }

    def _rescan_devices(self, force: bool = False) -> None:
        """Look for newly used devices (from the sampler, or the training thread's first step);
        a new one goes into the beacon, built and written under a lock of its own so that two
        threads that each found a device cannot leave the older list behind."""
        server = self._server
        if self._devices.rescan(self._torch, force) and server is not None:
            with self._beacon_lock:
                server.write_beacon(self._beacon())

    # -- hooks on the training thread: microseconds, never raise ---------------------------

    def _start_history_here(self) -> None:
        """``--trace``: turn the allocation history on, once, from the training thread (see _trace.py)."""
        if self._trace_entries is not None and not self._history_started:
            self._history_started = True
            self._trace_problem = start_history(self._torch, self._trace_entries)

    def _model_found(self, model: Any) -> None:
        self._start_history_here()
        if self._phases is not None:
            # Its own forward hooks take over from its next call; this call's pre-hook list is
            # already fixed, so tell the phases here.
            self._phases.watch(model)
            self._phases.forward_started(model)

    def _between_calls(self) -> None:
        # No optimizer (inference): count what the models hold, here on the calling thread,
        # between forward passes.
        devices = self._devices.states
        if not self._optimizers and devices and self._census.due(time.monotonic()):
            self._census.take(self._torch, devices)

    def _after_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Runs on the training thread after every optimizer step. In the steady state (models
        found, no measurement of the step's phases under way, none due) it counts the step and
        returns until the next boundary with work (_step_boundary): in a launch-bound loop of
        2 ms steps, 24 steps in 25 or more do only this, whatever the model's depth."""
        try:
            if time.monotonic() < self._quiet_until and (
                    self._last_optimizer() is optimizer or optimizer in self._optimizers):
                self.step += 1
                return
            self._step_boundary(optimizer)
        except Exception:
            pass

    def _step_boundary(self, optimizer: Any) -> None:
        """An optimizer step boundary with work: the allocator figures (~20 us) at most every
        BOUNDARY_GAP seconds; the census every 1 to 8 seconds (see CENSUS_MAX_GAP), here because
        gradients exist only now; the step's phases while they are measured. The figures and
        the census are spaced further when they are slow (READ_BUDGET, GIL_BUDGET)."""
        started = time.perf_counter()
        self._quiet_until = 0.0
        # No getpid() here: a forked child's copy is stopped by _forked before it runs.
        if self._stop.is_set():
            self._remove_inert_hooks()
            return
        self.step += 1
        self._start_history_here()
        self._discovery.after_step()
        new_optimizer = optimizer not in self._optimizers
        if new_optimizer:
            self._optimizers.add(optimizer)
        self._last_optimizer = weakref.ref(optimizer)
        self._train_thread = threading.get_ident()
        if not self._devices.states:
            self._rescan_devices(force=True)  # the first step came before the first tick saw memory
        devices = self._devices.states
        now = time.monotonic()
        overhead = time.perf_counter() - started  # the census and the phases have budgets of their own
        if new_optimizer:
            self._census.take(self._torch, devices)  # before the step closes: its bill needs the state
        if self._phases is not None and now >= self._phases.next_due:
            self._phases.after_optimizer(self.step)
        if new_optimizer or self._boundaries.due(now):
            self._boundaries.read(self._torch, self.step, now, devices, overhead)
            if not new_optimizer and self._census.due(now):
                self._census.take(self._torch, devices)
        self._quiet_until = self._next_work()

    def _next_work(self) -> float:
        """When the next step boundary has work: the next allocator read (the census is only
        looked at then) or the next measurement of the phases; 0 while something is still
        settling (models being discovered, no device yet, ``--trace``'s history not started, a
        measurement under way) or the agent stopped."""
        phases = self._phases
        if (phases is None or self._discovery.watching or not self._devices.states or self._stop.is_set()
                or (self._trace_entries is not None and not self._history_started)):
            return 0.0
        return min(self._boundaries.next_due, phases.next_due)

    def _remove_inert_hooks(self) -> None:
        # Inert module hooks still keep every module call on torch's slow path: drop them here,
        # on the training thread, outside torch's loops over module hooks.
        if self._discovery.watching:
            self._discovery.end()
        if self._phases is not None and not self._phases.removed:
            self._phases.remove()

    # -- what the phases need ----------------------------------------------------------------

    def _read_counters(self) -> dict[int, tuple[int, int]]:
        if not self._devices.states:  # the first forward can come before the sampler has seen the memory
            self._rescan_devices(force=True)
        out = {}
        for index in self._devices.states:
            a = ts.raw_stats(self._torch, index)["allocated_bytes"]["all"]
            out[index] = (int(a["current"]), int(a["peak"]))
        return out

    def _step_measured(self, closed: dict[int, ClosedStep]) -> None:
        devices = self._devices.states
        for index, step in closed.items():
            state = devices.get(index)
            if state is None:
                continue
            state.known_peak = max(state.known_peak, step.highest_peak)
            state.residual = step.residual
            if step.bill is not None:
                state.peak = state.measured = step.bill
                state.kept = step.kept

    # -- an OOM, on the failing thread -------------------------------------------------------

    def _on_oom(self, device: int, requested: int, device_limit: int, device_free: int) -> None:
        """Record the OOM, send it to connected monitors and write it down before returning."""
        try:
            if os.getpid() != self.pid or self._stop.is_set():
                return

            def census_now() -> Any:
                census = take_census(self._torch, self._optimizers, self._discovery.models, self._device_type)
                return census.get(device)

            report = oom_report(self._torch, device, requested, device_limit, device_free,
                                state=self._devices.states.get(device), census=census_now, step=self.step,
                                train_thread=self._train_thread, pid=self.pid,
                                models=list(self._discovery.models), light=self._trace_entries is not None)
            self._post_mortems.record(report, self._publish_oom,
                                      self._with_history if self._trace_entries is not None else None)
        except Exception:
            pass

    def _with_history(self, report: OomReport) -> OomReport:
        return with_history(self._torch, report, self._trace_problem)

    def _publish_oom(self, report: OomReport) -> None:
        if self._server is not None:
            self._server.send_now({"type": "event", "kind": "oom", "pid": self.pid, "data": to_dict(report)},
                                  timeout=OOM_FLUSH)
        self.last_oom = report  # samples carry it from now on

    # -- the sampler thread ----------------------------------------------------------------

    def tick(self) -> AgentSample:
        torch = self._torch
        self._rescan_devices()
        devices = self._devices.states
        self._boundaries.close(devices)
        phase = inspect_thread(self._train_thread or threading.main_thread().ident or 0)
        self.phase = phase
        sample = AgentSample(
            pid=self.pid,
            time=time.time(),
            torch_version=str(torch.__version__),
            pid_namespace=self._pid_namespace,
            devices=self._sampler.read(torch, devices),
            step=self.step,
            phase=phase,
            rank=self._launch.rank if self._launch and self._launch.rank is not None else self._census.rank,
            expandable_segments=ts.expandable_segments(self._sampler.snapshot),
            error=self.error,
            last_oom=self.last_oom,
            dropped=self._server.dropped if self._server else 0,
            autocast=self._discovery.autocast,
            world_size=self._census.world_size,
            checkpointing=self._census.checkpointing,
            launch=self._launch,
            attached=self.attached,
        )
        self._answers.latest = sample
        server = self._server
        if server is not None and server.wants_samples():  # nobody reads: nothing to build
            server.publish(self._answers.message(sample))
        return sample


def _nothing() -> None:
    """A weak reference whose object is gone."""
    return None


def _optim_module(torch: Any) -> Any:
    """torch.optim.optimizer, where the global step hooks live (torch.optim does not always
    expose its submodules as attributes)."""
    base = getattr(getattr(torch, "optim", None), "Optimizer", None)
    return sys.modules.get(getattr(base, "__module__", ""), None)


def _pid_namespace() -> int | None:
    """The inode of this process's PID namespace: a monitor outside a container matches it with
    the host PID NVML reports (the agent knows only its own)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def sampling_interval(asked: str | float) -> float:
    """Seconds between samples from what was asked (``start``'s argument, or the text of
    VRAMTOP_AGENT_INTERVAL): brought within MIN_INTERVAL..MAX_INTERVAL, and the default where it is
    not a finite number. A typo must not cost the program its agent (it once did not start), nor
    "inf" its samples (the sampler's wait overflowed and it stopped)."""
    try:
        seconds = float(asked)
    except ValueError:
        return DEFAULT_INTERVAL
    if not math.isfinite(seconds):
        return DEFAULT_INTERVAL
    return min(MAX_INTERVAL, max(MIN_INTERVAL, seconds))
