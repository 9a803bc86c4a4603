"""The agent: waits for the program to use CUDA, then samples the allocator and serves it.

Tensors are only ever touched on the program's own thread, in the optimizer-step hook (and,
without an optimizer, after a model's forward call): the autograd engine writes ``.grad`` from
its own threads without the GIL, so reading a tensor from the sampler thread is a data race
that can crash the process. The sampler thread reads only the allocator's own statistics and
snapshots, which the allocator serves under its lock.

Rules it keeps (each has a test): it never initialises CUDA (it waits for
``torch.cuda.is_initialized()``), never creates a context on a device the program did not
use, never synchronises, resets peaks, empties the cache or changes allocator settings; its
code never raises into the program; the only work on the training thread is a few
microseconds in the optimizer-step hook; it stops in forked children and outlives monitors.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vramtop import __version__
from vramtop.codec import to_dict
from vramtop.model import AgentDevice, AgentSample, OomReport, PeakBill, StepPeak, TensorCensus
from vramtop.protocol import runtime_dir

from . import _postmortem
from . import _torchstats as ts
from ._census import parameters_of, take_census
from ._peaks import Counted, estimate
from ._phases import StepPhases
from ._server import AgentServer
from ._stack import inspect_thread

DEFAULT_INTERVAL = 0.25  # seconds between samples
CUDA_WAIT = 0.1  # seconds between checks for the program's CUDA initialisation (~1 us each)
DEVICE_RESCAN = 2.0  # seconds between checks for newly used devices
# Allocator figures are read at step boundaries at most this often, and less often if a read
# is slow (see GIL_BUDGET): steps faster than this are grouped, so a launch-bound loop of 2 ms
# steps pays for one read (~20-150 us, a dict of ~100 counters) per 20 ms or more, not per step.
BOUNDARY_GAP = 0.02
# Module-call hooks stay until this many optimizer steps in a row met no new model.
DISCOVERY_STEPS = 3
# The sampler gives up after this many failed ticks in a row (a torch it cannot read).
MAX_TICK_ERRORS = 20
# Work done while holding the GIL (census, snapshot) is spaced so that it takes at most this
# share of wall time, however large the model or the allocator's block list.
GIL_BUDGET = 0.002
# The census repeats at least every second; while its result stays the same (a steady training
# loop) the gap doubles up to this, and any change brings it back to a second.
CENSUS_MAX_GAP = 8.0
# An OOM's post-mortem is sent to connected monitors from the failing thread, at most this long,
# before the program sees the exception (an uncaught OOM ends the process within milliseconds).
OOM_FLUSH = 0.2
# Persistent memory counts from this step on for the leak diagnosis (Adam's state exists by then).
PERSISTENT_FROM_STEP = 2


@dataclass
class _Boundary:
    """Allocator figures at the end of an optimizer step, read in the step hook."""

    step: int
    time: float
    current: dict[int, tuple[int, int]]  # device -> (allocated, reserved)
    peak: dict[int, tuple[int, int]]  # device -> (allocated peak, reserved peak)


@dataclass
class _DeviceState:
    index: int
    uuid: str | None
    name: str | None
    max_allocated: int = 0  # highest sampled since the last boundary
    max_reserved: int = 0
    last_step: StepPeak | None = None
    peak_step: int | None = None  # the step during which the allocator's peak last rose
    census: TensorCensus | None = None
    peak: PeakBill | None = None  # the bill at the allocator's peak (measured, or estimated)
    memory_total: int | None = None
    memory_limit: int | None = None  # the process's cap, when set
    # Written by the training thread (step hook), read by the OOM observer:
    known_peak: int = 0  # the highest allocator peak any reading saw
    measured: PeakBill | None = None  # the last measured bill at the peak
    residual: int = 0  # persistent memory beyond the census categories at the last measured step
    kept: int = 0  # the previous step's outputs alive at that peak
    boundary_peak: int | None = None  # the allocator's peak at the last step boundary read
    persistent_first: tuple[int, int] | None = None  # (step, allocated) lowest at a step boundary
    # The last few boundaries: their lowest is what persists now (one step's big outputs aside).
    recent: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=8))


class Agent:
    def __init__(self, interval: float = DEFAULT_INTERVAL, directory: Path | None = None,
                 torch: Any = None, device_type: str = "cuda") -> None:
        self.interval = interval
        # Allocator snapshots give the largest free block (exact fragmentation); without them
        # fragmentation is the inactive-split proxy. VRAMTOP_AGENT_SNAPSHOTS=0 turns them off.
        self.snapshots = os.environ.get("VRAMTOP_AGENT_SNAPSHOTS", "1") != "0"
        # Both are injected only by CPU-only tests, which fake the CUDA allocator.
        self._given_torch = torch
        self._device_type = device_type
        self.directory = directory or runtime_dir()
        self.pid = os.getpid()
        self.step = 0
        self.phase = "unknown"
        self.error: str | None = None  # why the agent stopped working, for tests and the beacon
        self._torch: Any = None
        self._server: AgentServer | None = None
        self._devices: dict[int, _DeviceState] = {}
        self._optimizers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._modules: weakref.WeakSet[Any] = weakref.WeakSet()
        self._boundaries: deque[_Boundary] = deque(maxlen=256)
        self._last_boundary: _Boundary | None = None
        self._train_thread: int | None = None
        self._phases: StepPhases | None = None
        self._trainable: list[weakref.ref[Any]] | None = None  # from the last census
        self._hooks: list[Any] = []
        self._discovery: list[Any] = []  # the module-call hooks, removed once the models are known
        self._call_depth = threading.local()
        self._quiet_steps = 0  # optimizer steps in a row that met no new model
        self._new_model = False
        self.tick_errors = 0
        self._stop = threading.Event()
        self._last_census = self._census_cost = 0.0
        self._census_gap = 1.0
        self._last_boundary_read = self._boundary_cost = 0.0
        self._last_snapshot = self._snapshot_cost = 0.0
        self._last_rescan = 0.0
        self._rescan_lock = threading.Lock()
        self._pid_namespace = _pid_namespace()
        self._snapshot: ts.SnapshotSummary | None = None
        self._latest: AgentSample | None = None
        self._answer: tuple[AgentSample, dict[str, Any]] | None = None  # the latest sample, as answered
        self.last_oom: OomReport | None = None
        self.autocast: bool | None = None  # a top-level forward ran under autocast (seen in discovery)
        self.world_size: int | None = None
        self.checkpointing: bool | None = None
        self._told_postmortem = False
        self._thread = threading.Thread(target=self._run, name="vramtop-agent", daemon=True)

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        os.register_at_fork(after_in_child=self._forked)
        self._thread.start()

    def stop(self) -> None:
        """Stop and remove the hooks. Call it from the program's own thread (as
        ``vramtop.agent.stop()`` is): torch's hook dictionaries are not locked."""
        self._stop.set()
        self._end_discovery()
        for hook in self._hooks:
            with contextlib.suppress(Exception):
                hook.remove()
        self._hooks.clear()
        if self._phases is not None:
            self._phases.remove()
        _oom_observer.agent = None
        if self._server is not None:
            self._server.stop()

    def _forked(self) -> None:
        # A DataLoader worker or any fork: the threads did not come along.
        if self._server is not None or self._stop.is_set():
            # The parent already used CUDA, which a forked child cannot: drop our copies of the
            # sockets without touching the parent's files, and stay silent in the child.
            self._stop.set()
            if self._server is not None:
                self._server.abandon_after_fork()
                self._server = None
            return
        # The parent was still waiting for CUDA; the child may be the one that uses it.
        self.pid = os.getpid()
        self._rescan_lock = threading.Lock()  # a lock held by a thread that did not come along
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vramtop-agent", daemon=True)
        self._thread.start()

    @property
    def active(self) -> bool:
        """Serving samples: the socket is up and the first sample is taken."""
        return (self._server is not None and self._latest is not None and not self._stop.is_set()
                and os.getpid() == self.pid)

    def _run(self) -> None:
        try:
            torch = self._wait_for_cuda()
            if torch is None:
                return
            self._activate(torch)
            while not self._stop.wait(self.interval):
                if os.getpid() != self.pid:
                    return
                try:
                    self.tick()
                    self.tick_errors = 0
                except Exception as err:
                    self.error = f"{type(err).__name__}: {err}"
                    self.tick_errors += 1
                    if self.tick_errors >= MAX_TICK_ERRORS:
                        raise
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
            if self._phases is not None:
                self._phases.stopped = True  # inert; removed at the next optimizer step
            with contextlib.suppress(Exception):
                if self._server is not None:
                    self._server.stop()

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
        base = getattr(getattr(torch, "optim", None), "Optimizer", None)
        optim = sys.modules.get(getattr(base, "__module__", ""), None)
        self._phases = StepPhases(self._read_counters, self._trainable_parameters, self._counted,
                                  self._peaks_measured, torch, self._device_type,
                                  getattr(optim, "register_optimizer_step_pre_hook", None))
        self._phases.arm()  # the first steps are measured
        self._register_hooks(torch)
        self._rescan_devices(force=True)
        server = AgentServer(self.directory, self._beacon(), self._respond)
        server.start()  # refuses an unsafe directory: the agent then never serves (see _run)
        self._server = server
        self.tick()

    def _beacon(self) -> dict[str, Any]:
        return {
            "protocol": [1, 1],
            "vramtop": __version__,
            "pid": self.pid,
            "started": time.time(),
            "argv": [a[:200] for a in sys.argv[:16]],
            "rank": _env_int("RANK"),
            "torch": str(getattr(self._torch, "__version__", "?")),
            "devices": [d.uuid for d in self._devices.values()],
        }

    # -- hooks on the training thread: microseconds, never raise ---------------------------

    def _register_hooks(self, torch: Any) -> None:
        # torch.optim and torch.nn do not always expose their submodules as attributes.
        base = getattr(getattr(torch, "optim", None), "Optimizer", None)
        optim = sys.modules.get(getattr(base, "__module__", ""), None)
        register = getattr(optim, "register_optimizer_step_post_hook", None)
        if register is not None:
            self._hooks.append(register(self._after_optimizer_step))

        module_base = getattr(getattr(torch, "nn", None), "Module", None)
        modules = sys.modules.get(getattr(module_base, "__module__", ""), None)
        pre = getattr(modules, "register_module_forward_pre_hook", None)
        post = getattr(modules, "register_module_forward_hook", None)
        if pre is not None and post is not None:
            with contextlib.suppress(Exception):
                self._discovery.append(pre(self._before_module_call))
                self._discovery.append(post(self._after_module_call, always_call=True))
        _oom_observer.attach(torch, self)

    # Models are found by watching module calls for a few steps: the outermost module a thread
    # calls is a model (the frozen base of a LoRA model included). Once optimizer steps stop
    # meeting new models, the hooks are removed and module calls cost nothing again.

    def _before_module_call(self, module: Any, args: Any) -> None:
        try:
            if self._stop.is_set():
                return
            depth = getattr(self._call_depth, "depth", 0)
            self._call_depth.depth = depth + 1
            if depth == 0:
                if not self.autocast:
                    self.autocast = ts.autocast_enabled(self._torch, self._device_type)
                if module not in self._modules:
                    self._modules.add(module)
                    self._new_model = True
                    if self._phases is not None:
                        # Its own forward hooks take over from its next call; this call's
                        # pre-hook list is already fixed, so tell the phases here.
                        self._phases.watch(module)
                        self._phases.forward_started(module)
        except Exception:
            pass

    def _after_module_call(self, module: Any, args: Any, output: Any) -> None:
        try:
            depth = max(0, getattr(self._call_depth, "depth", 1) - 1)
            self._call_depth.depth = depth
            # No optimizer (inference): count what the models hold, here on the calling thread,
            # between forward passes.
            if depth == 0 and not self._optimizers and self._devices and self._census_due(time.monotonic()):
                self._census()
        except Exception:
            pass

    def _end_discovery(self) -> None:
        for hook in self._discovery:
            with contextlib.suppress(Exception):
                hook.remove()
        self._discovery.clear()

    def _after_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Runs on the training thread after every optimizer step: a counter; the allocator
        figures (~20 us) at most every BOUNDARY_GAP seconds; the census every 1 to 8 seconds
        (see CENSUS_MAX_GAP), here because gradients exist only now. The last two are spaced
        further when they are slow (GIL_BUDGET)."""
        try:
            # No getpid() here: a forked child's copy is stopped by _forked before it runs.
            if self._stop.is_set():
                # Inert module hooks still keep every module call on torch's slow path: drop
                # them here, on the training thread, outside torch's loops over module hooks.
                if self._discovery:
                    self._end_discovery()
                if self._phases is not None and not self._phases.removed:
                    self._phases.remove()
                return
            self.step += 1
            if self._discovery:
                self._quiet_steps = 0 if self._new_model else self._quiet_steps + 1
                self._new_model = False
                if self._quiet_steps >= DISCOVERY_STEPS and self._modules:
                    self._end_discovery()
            new_optimizer = optimizer not in self._optimizers
            if new_optimizer:
                self._optimizers.add(optimizer)
            self._train_thread = threading.get_ident()
            if not self._devices:
                self._rescan_devices(force=True)  # the first step came before the first tick saw memory
            now = time.monotonic()
            if new_optimizer:
                self._census()  # before the step closes: its bill needs the optimizer's state
            if self._phases is not None:
                self._phases.after_optimizer(self.step)
            gap = max(BOUNDARY_GAP, self._boundary_cost / GIL_BUDGET)
            if now - self._last_boundary_read < gap and not new_optimizer:
                return
            self._last_boundary_read = now
            started = time.perf_counter()
            current, peak = {}, {}
            for index in list(self._devices):
                raw = ts.raw_stats(self._torch, index)
                a, r = raw["allocated_bytes"]["all"], raw["reserved_bytes"]["all"]
                current[index] = (a["current"], r["current"])
                peak[index] = (a["peak"], r["peak"])
                self._note_boundary(index, a["current"], a["peak"])
            self._boundaries.append(_Boundary(self.step, now, current, peak))
            # A moving average: one read slowed by preemption should not space out the next ones.
            cost = time.perf_counter() - started
            self._boundary_cost = cost if not self._boundary_cost else 0.75 * self._boundary_cost + 0.25 * cost
            if not new_optimizer and self._census_due(now):
                self._census()
        except Exception:
            pass

    def _note_boundary(self, index: int, allocated: int, peak: int) -> None:
        """At a step boundary read: persistent memory for the leak diagnosis, and the bill of a
        peak that rose during steps no reading saw (estimated from the last measured one)."""
        state = self._devices.get(index)
        if state is None:
            return
        state.boundary_peak = peak
        if self.step >= PERSISTENT_FROM_STEP:
            state.recent.append((self.step, allocated))
            if state.persistent_first is None or allocated < state.persistent_first[1]:
                state.persistent_first = (self.step, allocated)
        if peak > state.known_peak:
            state.known_peak = peak
            if state.measured is not None:
                counted = self._counted().get(index, Counted())
                state.peak = estimate(state.measured, peak, self.step, counted, self.step > 1,
                                      state.residual + state.kept)

    # -- what the phases need ----------------------------------------------------------------

    def _read_counters(self) -> dict[int, tuple[int, int]]:
        if not self._devices:  # the first forward can come before the sampler has seen the memory
            self._rescan_devices(force=True)
        out = {}
        for index in list(self._devices):
            a = ts.raw_stats(self._torch, index)["allocated_bytes"]["all"]
            out[index] = (int(a["current"]), int(a["peak"]))
        return out

    def _trainable_parameters(self) -> list[Any]:
        if self._trainable is None:  # the first forward, before any census
            return [p for p in parameters_of(self._optimizers, self._modules) if p.requires_grad]
        return [p for p in (ref() for ref in self._trainable) if p is not None]

    def _counted(self) -> dict[int, Counted]:
        out = {}
        for index, state in list(self._devices.items()):
            c = state.census
            if c is not None:
                out[index] = Counted(c.parameters_trainable, c.parameters_frozen, c.buffers, c.optimizer_state)
        return out

    def _peaks_measured(self, bills: dict[int, PeakBill], residuals: dict[int, int], peaks: dict[int, int]) -> None:
        for index, value in peaks.items():
            state = self._devices.get(index)
            if state is not None:
                state.known_peak = max(state.known_peak, value)
                if index in residuals:
                    state.residual = residuals[index]
        for index, bill in bills.items():
            state = self._devices.get(index)
            if state is not None:
                state.peak = state.measured = bill
                state.kept = max(0, bill.other_persistent - state.residual)

    def _on_oom(self, device: int, requested: int, device_limit: int, device_free: int) -> None:
        """Called by the allocator on the thread whose allocation failed, before the program
        sees the exception (the allocator's lock is released): record everything now, send it
        to connected monitors and write it down, all before returning: an uncaught OOM ends
        the process within milliseconds."""
        try:
            if os.getpid() != self.pid or self._stop.is_set():
                return
            report = self._oom_report(device, requested, device_limit, device_free)
            # The file first (a few ms, no summary yet), so the report sent names it; then the
            # monitors; then the summary in words, which takes longer.
            path = _postmortem.write(report, self.directory)
            report = replace(report, path=path)
            if self._server is not None:
                self._server.send_now({"type": "event", "kind": "oom", "pid": self.pid, "data": to_dict(report)},
                                      timeout=OOM_FLUSH)
            self.last_oom = report  # samples carry it from now on
            if path:
                _postmortem.add_summary(report, path)
                if not self._told_postmortem:
                    self._told_postmortem = True  # once per process: OOMs often come in bursts
                    print(f"vramtop: CUDA out of memory in PID {self.pid}; post-mortem: {path}", file=sys.stderr)
        except Exception:
            pass

    def _oom_report(self, device: int, requested: int, device_limit: int, device_free: int) -> OomReport:
        torch = self._torch
        raw = ts.raw_stats(torch, device)
        snapshot = ts.take_snapshot(torch, live_blocks=8)
        state = self._devices.get(device)
        try:  # on this thread tensors are safe to read: the census at the moment of failure
            census = take_census(torch, self._optimizers, self._modules, self._device_type).get(device)
        except Exception:
            census = state.census if state is not None else None
        # The autograd engine's threads run no Python: an OOM in backward shows on the training thread.
        phase = inspect_thread(threading.get_ident())
        if phase == "unknown" and self._train_thread not in (None, threading.get_ident()):
            phase = inspect_thread(self._train_thread or 0)
        total = state.memory_total if state is not None else None
        if total is None:  # an OOM before the sampler saw the device
            total, _ = ts.memory_limits(torch, device)
        first = state.persistent_first if state is not None else None
        recent = list(state.recent) if state is not None else []
        last = (recent[-1][0], min(a for _, a in recent)) if recent else None
        return OomReport(
            time=time.time(),
            device=device,
            requested=int(requested),
            device_limit=int(device_limit),
            device_free=int(device_free),
            allocated=int(raw["allocated_bytes"]["all"]["current"]),
            reserved=int(raw["reserved_bytes"]["all"]["current"]),
            step=self.step,
            phase=phase,
            largest_free_block=snapshot.largest_free.get(device) if snapshot else None,
            largest_live_blocks=tuple(snapshot.largest_live.get(device, ())) if snapshot else (),
            census=census,
            device_total=total,
            step_peak=state.boundary_peak if state is not None else None,
            persistent_first=first[1] if first else None,
            persistent_first_step=first[0] if first else None,
            persistent_last=last[1] if last else None,
            persistent_last_step=last[0] if last else None,
            pid=self.pid,
        )

    # -- the sampler thread ----------------------------------------------------------------

    def tick(self) -> AgentSample:
        torch = self._torch
        now = time.monotonic()
        self._rescan_devices()
        self._close_steps()
        phase = inspect_thread(self._train_thread or threading.main_thread().ident or 0)
        self.phase = phase
        if self.snapshots and now - self._last_snapshot >= max(1.0, self._snapshot_cost / GIL_BUDGET):
            snapshot = ts.take_snapshot(torch)
            self._last_snapshot = now
            if snapshot is not None:
                self._snapshot, self._snapshot_cost = snapshot, snapshot.cost
        devices = []
        for state in self._devices.values():
            stats = ts.allocator_stats(torch, state.index, self._snapshot)
            state.max_allocated = max(state.max_allocated, stats.allocated)
            state.max_reserved = max(state.max_reserved, stats.reserved)
            devices.append(AgentDevice(index=state.index, uuid=state.uuid, name=state.name, stats=stats,
                                       census=state.census, last_step=state.last_step,
                                       peak_step=state.peak_step, peak=state.peak,
                                       memory_total=state.memory_total, memory_limit=state.memory_limit))
        sample = AgentSample(
            pid=self.pid,
            time=time.time(),
            torch_version=str(torch.__version__),
            pid_namespace=self._pid_namespace,
            devices=tuple(devices),
            step=self.step,
            phase=phase,
            rank=_env_int("RANK"),
            expandable_segments=ts.expandable_segments(self._snapshot),
            error=self.error,
            last_oom=self.last_oom,
            dropped=self._server.dropped if self._server else 0,
            autocast=self.autocast,
            world_size=self.world_size,
            checkpointing=self.checkpointing,
        )
        self._latest = sample
        if self._server is not None:
            self._server.publish({"type": "sample", "sample": to_dict(sample)})
        return sample

    def _rescan_devices(self, force: bool = False) -> None:
        # The sampler and the training thread (its first step) both look for devices.
        with self._rescan_lock:
            self._rescan_devices_locked(force)

    def _rescan_devices_locked(self, force: bool) -> None:
        now = time.monotonic()
        # CUDA can be initialised a moment before the first allocation: until a device shows
        # up, look at every tick.
        if not force and self._devices and now - self._last_rescan < DEVICE_RESCAN:
            return
        self._last_rescan = now
        for index in ts.used_devices(self._torch):
            if index not in self._devices:
                uuid, name = ts.device_identity(self._torch, index)
                self._devices[index] = _DeviceState(index, uuid, name)
                if self._server is not None:
                    self._server.write_beacon(self._beacon())
        for state in list(self._devices.values()):
            # The program may set or change its cap at any time.
            state.memory_total, state.memory_limit = ts.memory_limits(self._torch, state.index)

    def _close_steps(self) -> None:
        """Turn the step boundaries recorded by the hook into per-step peaks."""
        closed = False
        while self._boundaries:
            boundary = self._boundaries.popleft()
            closed = True
            previous = self._last_boundary
            self._last_boundary = boundary
            if previous is None:
                continue
            for index, state in self._devices.items():
                if index not in boundary.peak or index not in previous.peak:
                    continue
                peak_a, peak_r = boundary.peak[index]
                before_a, before_r = previous.peak[index]
                cur_a, cur_r = boundary.current[index]
                # The allocator's peak never goes down (we never reset it). If it rose during
                # this step, the new value is this step's true peak.
                exact = peak_a > before_a
                if exact:
                    state.peak_step = boundary.step
                sampled_a = max(state.max_allocated, cur_a, previous.current[index][0])
                sampled_r = max(state.max_reserved, cur_r, previous.current[index][1])
                state.last_step = StepPeak(
                    step=boundary.step,
                    duration=boundary.time - previous.time,
                    peak_allocated=peak_a if exact else sampled_a,
                    peak_reserved=peak_r if peak_r > before_r else sampled_r,
                    persistent=cur_a,
                    exact=exact,
                    steps=boundary.step - previous.step,
                )
        # The sampled maxima cover every boundary that closed since the last tick (they all fell
        # between the same two samples); start afresh for the next ones.
        if closed:
            for state in self._devices.values():
                state.max_allocated = state.max_reserved = 0

    def _census_due(self, now: float) -> bool:
        return now - self._last_census >= max(self._census_gap, self._census_cost / GIL_BUDGET)

    def _census(self) -> None:
        self._last_census = time.monotonic()
        started = time.perf_counter()
        try:
            result = take_census(self._torch, self._optimizers, self._modules, self._device_type)
            self._trainable = [weakref.ref(p) for p in parameters_of(self._optimizers, self._modules)
                               if p.requires_grad]
            self.world_size = ts.world_size(self._torch)
            self.checkpointing = ts.checkpointing(self._modules)  # Transformers walks its modules
        except RuntimeError:  # a dict changed size while the program was building its model
            return
        finally:
            self._census_cost = time.perf_counter() - started
        same = all(_counts(result.get(i)) == _counts(state.census) for i, state in self._devices.items())
        self._census_gap = min(2 * self._census_gap, CENSUS_MAX_GAP) if same else 1.0
        for index, state in list(self._devices.items()):
            census = result.get(index)
            if census is not None:
                peak = max(census.gradients, state.census.gradients_peak if state.census else 0)
                census = replace(census, gradients_peak=peak)
            state.census = census

    def _respond(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """Read-only answers to a client's request; the same answer object until the next sample
        (the server encodes it once for every client that asks)."""
        latest = self._latest
        if request.get("type") == "request" and request.get("what") == "sample" and latest:
            if self._answer is None or self._answer[0] is not latest:
                self._answer = (latest, {"type": "sample", "sample": to_dict(latest)})
            return self._answer[1]
        return {"type": "error", "message": f"unknown request {str(request.get('what'))[:80]!r}"}


def _counts(census: TensorCensus | None) -> tuple[object, ...] | None:
    """What a census found, without when."""
    if census is None:
        return None
    return (census.parameters_trainable, census.parameters_frozen, census.gradients, census.optimizer_state,
            census.parameters_16bit, census.seen)


def _pid_namespace() -> int | None:
    """The inode of this process's PID namespace: a monitor outside a container matches it with
    the host PID NVML reports (the agent knows only its own)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value and value.isdigit() else None


class _OomObserver:
    """torch keeps every observer it is given for the life of the process, so one is attached
    per process and forwards to whichever agent is current."""

    def __init__(self) -> None:
        self.attached_to: set[int] = set()  # id() of each torch._C given the observer
        self.agent: Agent | None = None

    def attach(self, torch: Any, agent: Agent) -> None:
        self.agent = agent
        if id(torch._C) in self.attached_to:
            return
        attach = getattr(torch._C, "_cuda_attach_out_of_memory_observer", None)
        if attach is not None:
            with contextlib.suppress(Exception):
                attach(self)
                self.attached_to.add(id(torch._C))

    def __call__(self, device: int, requested: int, device_total: int, device_free: int) -> None:
        agent = self.agent
        if agent is not None:
            agent._on_oom(device, requested, device_total, device_free)


_oom_observer = _OomObserver()
