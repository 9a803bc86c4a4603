"""The phases of a training step, seen through hooks, for the bill at the allocator's peak.

Hooks, all cheap when a step is not measured (a flag test):

- a forward pre/post hook on each model the agent found (not on every module): the forward's
  start and end;
- on a measured step, a pre-hook on the autograd node of the model's output (the first to run
  marks the end of the loss and the start of the model's backward) and a post-accumulate-grad
  hook on every trainable parameter (each gradient as it lands), removed before the optimizer
  step;
- torch's global optimizer-step pre-hook (the agent's post-hook ends the step).

At each of these boundaries a measured step reads the allocator's peak counter; _peaks.py turns
the readings into the bill at the peak. Measuring costs ~15 us a reading, one per gradient
among them, so a deep model's measured step costs milliseconds: only some steps are measured.
The first few are; after that one is measured when the time since the last measured step keeps
everything measuring cost (the hooks put on and taken off, the remembered outputs, the readings)
under BUDGET of wall time, and at least MIN_GAP apart unless the last one saw the peak rise. The
previous step's outputs are remembered (weak references) one step ahead of a measured step, to
know which of them the loop still holds.

Hooks run on the training thread, except the autograd ones, which run on the autograd engine's
thread while the training thread waits in ``backward()``. None of them raises.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from vramtop.model import BACKWARD, BETWEEN_STEPS, FORWARD, LOSS, OPTIMIZER

from ._peaks import ClosedStep, Counted, Reading, close_measured_step

BLOCK = 512  # the caching allocator's granularity
FIRST_MEASURED = 4  # micro-steps measured from the start: the first optimizer step creates Adam's state
MIN_GAP = 2.0  # seconds between measured steps at the least
BUDGET = 0.001  # share of wall time measuring may take (with the boundary reads' READ_BUDGET, 0.2%)
MAX_READINGS = 4096  # per step: a model with more parameters stops reading (it still counts gradients)
OUTPUT_DEPTH = 5  # how deep to look for tensors in a model's output (ModelOutput -> cache -> layers)
OUTPUT_TENSORS = 256

IDLE, IN_FORWARD, AFTER_FORWARD, IN_BACKWARD = range(4)

Reader = Callable[[], dict[int, tuple[int, int]]]  # device -> (allocated current, allocated peak)


class StepPhases:
    """Follows the phases of each step and, on measured steps, the allocator's peak through them.

    ``read`` reads the allocator's counters of every device in use; ``parameters`` lists the
    trainable parameters (cached by the census); ``counted`` gives the census's figures per
    device; ``done`` receives what each measured step leaves per device (_peaks.ClosedStep:
    its highest peak, its residual, and the bill when the peak rose).
    """

    def __init__(self, read: Reader, parameters: Callable[[], list[Any]],
                 counted: Callable[[], Mapping[int, Counted]],
                 done: Callable[[dict[int, ClosedStep]], None],
                 torch: Any, device_type: str = "cuda",
                 register_optimizer_pre_hook: Callable[[Any], Any] | None = None) -> None:
        self._read = read
        self._register_optimizer_pre_hook = register_optimizer_pre_hook
        self._parameters = parameters
        self._counted = counted
        self._done = done
        self._torch = torch
        self._is_grad_enabled = getattr(torch, "is_grad_enabled", lambda: True)
        compiler = getattr(torch, "compiler", None)
        self._is_compiling = getattr(compiler, "is_compiling", None) or (lambda: False)
        self._device_type = device_type
        self.step = 1  # the step in progress, counting from 1
        self.optimizer_stepped = False
        self.stopped = False
        self._state = IDLE
        self._depth = threading.local()
        self._watched: weakref.WeakSet[Any] = weakref.WeakSet()
        # Armed: the models' forward hooks and the optimizer-step pre-hook are registered. They
        # are taken off between measurements (a training loop's steady state pays nothing for
        # them) and put back at an optimizer step boundary when a measurement is due.
        self.armed = False
        self._handles: list[Any] = []  # forward hooks on the watched models, the optimizer pre-hook
        self._grad_handles: list[Any] = []
        self._micro_steps = 0
        self._measure = False  # this micro-step is measured
        self._remember = False  # remember this micro-step's outputs (the next one is measured)
        self._remembered = False  # the previous micro-step's outputs are remembered
        self._next_measure = 0.0
        self._cost = 0.0  # seconds spent measuring since the last measured micro-step closed
        self._readings: list[Reading] = []
        self._anchor: dict[int, int] = {}
        self._grads: dict[int, int] = {}
        self._grad_storages: set[tuple[int, int]] = set()
        self._kept: dict[int, int] = {}
        self._outputs: list[tuple[weakref.ref[Any], int, int, int]] = []  # (tensor, device, storage, bytes)
        self._previous_outputs: list[tuple[weakref.ref[Any], int, int, int]] = []
        self._lock = threading.Lock()  # readings come from the training and autograd threads

    # -- wiring --------------------------------------------------------------------------------

    def watch(self, model: Any) -> None:
        """Follow a model's forward (once). Call on the training thread."""
        if model in self._watched:
            return
        self._watched.add(model)
        if self.armed:
            self._hook(model)

    def arm(self) -> None:
        """Put the hooks on. Call on the training thread, outside any forward."""
        if self.armed or self.stopped:
            return
        self.armed = True
        for model in list(self._watched):
            self._hook(model)
        if self._register_optimizer_pre_hook is not None:
            with contextlib.suppress(Exception):
                self._handles.append(self._register_optimizer_pre_hook(self._optimizer_pre_hook))

    def disarm(self) -> None:
        """Take the hooks off. Call on the training thread, outside any forward."""
        if self.armed:
            # The steps that follow go unseen: nothing remembered from before them holds after.
            self._remembered = False
            self._previous_outputs = []
            self._anchor = {}
            self._cost = 0.0
        self.armed = False
        for handle in self._handles:
            with contextlib.suppress(Exception):
                handle.remove()
        self._handles.clear()

    def _hook(self, model: Any) -> None:
        try:
            self._handles.append(model.register_forward_pre_hook(self._before_forward))
            try:
                self._handles.append(model.register_forward_hook(self._after_forward, always_call=True))
            except TypeError:  # torch < 2.1
                self._handles.append(model.register_forward_hook(self._after_forward))
        except Exception:
            pass

    def _optimizer_pre_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.before_optimizer()

    def forward_started(self, model: Any) -> None:
        """A just-watched model's first call: its own pre-hook was registered too late for it."""
        if self.armed:
            self._before_forward(model, ())

    @property
    def removed(self) -> bool:
        return self.stopped and not self._handles and not self._grad_handles

    def remove(self) -> None:
        """Take every hook off for good. Call on the training thread."""
        self.stopped = True
        self.disarm()
        self._drop_grad_hooks()

    # -- forward ---------------------------------------------------------------------------------

    def _before_forward(self, module: Any, args: Any) -> None:
        try:
            if self._is_compiling():
                return  # traced into a compiled graph: do nothing there
            depth = getattr(self._depth, "value", 0)
            self._depth.value = depth + 1
            if depth or self.stopped:
                return
            if self._state == AFTER_FORWARD and self._outputs_need_backward:
                self._state = IN_FORWARD  # another model of the same forward (an encoder, then a decoder)
                return
            if self._state != IDLE:
                self._close(None)  # gradient accumulation, or a loop of forward passes
            self._open()
        except Exception:
            pass

    def _after_forward(self, module: Any, args: Any, output: Any) -> None:
        try:
            if self._is_compiling():
                return
            depth = max(0, getattr(self._depth, "value", 1) - 1)
            self._depth.value = depth
            if depth or self.stopped or self._state != IN_FORWARD:
                return
            self._state = AFTER_FORWARD
            # Under grad mode a backward follows; a model called next belongs to the same forward.
            self._outputs_need_backward = bool(self._is_grad_enabled())
            if not (self._remember or self._measure):
                return
            started = time.perf_counter()
            tensors = list(_tensors(output))
            if self._remember:
                self._outputs.extend(self._describe(tensors))
            if self._measure:
                self._take(FORWARD)
                self._hook_backward(tensors)
            self._cost += time.perf_counter() - started
        except Exception:
            pass

    _outputs_need_backward = False

    # -- backward --------------------------------------------------------------------------------

    def _hook_backward(self, tensors: list[Any]) -> None:
        """On a measured step: the first output node to run in backward, and each gradient."""
        nodes = [n for n in (getattr(t, "grad_fn", None) for t in tensors) if n is not None]
        for node in nodes[:8]:  # the loss comes first in Transformers' outputs
            with contextlib.suppress(Exception):
                node.register_prehook(self._backward_started)
        if self._grad_handles:
            return
        for p in self._parameters():
            register = getattr(p, "register_post_accumulate_grad_hook", None)
            if register is None:
                return  # torch < 2.1: gradients at a backward peak count as at the backward start
            with contextlib.suppress(Exception):
                self._grad_handles.append(register(self._gradient_landed))

    def _backward_started(self, grad_outputs: Any) -> None:
        try:
            if self._state == AFTER_FORWARD and not self.stopped:
                self._state = IN_BACKWARD
                if self._measure:
                    started = time.perf_counter()
                    self._kept = self._alive(self._previous_outputs)
                    self._take(LOSS)
                    self._cost += time.perf_counter() - started
        except Exception:
            pass

    def _gradient_landed(self, parameter: Any) -> None:
        try:
            if not self._measure or self.stopped:
                return
            started = time.perf_counter()
            grad = _local(parameter.grad)
            if grad is not None and grad.device.type == self._device_type:
                storage = grad.untyped_storage()
                key = (grad.device.index or 0, storage.data_ptr())
                if key not in self._grad_storages:
                    self._grad_storages.add(key)
                    self._grads[key[0]] = self._grads.get(key[0], 0) + _rounded(storage.nbytes())
            if len(self._readings) < MAX_READINGS:
                self._take(BACKWARD)
            self._cost += time.perf_counter() - started
        except Exception:
            pass

    # -- the optimizer -----------------------------------------------------------------------------

    def before_optimizer(self) -> None:
        """The global optimizer-step pre-hook: the backward (and gradient clipping) is over."""
        try:
            started = time.perf_counter()
            if self._grad_handles:
                self._drop_grad_hooks()
            if self.stopped or self._state == IDLE:
                return
            if self._measure:
                self._take(BACKWARD)
                self._cost += time.perf_counter() - started
            self._state = IN_BACKWARD  # still this micro-step until the optimizer step ends
        except Exception:
            pass

    def after_optimizer(self, steps_done: int) -> None:
        """The agent's optimizer-step post-hook: the step is over. Here, between two forwards on
        the training thread, the hooks go on when the next steps are to be measured, and off
        when they are not."""
        try:
            if self.stopped:
                return
            if self._state != IDLE:
                self._close(OPTIMIZER)
            self.optimizer_stepped = True
            self.step = steps_done + 1
            if self._wanted(time.monotonic()):
                self.arm()
            else:
                self.disarm()
        except Exception:
            pass

    def _wanted(self, now: float) -> bool:
        """Whether the next micro-step needs the hooks: one of the first, or one that remembers
        outputs or measures because a measurement is due."""
        return self._micro_steps < FIRST_MEASURED or now >= self._next_measure

    @property
    def next_due(self) -> float:
        """The monotonic time from which an optimizer step boundary has work here (0: the next
        one has). Until then after_optimizer has nothing to do and need not be called."""
        if self.armed or self._state != IDLE or self._micro_steps < FIRST_MEASURED:
            return 0.0
        return self._next_measure

    # -- measuring -------------------------------------------------------------------------------

    def _open(self) -> None:
        now = time.monotonic()
        self._micro_steps += 1
        due = now >= self._next_measure
        self._measure = self._micro_steps <= FIRST_MEASURED or (due and self._remembered)
        self._remember = self._measure or due
        self._state = IN_FORWARD
        self._outputs_need_backward = False
        if not self._measure:
            return  # the steady state: nothing to set up
        self._readings = []
        self._grad_storages = set()
        started = time.perf_counter()
        self._grads = self._count_gradients()
        self._kept = self._alive(self._previous_outputs)
        self._take(BETWEEN_STEPS)
        self._cost += time.perf_counter() - started

    def _close(self, phase: str | None) -> None:
        """End the micro-step; with ``phase`` (the optimizer) read the counters once more."""
        measured = self._measure
        started = time.perf_counter()
        if self._grad_handles:
            self._drop_grad_hooks()
        if measured and phase is not None:
            self._take(phase)
        self._cost += time.perf_counter() - started
        self._state = IDLE
        if self._remember or self._previous_outputs:
            self._previous_outputs = self._outputs if self._remember else []
            self._outputs = []
        self._remembered = self._remember
        self._measure = self._remember = False
        if not measured:
            self._anchor = {}  # the next measured step cannot tell when, before it, the peak rose
            return
        started = time.perf_counter()
        readings, anchor = self._readings, self._anchor
        self._readings = []
        self._anchor = dict(readings[-1].peak) if readings else {}
        closed = close_measured_step(readings, anchor, self.step, self._counted(), self.optimizer_stepped)
        self._done(closed)
        now = time.monotonic()
        spacing = (self._cost + time.perf_counter() - started) / BUDGET
        self._cost = 0.0
        # A peak that rose may go on rising: measure again as soon as the budget allows.
        rose = any(c.bill is not None for c in closed.values())
        self._next_measure = now + (spacing if rose else max(MIN_GAP, spacing))

    def _take(self, phase: str) -> None:
        counters = self._read()
        reading = Reading(phase, {d: c[1] for d, c in counters.items()}, {d: c[0] for d, c in counters.items()},
                          dict(self._grads), dict(self._kept))
        with self._lock:
            self._readings.append(reading)

    def _drop_grad_hooks(self) -> None:
        for handle in self._grad_handles:
            with contextlib.suppress(Exception):
                handle.remove()
        self._grad_handles.clear()

    def _count_gradients(self) -> dict[int, int]:
        grads: dict[int, int] = {}
        for p in self._parameters():
            grad = _local(getattr(p, "grad", None))
            if grad is None or grad.device.type != self._device_type:
                continue
            storage = grad.untyped_storage()
            key = (grad.device.index or 0, storage.data_ptr())
            if key not in self._grad_storages:
                self._grad_storages.add(key)
                grads[key[0]] = grads.get(key[0], 0) + _rounded(storage.nbytes())
        return grads

    def _describe(self, tensors: list[Any]) -> Iterator[tuple[weakref.ref[Any], int, int, int]]:
        seen = set()
        for t in tensors:
            t = _local(t)
            if t.device.type != self._device_type:
                continue
            storage = t.untyped_storage()
            key = (t.device.index or 0, storage.data_ptr())
            if key in seen or not storage.nbytes():
                continue
            seen.add(key)
            yield weakref.ref(t), key[0], key[1], _rounded(storage.nbytes())

    @staticmethod
    def _alive(outputs: list[tuple[weakref.ref[Any], int, int, int]]) -> dict[int, int]:
        """Bytes of remembered outputs still alive (a tensor object lives while anything, the
        program or autograd, holds it)."""
        kept: dict[int, int] = {}
        storages = set()
        for ref, device, storage, size in outputs:
            if ref() is not None and (device, storage) not in storages:
                storages.add((device, storage))
                kept[device] = kept.get(device, 0) + size
        return kept


def _compiling(torch: Any) -> bool:
    compiler = getattr(torch, "compiler", None)
    fn = getattr(compiler, "is_compiling", None)
    try:
        return bool(fn()) if fn is not None else False
    except Exception:
        return False


def _local(tensor: Any) -> Any:
    return getattr(tensor, "_local_tensor", tensor)


def _rounded(nbytes: int) -> int:
    return -(-nbytes // BLOCK) * BLOCK


def _tensors(obj: Any, depth: int = 0, seen: set[int] | None = None) -> Iterator[Any]:
    """Tensors in a model's output: in tuples, lists, dicts (Transformers' ModelOutput) and the
    attributes of plain objects (a key-value cache), to a bounded depth and count."""
    seen = set() if seen is None else seen
    if id(obj) in seen or len(seen) > OUTPUT_TENSORS or depth > OUTPUT_DEPTH:
        return
    seen.add(id(obj))
    if hasattr(obj, "untyped_storage") and hasattr(obj, "grad_fn"):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item, depth + 1, seen)
    elif isinstance(obj, dict):
        for item in list(obj.values()):
            yield from _tensors(item, depth + 1, seen)
    elif hasattr(obj, "__dict__") and not callable(getattr(obj, "forward", None)):
        for item in list(vars(obj).values()):
            yield from _tensors(item, depth + 1, seen)
