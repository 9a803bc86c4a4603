"""When the census runs, and what it leaves for the rest of the agent.

The census repeats at least every second; while its result stays the same (a steady training
loop) the gap doubles up to CENSUS_MAX_GAP, and any change brings it back to a second. It holds
the GIL while it walks the tensors, so a slow one is spaced further (GIL_BUDGET in _torchstats.py). It reads
tensors: call it on the training thread only (see _runtime.py).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from vramtop.model import TensorCensus

from . import _torchstats as ts
from ._census import parameters_of, take_census
from ._devices import DeviceState

CENSUS_MAX_GAP = 8.0


class CensusSchedule:
    """``optimizers`` and ``models`` are the live (weak) sets discovery fills."""

    def __init__(self, device_type: str, optimizers: Iterable[Any], models: Iterable[Any]) -> None:
        self._device_type = device_type
        self._optimizers = optimizers
        self._models = models
        self.last = 0.0  # monotonic time of the last census
        self.cost = 0.0  # seconds the last one took
        self.gap = 1.0
        self.world_size: int | None = None
        self.rank: int | None = None  # torch.distributed's, for programs that pass it to init_process_group
        self.checkpointing: bool | None = None
        self._trainable: list[weakref.ref[Any]] | None = None  # from the last census

    def due(self, now: float) -> bool:
        return now - self.last >= max(self.gap, self.cost / ts.GIL_BUDGET)

    def take(self, torch: Any, devices: Mapping[int, DeviceState]) -> None:
        """Count now and give each device its census (the gradients' peak carried along)."""
        self.last = time.monotonic()
        started = time.perf_counter()
        try:
            result = take_census(torch, self._optimizers, self._models, self._device_type)
            self._trainable = [weakref.ref(p) for p in parameters_of(self._optimizers, self._models)
                               if p.requires_grad]
            self.world_size = ts.world_size(torch)
            self.rank = ts.rank(torch)
            self.checkpointing = ts.checkpointing(self._models)  # Transformers walks its modules
        except RuntimeError:  # a dict changed size while the program was building its model
            return
        finally:
            self.cost = time.perf_counter() - started
        same = all(_counts(result.get(i)) == _counts(state.census) for i, state in devices.items())
        self.gap = min(2 * self.gap, CENSUS_MAX_GAP) if same else 1.0
        for index, state in devices.items():
            census = result.get(index)
            if census is not None:
                peak = max(census.gradients, state.census.gradients_peak if state.census else 0)
                census = replace(census, gradients_peak=peak)
            state.census = census

    def trainable_parameters(self) -> list[Any]:
        """The trainable parameters the last census found, still alive."""
        if self._trainable is None:  # the first forward, before any census
            return [p for p in parameters_of(self._optimizers, self._models) if p.requires_grad]
        return [p for p in (ref() for ref in self._trainable) if p is not None]


def _counts(census: TensorCensus | None) -> tuple[object, ...] | None:
    """What a census found, without when."""
    if census is None:
        return None
    return (census.parameters_trainable, census.parameters_frozen, census.gradients, census.optimizer_state,
            census.parameters_16bit, census.seen)
