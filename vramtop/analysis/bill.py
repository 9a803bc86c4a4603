"""The memory bill: where each byte of a process's GPU memory went.

Categories add up, by construction, to NVML's per-process figure::

    parameters (trainable + frozen) + gradients + optimizer state   <- counted from the tensors
  + other persistent            = allocated at the last step boundary - the three above
                                  (buffers, inputs, caches the program keeps; growth here is a leak)
  + activations & temporaries   = allocated - all of the above      <- derived
  + allocator cache             = reserved - allocated
  + non-PyTorch                 = NVML per-process used - reserved  (CUDA context, NCCL, cuBLAS
                                                                     workspaces, other libraries)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vramtop.model import AgentDevice, AgentSample, AllocatorStats, PeakBill

# Compact names of the categories, for narrow terminals and one-line summaries.
SHORT_NAMES = {
    "parameters (trainable)": "params",
    "parameters (frozen)": "frozen",
    "gradients": "grads",
    "optimizer state": "optim",
    "other persistent": "other",
    "activations & temporaries": "activ*",
    "allocator cache": "cache",
    "non-PyTorch": "non-PT",
}


@dataclass(frozen=True)
class Bill:
    parameters_trainable: int | None
    parameters_frozen: int | None
    gradients: int | None
    optimizer_state: int | None
    other_persistent: int | None  # what stays allocated between steps besides the above
    activations: int | None  # derived; None when the census is missing
    cache: int
    non_pytorch: int | None  # None when NVML gives no per-process figure
    allocated: int
    reserved: int
    total: int | None  # NVML per-process used (equals the sum of the categories)
    buffers: int | None = None  # module buffers, part of other persistent
    phase: str | None = None  # at a peak: the phase of the step in which it was reached
    step: int | None = None  # at a peak: the step in which it was reached
    estimate: bool = False  # at a peak: categories assumed, not measured at the peak (see bill_at_peak)

    def categories(self) -> list[tuple[str, int | None]]:
        return [
            ("parameters (trainable)", self.parameters_trainable),
            ("parameters (frozen)", self.parameters_frozen),
            ("gradients", self.gradients),
            ("optimizer state", self.optimizer_state),
            ("other persistent", self.other_persistent),
            ("activations & temporaries", self.activations),
            ("allocator cache", self.cache),
            ("non-PyTorch", self.non_pytorch),
        ]


def _bill(device: AgentDevice, allocated: int, reserved: int, gradients: int | None,
          nvml_used: int | None) -> Bill:
    census = device.census
    non_pytorch = None if nvml_used is None else nvml_used - reserved
    if census is None or gradients is None:
        return Bill(None, None, None, None, None, None, reserved - allocated, non_pytorch, allocated, reserved,
                    nvml_used)
    fixed = census.parameters_trainable + census.parameters_frozen + census.optimizer_state
    other = 0
    if device.last_step is not None:
        # At the step boundary every gradient exists, so compare with the full gradient size.
        other = max(0, device.last_step.persistent - fixed - census.gradients_peak)
        other = min(other, max(0, allocated - fixed))  # what persisted then need not all exist now
    # Gradients are counted at the step boundary (the agent reads tensors only on the training
    # thread). If less is allocated now than that count allows, the program has freed them
    # since (zero_grad(set_to_none=True)): bill only what can still exist.
    gradients = min(gradients, max(0, allocated - fixed - other))
    counted = fixed + gradients
    return Bill(
        parameters_trainable=census.parameters_trainable,
        parameters_frozen=census.parameters_frozen,
        gradients=gradients,
        optimizer_state=census.optimizer_state,
        other_persistent=other,
        activations=allocated - counted - other,
        cache=reserved - allocated,
        non_pytorch=non_pytorch,
        allocated=allocated,
        reserved=reserved,
        total=nvml_used,
        buffers=census.buffers,
    )


def bill_now(device: AgentDevice, nvml_used: int | None) -> Bill:
    """The bill at the latest sample. Parameters, gradients and optimizer state are as counted
    at the last census (a step boundary); gradients freed since are taken out (see _bill)."""
    stats = device.stats
    grads = device.census.gradients if device.census else None
    return _bill(device, stats.allocated, stats.reserved, grads, nvml_used)


def bill_at_peak(device: AgentDevice, nvml_used: int | None) -> Bill | None:
    """The bill at the allocator's peak (``allocated_bytes.all.peak``), where OOMs happen.

    The agent measures it in the phase of the step where the peak was reached (``device.peak``:
    gradients, optimizer state and kept memory as they were then). Without that measurement
    (an older agent, or a peak reached before the first measured step) it is an estimate:
    gradients at their full size and persistent memory as at the last step boundary. The peak
    is the allocator's own, never reset; non-PyTorch memory is taken as it is now (it barely
    changes during training).
    """
    if device.census is None and device.last_step is None and device.peak is None:
        return None
    stats = device.stats
    non_pytorch = None if nvml_used is None else nvml_used - stats.reserved
    total = None if non_pytorch is None else stats.reserved_peak + non_pytorch
    if device.peak is not None:
        return _measured_peak(device.peak, stats, total)
    grads = device.census.gradients_peak if device.census else None
    bill = _bill(device, stats.allocated_peak, stats.reserved_peak, grads, total)
    return replace(bill, step=device.peak_step, estimate=True)


def _measured_peak(peak: PeakBill, stats: AllocatorStats, total: int | None) -> Bill:
    allocated = stats.allocated_peak
    counted = (peak.parameters_trainable + peak.parameters_frozen + peak.buffers + peak.gradients
               + peak.optimizer_state + peak.other_persistent)
    non_pytorch = None if total is None else total - stats.reserved_peak
    return Bill(
        parameters_trainable=peak.parameters_trainable,
        parameters_frozen=peak.parameters_frozen,
        gradients=peak.gradients,
        optimizer_state=peak.optimizer_state,
        other_persistent=peak.other_persistent + peak.buffers,
        activations=allocated - counted,
        cache=stats.reserved_peak - allocated,
        non_pytorch=non_pytorch,
        allocated=allocated,
        reserved=stats.reserved_peak,
        total=total,
        buffers=peak.buffers,
        # The peak rose again after the one measured (an OOM's growth, say): when is unknown.
        phase=peak.phase if peak.allocated >= allocated else None,
        step=peak.step if peak.allocated >= allocated else None,
        estimate=not peak.measured or peak.allocated < allocated,
    )


def not_counted_yet(agent: AgentSample) -> str:
    """Why a bill has no counted categories yet, in the words of how its agent started."""
    if agent.attached:
        return ("Attached late: parameters, gradients and optimizer state are counted from the next "
                "optimizer step (a model alone, at its next forward call).")
    return "No parameters counted yet (no optimizer step or model seen)."


def non_pytorch_of(stats: AllocatorStats, nvml_used: int | None, gpu_used: int | None = None) -> int | None:
    """A process's memory outside PyTorch: NVML's per-process figure minus what the allocator
    has reserved, when the two can be compared. NVML's process list is polled less often than
    memory and the allocator, so its figure counts only when it covers what is reserved and fits
    in what the whole GPU uses (``gpu_used``, when known); None otherwise."""
    if nvml_used is None or nvml_used < stats.reserved or (gpu_used is not None and nvml_used > gpu_used):
        return None
    return nvml_used - stats.reserved


def fragmentation(stats: AllocatorStats) -> float | None:
    """1 - largest free block / cache: 0 = the cache is one usable block, near 1 = shattered.

    Both figures come from the same allocator snapshot (the cache is the sum of its free
    blocks), so a snapshot a moment older than the counters cannot give a nonsense ratio.
    """
    if stats.largest_free_block is None:
        return None
    cache = stats.free_in_segments if stats.free_in_segments is not None else stats.reserved - stats.allocated
    if cache <= 0:
        return 0.0
    return max(0.0, 1.0 - stats.largest_free_block / cache)


def fragmentation_proxy(stats: AllocatorStats) -> float | None:
    """inactive_split / cache: cheap, between snapshots (meaningless with expandable segments)."""
    cache = stats.reserved - stats.allocated
    return None if cache <= 0 else min(1.0, stats.inactive_split / cache)


def largest_fit(stats: AllocatorStats, device_free: int | None) -> int | None:
    """About the largest tensor that can be allocated now without an OOM."""
    candidates = [v for v in (stats.largest_free_block, device_free) if v is not None]
    return max(candidates) if candidates else None
