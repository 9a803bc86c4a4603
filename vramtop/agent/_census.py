"""Counting the memory of parameters, gradients and optimizer state from the tensors themselves.

Discovery needs no user code: optimizers come from torch's global optimizer-step hook, models
from the training thread's stack (see _stack.py). Every tensor is counted once, by the storage
it lives in, so tied weights and views are not double-counted; DTensor/FSDP2 parameters count
their local shard. Sizes are rounded up to the caching allocator's 512-byte block granularity,
the unit of ``allocated_bytes``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from vramtop.model import TensorCensus

BLOCK = 512
TRAINABLE, FROZEN, GRADIENTS, OPTIMIZER, PARAMS_16BIT, BUFFERS = range(6)


def _local(tensor: Any) -> Any:
    """The process-local part of a distributed tensor (DTensor keeps it in ``_local_tensor``)."""
    return getattr(tensor, "_local_tensor", tensor)


class _Counter:
    def __init__(self, torch: Any, device_type: str) -> None:
        self.torch = torch
        self.device_type = device_type
        self.seen: set[tuple[int, int]] = set()
        self.bytes: dict[int, list[int]] = {}

    def add(self, tensor: Any, slot: int) -> None:
        t = _local(tensor)
        if not isinstance(t, self.torch.Tensor) or t.device.type != self.device_type:
            return
        storage = t.untyped_storage()
        index = t.device.index or 0
        key = (index, storage.data_ptr())
        if key in self.seen or not storage.nbytes():
            return
        self.seen.add(key)
        per_device = self.bytes.setdefault(index, [0, 0, 0, 0, 0, 0])
        size = -(-storage.nbytes() // BLOCK) * BLOCK
        per_device[slot] += size
        if slot in (TRAINABLE, FROZEN) and t.is_floating_point() and t.element_size() <= 2:
            per_device[PARAMS_16BIT] += size  # bf16/fp16 weights: mixed precision is already there


def parameters_of(optimizers: Iterable[Any], modules: Iterable[Any]) -> list[Any]:
    """Every parameter of the models and optimizers, once each."""
    params: dict[int, Any] = {}
    for module in modules:
        for p in module.parameters():
            params.setdefault(id(p), p)
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                params.setdefault(id(p), p)
    return list(params.values())


def take_census(torch: Any, optimizers: Iterable[Any], modules: Iterable[Any],
                device_type: str = "cuda") -> dict[int, TensorCensus]:
    """Per device index, the bytes of each persistent category (``device_type`` is "cpu" only in
    CPU-only tests). Call it on the training thread only (see _runtime.py)."""
    optimizers = list(optimizers)
    modules = list(modules)
    params = parameters_of(optimizers, modules)
    counter = _Counter(torch, device_type)
    for p in params:
        counter.add(p, TRAINABLE if p.requires_grad else FROZEN)
    for module in modules:
        for b in module.buffers():
            counter.add(b, BUFFERS)
    for p in params:
        if p.grad is not None:
            counter.add(p.grad, GRADIENTS)
    opaque: list[str] = []
    elsewhere: list[str] = []
    for opt in optimizers:
        state = getattr(opt, "state", None)
        if not isinstance(state, dict):
            opaque.append(type(opt).__name__)
            continue
        if not state and not type(opt).__module__.startswith("torch."):
            # torch's own SGD without momentum keeps no state; an optimizer from elsewhere with
            # an empty .state after a step may keep its buffers in attributes of its own.
            elsewhere.append(type(opt).__name__)
        for per_param in list(state.values()):
            if isinstance(per_param, dict):
                for value in list(per_param.values()):
                    counter.add(value, OPTIMIZER)
    seen = describe(optimizers, modules, len(params), opaque, elsewhere)
    now = time.time()
    complete = bool(optimizers) and bool(modules) and not opaque and not elsewhere
    return {
        device: TensorCensus(
            parameters_trainable=b[TRAINABLE],
            parameters_frozen=b[FROZEN],
            gradients=b[GRADIENTS],
            optimizer_state=b[OPTIMIZER],
            time=now,
            seen=seen,
            complete=complete,
            parameters_16bit=b[PARAMS_16BIT],
            buffers=b[BUFFERS],
        )
        for device, b in counter.bytes.items()
    }


def describe(optimizers: list[Any], modules: list[Any], n_params: int, opaque: list[str],
             elsewhere: list[str]) -> str:
    """What discovery saw, in words, so a user can judge what the bill covers."""
    names = sorted({type(o).__name__ for o in optimizers})
    parts = [f"{len(optimizers)} optimizer{'s' if len(optimizers) != 1 else ''}"
             + (f" ({', '.join(names)})" if names else "")]
    parts.append(f"{len(modules)} model{'s' if len(modules) != 1 else ''}"
                 + (f" ({', '.join(sorted({type(m).__name__ for m in modules}))})" if modules else ""))
    parts.append(f"{n_params} parameter tensors")
    if not optimizers:
        parts.append("no optimizer step seen yet: optimizer state not attributed")
    if not modules:
        parts.append("no model forward seen yet: frozen parameters not attributed")
    if opaque:
        parts.append(f"state of {', '.join(opaque)} not readable")
    if elsewhere:
        parts.append(f"{', '.join(elsewhere)} keeps nothing in .state: state it holds elsewhere shows as "
                     "other persistent")
    return "; ".join(parts)
