"""FakeCudaTorch: real (CPU) torch with a fake CUDA allocator, for CPU-only agent tests.

Everything but CUDA is the real torch: modules, optimizers, their global step hooks, tensors.
The fake replaces only the host-side allocator bookkeeping the agent reads
(``torch._C._cuda_memoryStats``, ``_cuda_memorySnapshot``, ``torch.cuda.is_initialized`` ...)
and records any call the agent must never make.
"""

from __future__ import annotations

import textwrap
import threading
import time
from types import SimpleNamespace
from typing import Any

# Submodules torch imports on first access (its module __getattr__): _dynamo, _inductor, ...
LAZY_MODULES = ("_dynamo", "_inductor", "_export", "onnx")
FORBIDDEN = ("reset_peak_memory_stats", "reset_accumulated_memory_stats", "empty_cache", "synchronize",
             "set_per_process_memory_fraction", "init", "set_device", "_lazy_init")


class FakeCudaAllocator:
    """Bytes allocated/reserved on fake device 0, with a peak that only ever rises."""

    def __init__(self) -> None:
        self.allocated = 0
        self.reserved = 0
        self.allocated_peak = 0
        self.reserved_peak = 0
        self.free_blocks: list[int] = []
        self.num_alloc_retries = 0
        self.num_ooms = 0
        self.fail_stats = False
        self.read_delay = 0.0  # seconds each stats() read takes, to play a slow allocator
        self.reads_by_thread: dict[int, int] = {}
        self.snapshot_args: list[tuple[Any, ...]] = []  # the arguments of each snapshot asked for
        self.lock = threading.Lock()

    def set(self, allocated: int, reserved: int | None = None) -> None:
        with self.lock:
            self.allocated = allocated
            self.reserved = max(self.reserved, allocated) if reserved is None else reserved
            self.allocated_peak = max(self.allocated_peak, self.allocated)
            self.reserved_peak = max(self.reserved_peak, self.reserved)

    def stats(self, device: int) -> dict[str, Any]:
        if self.fail_stats:
            raise RuntimeError("fake allocator failure")
        me = threading.get_ident()
        self.reads_by_thread[me] = self.reads_by_thread.get(me, 0) + 1
        if self.read_delay:
            time.sleep(self.read_delay)
        with self.lock:
            def stat(current: int, peak: int) -> dict[str, Any]:
                return {"all": {"current": current, "peak": peak, "allocated": peak, "freed": 0}}
            return {
                "allocated_bytes": stat(self.allocated, self.allocated_peak),
                "reserved_bytes": stat(self.reserved, self.reserved_peak),
                "active_bytes": stat(self.allocated, self.allocated_peak),
                "requested_bytes": stat(self.allocated - self.allocated // 100, self.allocated_peak),
                "inactive_split_bytes": stat(sum(self.free_blocks), 0),
                "num_alloc_retries": self.num_alloc_retries,
                "num_ooms": self.num_ooms,
                "num_sync_all_streams": 0,
                "num_device_alloc": 1 if self.reserved else 0,
                "num_device_free": 0,
            }

    def snapshot(self, *args: Any) -> dict[str, Any]:
        self.snapshot_args.append(args)
        blocks = [{"size": b, "state": "inactive"} for b in self.free_blocks]
        blocks.append({"size": self.allocated, "state": "active_allocated"})
        return {"segments": [{"device": 0, "blocks": blocks}],
                "allocator_settings": {"expandable_segments": False}}


class FakeMemoryHistory:
    """``torch.cuda.memory``'s allocation history, faked: remembers how it was turned on and
    off, and from which threads; ``_snapshot`` gives the allocator's blocks with the stacks in
    ``stacks`` (block size -> frames, innermost first, as PyTorch records them) and a trace of
    those allocations. Reading stacks calls ``symbolize`` first, as PyTorch's symbolizer looks
    up ``torch._inductor`` (importing it) before it turns stacks into text."""

    def __init__(self, allocator: FakeCudaAllocator, symbolize: Any = None) -> None:
        self.allocator = allocator
        self.symbolize = symbolize
        self.calls: list[dict[str, Any]] = []
        self.threads: list[int] = []  # the thread of each call
        self.stacks: dict[int, list[dict[str, Any]]] = {}

    @property
    def on(self) -> bool:
        return bool(self.calls) and self.calls[-1]["enabled"] is not None

    def _record_memory_history(self, enabled: Any = "all", **kwargs: Any) -> None:
        self.calls.append({"enabled": enabled, **kwargs})
        self.threads.append(threading.get_ident())

    def _snapshot(self, device: Any = None) -> dict[str, Any]:
        if self.stacks and self.symbolize is not None:
            self.symbolize()
        blocks = [{"size": size, "requested_size": size, "state": "active_allocated", "frames": frames}
                  for size, frames in self.stacks.items()]
        blocks += [{"size": b, "requested_size": 0, "state": "inactive", "frames": []}
                   for b in self.allocator.free_blocks]
        traces = [{"action": "alloc", "addr": i, "size": size, "stream": 0, "frames": frames}
                  for i, (size, frames) in enumerate(self.stacks.items())]
        total = sum(b["size"] for b in blocks)
        return {"segments": [{"device": 0, "address": 0, "total_size": total, "allocated_size": total,
                              "active_size": total, "requested_size": total, "stream": 0,
                              "segment_type": "large", "blocks": blocks}],
                "device_traces": [traces]}


class FakeC(SimpleNamespace):
    """``torch._C`` with the allocator's functions faked: the real module's other functions
    (the autograd engine's) stay reachable; its other CUDA ones do not."""

    def __init__(self, real: Any, **fakes: Any) -> None:
        super().__init__(**fakes)
        self._real = real

    def __getattr__(self, name: str) -> Any:
        if "cuda" in name.lower() or self._real is None:
            raise AttributeError(name)
        return getattr(self._real, name)


class FakeCudaTorch:
    """Looks like the ``torch`` module to the agent; CUDA parts are fake, the rest is real."""

    def __init__(self, torch: Any, allocator: FakeCudaAllocator | None = None) -> None:
        self._torch = torch
        self.allocator = allocator or FakeCudaAllocator()
        self.initialized = False
        self.forbidden_calls: list[str] = []
        self.oom_observers: list[Any] = []
        cuda = SimpleNamespace(
            is_initialized=lambda: self.initialized,
            device_count=lambda: 1,
            get_device_properties=lambda i: SimpleNamespace(
                name="Fake GPU", uuid="c597915a-9fc3-3bb6-c3bc-f3d5a34ccdee", total_memory=80 << 30),
            memory_stats=lambda device=None: {},
        )
        self.lazy_imports: list[tuple[str, int]] = []  # (submodule, thread) of each first access
        self.history = FakeMemoryHistory(self.allocator, self._symbolize)
        cuda.memory = self.history
        for name in FORBIDDEN:
            setattr(cuda, name, self._forbidden(name))
        self.cuda = cuda
        self._C = FakeC(
            getattr(torch, "_C", None),
            _cuda_memoryStats=self.allocator.stats,
            _cuda_memorySnapshot=self._memory_snapshot,
            _cuda_isHistoryEnabled=lambda: self.history.on,
            _cuda_attach_out_of_memory_observer=self.oom_observers.append,
        )

    def _symbolize(self) -> None:
        hasattr(self, "_inductor")  # what PyTorch's symbolizer does before reading Python stacks

    def _memory_snapshot(self, *args: Any) -> dict[str, Any]:
        # With the history on, the blocks carry the stacks that allocated them.
        if self.history.on and self.history.stacks:
            self._symbolize()
        return self.allocator.snapshot(*args)

    def _forbidden(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> None:
            self.forbidden_calls.append(name)
        return call

    def __getattr__(self, name: str) -> Any:
        if name in LAZY_MODULES:
            # As torch's module __getattr__ does: the first access imports the submodule, then
            # the finished import sets it as an attribute.
            self.lazy_imports.append((name, threading.get_ident()))
            # The real one where the real torch has it already (the program's torch._dynamo).
            module = vars(self._torch).get(name) or SimpleNamespace(__name__=f"torch.{name}")
            setattr(self, name, module)
            return module
        return getattr(self._torch, name)


def bare_namespace_source(allocated: int, reserved: int) -> str:
    """The start of a script for a process without torch (or another interpreter): this file
    loaded by its location (so neither vramtop nor torch is imported), a FakeCudaTorch on a bare
    namespace installed as ``torch``, its CUDA initialised, ``allocated``/``reserved`` bytes held.
    All an agent needs to serve."""
    return textwrap.dedent(f"""
        import importlib.util, sys, time, types
        spec = importlib.util.spec_from_file_location("fake_cuda", {__file__!r})
        fake_cuda = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fake_cuda)
        fake = fake_cuda.FakeCudaTorch(types.SimpleNamespace(__version__="0-fake"))
        fake.allocator.set({allocated}, {reserved})
        sys.modules["torch"] = fake
        fake.initialized = True
    """)
