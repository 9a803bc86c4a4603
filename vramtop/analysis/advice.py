"""What to change to lower the step peak, ranked by the bytes each lever frees in the measured bill.

Pure functions over a :class:`~vramtop.analysis.bill.Bill` at the allocator's peak. Levers come
in the order an engineer should try them (cheapest change to the code and to the speed first);
each one carries an estimate of the bytes it frees, derived from the bill's categories with a
stated assumption, and only levers that free a meaningful amount are returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from vramtop.analysis.bill import Bill
from vramtop.units import MiB, fmt_bytes

MIXED_PRECISION = "mixed precision"
BATCH = "batch size / gradient accumulation"
CHECKPOINTING = "gradient checkpointing"
OPTIMIZER = "optimizer / sharding"
OFFLOAD = "CPU offload"
EXPANDABLE = "expandable segments"
SMALLER_MODEL = "smaller model"
# The order to try them in: code-only changes that cost no speed first, a smaller model last.
LEVERS = (MIXED_PRECISION, BATCH, CHECKPOINTING, OPTIMIZER, OFFLOAD, EXPANDABLE, SMALLER_MODEL)


@dataclass(frozen=True)
class Assumptions:
    """The rules of thumb behind each estimate (docs/risk.md gives the reasoning)."""

    # bf16/fp16 activations take half the bytes of fp32 ones; some stay fp32 under autocast
    # (softmax, norms, the loss), so this is an upper bound for the activations it touches.
    mixed_precision_saving: float = 0.5
    # Checkpointing every transformer block keeps only block inputs (plus one block's
    # activations during its recomputation): 60-70% of activations on GPT/BERT-style models.
    checkpointing_saving: float = 0.6
    # 8-bit Adam keeps both moments in 8 bits: 2 bytes per parameter instead of 8.
    optimizer_8bit_saving: float = 0.75
    # Host<->device bandwidth actually reached by PCIe Gen4 x16 copies (32 GB/s on paper);
    # Gen5 x16 reaches about twice that.
    pcie_bandwidth: float = 25e9
    # A model with this share of the parameters scales parameters, gradients and state alike.
    smaller_model_factor: float = 0.5
    # Savings below both of these are not worth a change.
    min_saving_bytes: int = 256 * MiB
    min_saving_share: float = 0.01  # of the device total


@dataclass(frozen=True)
class Advice:
    """One lever, what it frees at the step peak, and the sentence that says how."""

    lever: str  # one of LEVERS
    saves: int  # estimated bytes freed at the step peak
    text: str  # one sentence: what to do and what it frees
    assumption: str  # what the estimate rests on
    sufficient: bool | None  # alone brings the projected peak under the margin; None: no device total
    conditional: bool = False  # the text starts with "If ...": vramtop cannot see whether it applies


def projected_peak(bill: Bill, others: int = 0) -> int:
    """The device's use at this process's peak: its bill (reserved if NVML gave no figure for
    it) plus ``others``, the bytes outside the process (other processes, driver-reserved)."""
    own = bill.total if bill.total is not None else bill.reserved
    return own + others


def limit(device_total: int, margin: float) -> int:
    """The most the projected peak should reach: the total less the safety margin."""
    return int(device_total * (1.0 - margin))


def batch_fit(bill: Bill, device_total: int, others: int = 0, margin: float = 0.10) -> float | None:
    """The largest micro-batch, as a fraction of the current one, whose peak fits under the margin.

    Activations and temporaries scale about linearly with the batch; everything else in the
    bill (parameters, gradients, optimizer state, cache, non-PyTorch) and outside it does not::

        fits = (total * (1 - margin) - (projected peak - activations)) / activations

    Above 1 there is room to grow; at or below 0 no batch size fits. None without activations.
    """
    if not bill.activations or bill.activations <= 0:
        return None
    rest = projected_peak(bill, others) - bill.activations
    return (limit(device_total, margin) - rest) / bill.activations


@dataclass(frozen=True)
class ProcessFacts:
    """What vramtop knows about a process beyond its bill: which levers already apply to it.
    None means unknown (the agent has not seen enough), which words a lever as a condition."""

    expandable_segments: bool | None = None
    fragmentation: float | None = None  # of the allocator's cache; None: unknown
    optimizer: str | None = None  # the census's description (class names): 8-bit is not suggested again
    world_size: int | None = None
    step_seconds: float | None = None
    mixed_precision: bool | None = None
    checkpointing: bool | None = None


def advise(bill: Bill, *, device_total: int | None, others: int = 0, margin: float = 0.10,
           facts: ProcessFacts | None = None, need: int | None = None, cache: int | None = None,
           assumptions: Assumptions | None = None) -> tuple[Advice, ...]:
    """Levers that free a meaningful amount at the step peak, in the order to try them.

    ``bill`` is the bill at the allocator's peak; ``others`` the bytes on the device outside it;
    ``facts`` what is known of the process (levers already on are not suggested). ``need``
    overrides the bytes that must be freed (after an OOM: what was missing plus the margin), and
    ``cache`` the allocator cache that expandable segments would make usable (default: the
    cache at the peak).
    """
    a = assumptions or Assumptions()
    f = facts or ProcessFacts()
    # Signed: how far the projected peak is above the margin line (negative: room left).
    excess = need
    if excess is None and device_total:
        excess = projected_peak(bill, others) - limit(device_total, margin)
    activations = bill.activations if bill.activations and bill.activations > 0 else 0
    found = [
        _mixed_precision(activations, f, a),
        _batch(bill, activations, excess, margin) if activations else None,
        _checkpointing(activations, f, a),
        *_optimizer_levers(bill, f, a),
        _expandable(bill.cache if cache is None else cache, f),
        _smaller_model(bill, a),
    ]
    shortfall = None if excess is None else max(0, excess)
    items = [i if i.sufficient is not None or shortfall is None else replace(i, sufficient=i.saves >= shortfall)
             for i in found if i is not None]
    floor = max(a.min_saving_bytes, int(a.min_saving_share * device_total) if device_total else 0)
    order = {lever: i for i, lever in enumerate(LEVERS)}
    return tuple(sorted((i for i in items if i.saves >= floor), key=lambda i: order[i.lever]))


def _mixed_precision(activations: int, f: ProcessFacts, a: Assumptions) -> Advice | None:
    if not activations or f.mixed_precision is True:
        return None
    saves = int(activations * a.mixed_precision_saving)
    head = "If the model trains in fp32, run" if f.mixed_precision is None else "Run"
    return Advice(MIXED_PRECISION, saves,
                  f"{head} the forward pass and loss under torch.autocast('cuda', dtype=torch.bfloat16): "
                  f"activations roughly halve, freeing ~{fmt_bytes(saves)}.",
                  f"activations are fp32 now and bf16 ones take {a.mixed_precision_saving:.0%} less",
                  None, conditional=f.mixed_precision is None)


def _checkpointing(activations: int, f: ProcessFacts, a: Assumptions) -> Advice | None:
    if not activations or f.checkpointing is True:
        return None
    saves = int(activations * a.checkpointing_saving)
    return Advice(CHECKPOINTING, saves,
                  "Enable gradient checkpointing (model.gradient_checkpointing_enable() in Transformers, "
                  "torch.utils.checkpoint around each block otherwise): it frees "
                  f"~{fmt_bytes(saves)} of activations for ~30% more compute per step.",
                  f"checkpointing each block keeps ~{1 - a.checkpointing_saving:.0%} of activations "
                  "(transformer models)", None)


def _optimizer_levers(bill: Bill, f: ProcessFacts, a: Assumptions) -> list[Advice]:
    """Sharding or 8-bit state (whichever frees more), and offloading the state to the CPU."""
    state = bill.optimizer_state or 0
    if state <= 0:
        return []
    out = []
    eight_bit = 0 if f.optimizer and "8bit" in f.optimizer.lower() else int(state * a.optimizer_8bit_saving)
    world = f.world_size
    sharded = int(state * (1 - 1 / world)) if world and world > 1 else 0
    if sharded > eight_bit:
        out.append(Advice(OPTIMIZER, sharded,
                          f"Shard the optimizer state over the {world} ranks (ZeRO-1 in DeepSpeed, FSDP's "
                          f"sharded state): each GPU keeps 1/{world} of it, freeing ~{fmt_bytes(sharded)}.",
                          "optimizer state divides evenly over the ranks", None))
    elif eight_bit:
        out.append(Advice(OPTIMIZER, eight_bit,
                          "Switch to 8-bit AdamW (bitsandbytes.optim.AdamW8bit): both moments take a quarter of "
                          f"the bytes, freeing ~{fmt_bytes(eight_bit)} (plain SGD would free all "
                          f"{fmt_bytes(state)}).",
                          f"Adam keeps two fp32 moments; 8 bits each saves {a.optimizer_8bit_saving:.0%}", None))
    moved = (bill.gradients or 0) + (bill.parameters_trainable or 0)
    cost = moved / a.pcie_bandwidth
    when = f"; a step takes {f.step_seconds * 1e3:.0f} ms now" if f.step_seconds else ""
    out.append(Advice(OFFLOAD, state,
                      "Offload the optimizer state to CPU memory (DeepSpeed ZeRO-Offload, FSDP CPUOffload): "
                      f"frees {fmt_bytes(state)} but moves ~{fmt_bytes(moved)} over PCIe each step "
                      f"(gradients down, parameters up), ~{cost * 1e3:.0f} ms at {a.pcie_bandwidth / 1e9:.0f} "
                      f"GB/s{when}.",
                      f"PCIe Gen4 x16 reaches ~{a.pcie_bandwidth / 1e9:.0f} GB/s (Gen5 about twice); "
                      "the optimizer step then runs on the CPU", None))
    return out


def _expandable(cached: int, f: ProcessFacts) -> Advice | None:
    if f.expandable_segments is True or cached <= 0:
        return None
    frag = f.fragmentation if f.fragmentation is not None else 1.0
    saves = int(cached * frag)
    return Advice(EXPANDABLE, saves,
                  "Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True before the program starts, so the "
                  f"allocator grows segments instead of stranding free blocks: up to {fmt_bytes(saves)} "
                  "of cache becomes usable.",
                  "the fragmented share of the cache is what becomes usable"
                  + ("" if f.fragmentation is not None else " (fragmentation unknown: all of it, an upper bound)"),
                  None)


def _smaller_model(bill: Bill, a: Assumptions) -> Advice | None:
    model = ((bill.parameters_trainable or 0) + (bill.parameters_frozen or 0) + (bill.gradients or 0)
             + (bill.optimizer_state or 0))
    if model <= 0:
        return None
    saves = int(model * (1 - a.smaller_model_factor))
    return Advice(SMALLER_MODEL, saves,
                  f"Train a model with {a.smaller_model_factor:.0%} of the parameters: parameters, gradients and "
                  f"optimizer state shrink alike, freeing ~{fmt_bytes(saves)}.",
                  "parameters, gradients and optimizer state scale with the parameter count; activations "
                  "(not counted) shrink too", None)


def _batch(bill: Bill, activations: int, excess: int | None, margin: float) -> Advice:
    # The same formula as batch_fit: the share of the activations that may stay.
    fits = None if excess is None else 1 - excess / activations
    assumption = "activations and temporaries scale linearly with the micro-batch; nothing else does"
    if fits is None or fits >= 1:
        saves = activations // 2
        room = f" (the batch could grow ~{fits:.1f}x before reaching the margin)" if fits else ""
        return Advice(BATCH, saves,
                      "Halve the micro-batch and accumulate gradients over 2 steps to keep the effective "
                      f"batch: frees ~{fmt_bytes(saves)}{room}.", assumption, None if fits is None else True)
    if fits <= 0:
        saves = activations // 2
        rest = bill.allocated - activations
        return Advice(BATCH, saves,
                      "No batch size is small enough alone: the rest of the bill is too big for the "
                      f"{margin:.0%} margin, and halving the micro-batch frees only ~{fmt_bytes(saves)} "
                      f"(non-activation tensors: {fmt_bytes(rest)}).", assumption, False)
    k = math.ceil(1 / fits)
    saves = int(activations * (1 - 1 / k))
    cut = "halve it" if k == 2 else f"cut it to 1/{k}"
    return Advice(BATCH, saves,
                  f"The largest micro-batch that fits under the {margin:.0%} margin is ~{fits:.0%} of the current "
                  f"one: {cut} and accumulate gradients over {k} steps to keep the effective batch, freeing "
                  f"~{fmt_bytes(saves)}.", assumption, saves >= (excess or 0))


def top_advice(items: tuple[Advice, ...] | list[Advice]) -> Advice | None:
    """The one thing to try first: the first lever, in order, that frees enough alone, preferring
    one that surely applies to one worded as a condition; else the one that frees the most."""
    enough = [i for i in items if i.sufficient]
    for item in enough:
        if not item.conditional:
            return item
    if enough:
        return enough[0]
    return max(items, key=lambda i: i.saves, default=None)

