"""Reading PyTorch's caching allocator without side effects.

Only host-side allocator bookkeeping is read: no call here creates a CUDA context,
synchronises, resets a statistic, frees the cache or changes allocator settings. Private torch
functions are feature-detected; when one is missing the public equivalent is used, and when
that fails the value is simply absent.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

from vramtop.model import AllocatorStats

# Reads done while holding the GIL (counters at step boundaries, snapshots, the census) are
# spaced so that they take at most this share of wall time, however large the model or the
# allocator's block list.
GIL_BUDGET = 0.002


def cuda_ready(torch: Any) -> bool:
    """True once the program itself has initialised CUDA (we never do it for it)."""
    try:
        return bool(torch.cuda.is_initialized())
    except Exception:
        return False


def raw_stats(torch: Any, device: int) -> dict[str, Any]:
    """Nested allocator stats; ``torch._C._cuda_memoryStats`` is ~7x cheaper than memory_stats."""
    fn = getattr(torch._C, "_cuda_memoryStats", None)
    if fn is not None:
        try:
            return dict(fn(device))
        except Exception:
            pass
    flat = torch.cuda.memory_stats(device)
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def _get(stats: dict[str, Any], *path: str) -> int:
    node: Any = stats
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return 0
        node = node[part]
    return int(node) if isinstance(node, int) else 0


# Names in the raw (nested) stats for the public memory_stats() keys.
_RAW = {
    "allocated": ("allocated_bytes", "all", "current"),
    "reserved": ("reserved_bytes", "all", "current"),
    "active": ("active_bytes", "all", "current"),
    "requested": ("requested_bytes", "all", "current"),
    "inactive_split": ("inactive_split_bytes", "all", "current"),
    "allocated_peak": ("allocated_bytes", "all", "peak"),
    "reserved_peak": ("reserved_bytes", "all", "peak"),
}


def allocator_stats(torch: Any, device: int, snapshot: SnapshotSummary | None) -> AllocatorStats:
    raw = raw_stats(torch, device)
    values = {name: _get(raw, *path) for name, path in _RAW.items()}
    return AllocatorStats(
        **values,
        num_alloc_retries=_get(raw, "num_alloc_retries"),
        num_ooms=_get(raw, "num_ooms"),
        num_sync_all_streams=_get(raw, "num_sync_all_streams"),
        num_device_alloc=_get(raw, "num_device_alloc"),
        num_device_free=_get(raw, "num_device_free"),
        largest_free_block=None if snapshot is None else snapshot.largest_free.get(device, 0),
        free_in_segments=None if snapshot is None else snapshot.free.get(device, 0),
        segments=None if snapshot is None else snapshot.segments.get(device, 0),
        snapshot_time=None if snapshot is None else snapshot.time,
    )


def used_devices(torch: Any) -> list[int]:
    """CUDA devices on which this process's allocator holds or has held memory."""
    try:
        count = int(torch.cuda.device_count())
    except Exception:
        return []
    used = []
    for index in range(count):
        try:
            raw = raw_stats(torch, index)
        except Exception:
            continue
        if _get(raw, "num_device_alloc") or _get(raw, "reserved_bytes", "all", "current"):
            used.append(index)
    return used


def device_identity(torch: Any, index: int) -> tuple[str | None, str | None]:
    """(NVML-style UUID "GPU-...", name) of a device the program already uses."""
    try:
        props = torch.cuda.get_device_properties(index)
    except Exception:
        return None, None
    uuid = getattr(props, "uuid", None)
    text = str(uuid) if uuid is not None else None
    if text and not text.startswith(("GPU-", "MIG-")):
        text = f"GPU-{text}"
    return text, getattr(props, "name", None)


def memory_limits(torch: Any, index: int) -> tuple[int | None, int | None]:
    """(the device's memory as CUDA reports it, the process's cap on it or None): the cap is
    ``set_per_process_memory_fraction``'s fraction of that memory, where torch can say it."""
    try:
        total = int(torch.cuda.get_device_properties(index).total_memory)
    except Exception:
        return None, None
    # The private call skips the public one's lazy-init check (CUDA is initialised already).
    getter = getattr(torch._C, "_cuda_getMemoryFraction", None) or getattr(
        torch.cuda, "get_per_process_memory_fraction", None)
    try:
        fraction = float(getter(index)) if getter is not None else 1.0
    except Exception:
        fraction = 1.0
    return total, (int(total * fraction) if 0.0 < fraction < 1.0 else None)


class SnapshotSummary:
    """Largest free block and segment count per device, from one allocator snapshot."""

    def __init__(self, largest_free: dict[int, int], free: dict[int, int], segments: dict[int, int],
                 settings: dict[str, Any], cost: float) -> None:
        self.largest_free = largest_free
        self.free = free
        self.largest_live: dict[int, list[int]] = {}  # biggest allocated blocks, filled on demand
        self.segments = segments
        self.settings = settings
        self.cost = cost  # seconds the snapshot took: it grows with the number of blocks
        self.time = time.time()


def take_snapshot(torch: Any, live_blocks: int = 0, light: bool = False) -> SnapshotSummary | None:
    """Walk the allocator's segments (no stack traces are kept). ``light``: the allocation
    history is on (``--trace``); ask for the segments without its trace entries, which a full
    snapshot would turn into Python objects each time. With the history on (ours or the
    program's) none is taken until its stacks can be read without an import (stacks_readable)."""
    if (light or history_on(torch)) and not stacks_readable(torch):
        return None
    started = time.perf_counter()
    fn = getattr(torch._C, "_cuda_memorySnapshot", None)
    try:
        if fn is not None:
            snap = _light_snapshot(fn) if light else None
            if snap is None:
                try:
                    snap = fn(None)
                except TypeError:
                    snap = fn()
        else:
            snap = {"segments": torch.cuda.memory_snapshot()}
    except Exception:
        return None
    segments = snap.get("segments", []) if isinstance(snap, dict) else snap
    largest: dict[int, int] = {}
    free: dict[int, int] = {}
    count: dict[int, int] = {}
    live: dict[int, list[int]] = {}
    for seg in segments:
        device = int(seg.get("device", 0))
        count[device] = count.get(device, 0) + 1
        largest.setdefault(device, 0)
        free.setdefault(device, 0)
        for block in seg.get("blocks", ()):
            if block.get("state") == "inactive":
                size = int(block.get("size", 0))
                largest[device] = max(largest[device], size)
                free[device] += size
            elif live_blocks and block.get("state") == "active_allocated":
                live.setdefault(device, []).append(int(block.get("size", 0)))
    settings = snap.get("allocator_settings", {}) if isinstance(snap, dict) else {}
    summary = SnapshotSummary(largest, free, count, settings if isinstance(settings, dict) else {},
                              time.perf_counter() - started)
    summary.largest_live = {d: sorted(sizes, reverse=True)[:live_blocks] for d, sizes in live.items()}
    return summary


def stacks_readable(torch: Any) -> bool:
    """Whether a snapshot holding the allocation history's Python stacks can be taken without
    importing anything. PyTorch turns those stacks into text with ``hasattr(torch, "_inductor")``,
    which imports torch._inductor on first access (some 800 modules, torch._dynamo among them):
    from another thread, that import races the program's own (its first optimizer imports
    torch._dynamo) and hands one of them a half-initialised module. torch sets the attribute
    only once the program's import of it has finished."""
    try:
        return "_inductor" in vars(torch)
    except TypeError:
        return False


def history_on(torch: Any) -> bool:
    """Whether the allocation history records stacks (the program may turn it on itself);
    False where this torch cannot say."""
    fn = getattr(torch._C, "_cuda_isHistoryEnabled", None)
    try:
        return bool(fn()) if fn is not None else False
    except Exception:
        return False


def _light_snapshot(fn: Any) -> Any:
    """A snapshot without trace entries (recent torch takes (pool id, pool id, include_traces),
    as torch.cuda.memory_snapshot passes them); None where this torch does not take that."""
    try:
        return fn((0, 0, False))
    except Exception:
        return None


def expandable_segments(snapshot: SnapshotSummary | None) -> bool | None:
    if snapshot is not None and "expandable_segments" in snapshot.settings:
        return bool(snapshot.settings["expandable_segments"])
    conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "") + "," + os.environ.get("PYTORCH_ALLOC_CONF", "")
    for item in conf.split(","):
        key, _, value = item.partition(":")
        if key.strip() == "expandable_segments":
            return value.strip().lower() == "true"
    return None


def autocast_enabled(torch: Any, device_type: str) -> bool | None:
    """Whether the calling thread runs under torch.autocast for ``device_type`` (None: unknown)."""
    fn = getattr(torch, "is_autocast_enabled", None)
    if fn is None:
        return None
    try:
        return bool(fn(device_type))
    except TypeError:  # torch < 2.4 takes no argument and answers for CUDA
        try:
            return bool(fn()) if device_type == "cuda" else None
        except Exception:
            return None
    except Exception:
        return None


def checkpointing(modules: Any) -> bool | None:
    """Whether a model says gradient checkpointing is on (Transformers' ``is_activation_checkpointing``,
    ``is_gradient_checkpointing`` before 5.x); None when none of them says."""
    said = None
    for module in list(modules):
        try:
            # The older name warns of its deprecation in Transformers 5: never print into the
            # program's output for our sake.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = getattr(module, "is_activation_checkpointing", None)
                if not isinstance(value, bool):
                    value = getattr(module, "is_gradient_checkpointing", None)
        except Exception:
            continue
        if isinstance(value, bool):
            said = said or value
    return said


def world_size(torch: Any) -> int | None:
    """torch.distributed's world size, once the program has created its process group."""
    try:
        dist = getattr(torch, "distributed", None)
        if dist is None or not dist.is_available() or not dist.is_initialized():
            return None
        return int(dist.get_world_size())
    except Exception:
        return None


def rank(torch: Any) -> int | None:
    """torch.distributed's rank of this process, once the program has created its process group."""
    try:
        dist = getattr(torch, "distributed", None)
        if dist is None or not dist.is_available() or not dist.is_initialized():
            return None
        return int(dist.get_rank())
    except Exception:
        return None
