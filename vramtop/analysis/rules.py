"""The risk rules: pure functions from one subject's facts (analysis/subjects.py) and what the
tracker remembers of it to a :class:`~vramtop.analysis.latch.Finding`. docs/risk.md gives the
reason for each threshold; the tracker (risk.py) keeps the memory and the latches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from vramtop.analysis.latch import CRITICAL, INFO, NOTHING, WARNING, Finding
from vramtop.analysis.subjects import Place, Subject, subject_advice
from vramtop.analysis.thresholds import Thresholds
from vramtop.analysis.warning import FRAGMENTATION, HEADROOM, LEAK, NEIGHBOUR, OOM, RETRIES, RiskWarning
from vramtop.model import NOT_VISIBLE, OomReport
from vramtop.units import fmt_bytes, fmt_eta

if TYPE_CHECKING:
    # The rules run on subjects, processes with the agent: the advice and the bill's arithmetic
    # are imported by the rules that use them, once there is one.
    from vramtop.analysis.advice import Assumptions
    from vramtop.analysis.leak import LeakFit


def _warning(s: Subject, level: str, kind: str, title: str, evidence: dict[str, float], sentence: str,
             action: str) -> RiskWarning:
    return RiskWarning(level, kind, s.place.uuid, s.place.index, s.pid, title, evidence, sentence, action)


def _action(s: Subject, t: Thresholds, a: Assumptions | None, fallback: str, need: int | None = None) -> str:
    """The advice to try first for the subject, or ``fallback`` when there is none."""
    from vramtop.analysis.advice import top_advice

    top = top_advice(subject_advice(s, t.margin, a, need))
    return top.text if top else fallback


def headroom(s: Subject, t: Thresholds, a: Assumptions | None = None) -> Finding:
    """The projected step peak against the margin (or against the process's cap, when tighter)."""
    lines = s.lines(t)
    if lines is None:
        return NOTHING
    warn, crit, warn_clear, crit_clear = lines
    p = s.load
    want = CRITICAL if p > crit else WARNING if p > warn else None
    keep = CRITICAL if p > crit_clear else WARNING if p > warn_clear else None
    if keep is None:
        return NOTHING
    total = s.limit or 0
    if s.capped:
        return _headroom_capped(s, want, keep, p, total, warn, t, a)
    short = p - warn
    evidence: dict[str, float] = {
        "projected": p, "total": total, "limit": warn, "share": p / total, "own_peak": s.own_peak,
        "reserved_peak": s.device.stats.reserved_peak, "non_pytorch": s.non_pytorch or 0,
        "others": s.others, "driver_reserved": s.place.driver_reserved, "shortfall": max(0, short),
    }
    non_pt = "unknown non-PyTorch" if s.non_pytorch is None else f"{fmt_bytes(s.non_pytorch)} non-PyTorch"
    sentence = (
        f"{s.who}'s step peak ({fmt_bytes(s.device.stats.reserved_peak)} reserved at the allocator's peak "
        f"+ {non_pt}) plus {fmt_bytes(s.others)} used by others and {fmt_bytes(s.place.driver_reserved)} "
        f"reserved by the driver comes to {fmt_bytes(p)}, {p / total:.0%} of {fmt_bytes(total)}; "
        + (f"that is {fmt_bytes(short)} past the {t.margin:.0%} safety margin."
           if short > 0 else f"only {fmt_bytes(-short)} inside the {t.margin:.0%} safety margin.")
    )
    title = f"GPU {s.place.index}: projected step peak {fmt_bytes(p)} of {fmt_bytes(total)} ({p / total:.0%})"
    action = _action(s, t, a, "Lower the step peak (a smaller micro-batch) or free memory on this GPU.")
    return Finding(want, keep, _warning(s, keep, HEADROOM, title, evidence, sentence, action))


def _headroom_capped(s: Subject, want: str | None, keep: str | None, reserved: int, cap: int,
                     warn: int, t: Thresholds, a: Assumptions | None) -> Finding:
    short = reserved - warn
    evidence: dict[str, float] = {"projected": reserved, "total": cap, "limit": warn, "share": reserved / cap,
                                  "reserved_peak": reserved, "cap": cap, "shortfall": max(0, short)}
    sentence = (
        f"{s.who} may reserve at most {fmt_bytes(cap)} (its cap, set_per_process_memory_fraction, whatever "
        f"the GPU has free); at the allocator's peak it reserved {fmt_bytes(reserved)}, {reserved / cap:.0%} "
        "of it; "
        + (f"that is {fmt_bytes(short)} past the {t.margin:.0%} safety margin."
           if short > 0 else f"only {fmt_bytes(-short)} inside the {t.margin:.0%} safety margin."))
    title = f"GPU {s.place.index}: step peak {fmt_bytes(reserved)} of {s.who}'s {fmt_bytes(cap)} cap " \
            f"({reserved / cap:.0%})"
    action = _action(s, t, a, "Lower the step peak (a smaller micro-batch) or raise the process's memory fraction.")
    return Finding(want, keep, _warning(s, keep or WARNING, HEADROOM, title, evidence, sentence, action))


def retries(s: Subject, before: int | None, t: Thresholds, a: Assumptions | None = None) -> Finding:
    """New allocation retries since the last sample (``before``: the count then; None at first sight)."""
    count = s.device.stats.num_alloc_retries
    if count <= (before if before is not None else 0):
        return NOTHING
    first = before is None
    delta = count - (before or 0)
    level = INFO if first else WARNING
    evidence: dict[str, float] = {"retries": count, "delta": delta, "reserved": s.device.stats.reserved}
    if first:
        sentence = (f"{s.who}'s allocator had already flushed its cache and retried cudaMalloc {count} "
                    f"time{'s' if count != 1 else ''} before vramtop started watching it.")
    else:
        sentence = (f"{s.who}'s allocator flushed its cache and retried cudaMalloc {delta} more "
                    f"time{'s' if delta != 1 else ''} ({count} in all): each retry synchronises the device "
                    "and the next failure is an OOM.")
    from vramtop.analysis.bill import fragmentation

    frag = fragmentation(s.device.stats) or 0.0
    if s.agent.expandable_segments is not True and frag > t.frag_ratio:
        action = ("Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True so freed blocks can be reused instead "
                  "of flushed.")
    else:
        action = _action(s, t, a, "Lower the step peak, e.g. a smaller micro-batch with gradient accumulation.")
    title = f"GPU {s.place.index}: allocation retries in {s.who} ({count})"
    return Finding(level, level, _warning(s, level, RETRIES, title, evidence, sentence, action),
                    immediate=True, hold=t.event_hold)


def oom(s: Subject, before: int | None, fresh: bool, ev: OomReport | None, t: Thresholds,
        a: Assumptions | None = None) -> Finding:
    """An OOM: the counter rose since the last sample (``before``: the count then) or the agent
    reported one (``fresh``); ``ev`` is the latest report of one, new or remembered."""
    count = s.device.stats.num_ooms
    rose = count > (before if before is not None else 0)
    if not rose and not fresh:
        return NOTHING
    first = before is None and not fresh
    delta = count - (before or 0)
    level = WARNING if first else CRITICAL
    evidence: dict[str, float] = {"ooms": count, "delta": max(0, delta)}
    detail = ""
    need = None
    diagnosis = None
    if ev is not None:
        evidence.update(requested=ev.requested, device_free=ev.device_free, device_total=ev.device_total or 0)
        detail = f"; it asked for {fmt_bytes(ev.requested)} with {fmt_bytes(ev.device_free)} free"
        if s.place.total:
            need = max(0, ev.requested - ev.device_free) + int(s.place.total * t.margin)
        # The agent's report at the failure says what kind of OOM it was. Other processes' rows
        # come from one NVML poll: unlike memory.used they are comparable with each other
        # during an OOM's fast growth.
        others = sum(p.used_memory or 0 for p in s.place.processes if p is not s.row)
        from vramtop.analysis.diagnosis import diagnose  # an OOM's: not needed before one is seen

        diagnosis = diagnose(ev, others, s.agent.expandable_segments)
    if first:
        sentence = (f"{s.who} had already run out of GPU memory {count} time{'s' if count != 1 else ''} "
                    "before vramtop started watching it (the program caught the error).")
    else:
        # An event may arrive before (or, if the process died, without) the counter's rise.
        so_far = f" ({count} OOM{'s' if count != 1 else ''} so far)" if count else ""
        sentence = f"{s.who} ran out of GPU memory{so_far}{detail}."
    if diagnosis is not None:
        sentence += " " + diagnosis.headline
        evidence["short"] = diagnosis.short
    if ev is not None and ev.path:
        sentence += f" Post-mortem: {ev.path}"
    if diagnosis is not None and diagnosis.action is not None:
        action = diagnosis.action  # not a matter of capacity: no lever fixes it
    else:
        action = _action(s, t, a, "Lower the step peak: a smaller micro-batch with gradient accumulation.", need)
    kind = f" ({diagnosis.kind})" if diagnosis is not None else ""
    title = f"GPU {s.place.index}: out of memory in {s.who}{kind}"
    return Finding(level, level, _warning(s, level, OOM, title, evidence, sentence, action),
                    immediate=True, hold=t.event_hold)


def leak(s: Subject, fit: LeakFit | None, t: Thresholds) -> Finding:
    """Persistent memory (allocated at step boundaries) growing steadily, with a time to OOM."""
    last = s.device.last_step
    if fit is None or fit.points < t.leak_min_points or fit.per_second <= 0:
        return NOTHING
    raise_ok = (fit.seconds >= t.leak_min_span and fit.monotone >= t.leak_monotone
                and fit.largest_jump <= t.leak_max_jump and fit.growth >= t.leak_min_growth
                and fit.growth >= 3 * fit.noise and fit.per_second >= t.leak_min_rate)
    keep_ok = (fit.monotone >= t.leak_monotone_clear and fit.growth >= t.leak_min_growth / 2
               and fit.per_second >= t.leak_min_rate / 2)
    if not keep_ok:
        return NOTHING
    total = s.limit
    eta = margin_eta = steps_eta = None
    if total:  # against the process's cap, when that is the tighter limit
        eta = max(0.0, (total - s.load) / fit.per_second)
        margin_eta = max(0.0, (total * (1 - t.margin) - s.load) / fit.per_second)
        steps_eta = max(0.0, (total - s.load) / fit.per_step) if fit.per_step > 0 else None
    level = (CRITICAL if eta is not None and eta < t.leak_critical
             else INFO if eta is not None and eta > t.leak_horizon else WARNING)
    evidence: dict[str, float] = {
        "per_step": fit.per_step, "per_second": fit.per_second, "growth": fit.growth, "points": fit.points,
        "steps": fit.steps, "seconds": fit.seconds, "monotone": fit.monotone,
        "persistent": last.persistent if last else 0, "projected": s.load,
    }
    if eta is not None:
        evidence.update(seconds_to_oom=eta, seconds_to_margin=margin_eta or 0.0)
    if steps_eta is not None:
        evidence["steps_to_oom"] = steps_eta
    when = ("" if eta is None else
            f"; at this rate the step peak reaches {'its cap' if s.capped else 'the device total'} "
            f"in ~{fmt_eta(eta)}"
            + (f" (~{steps_eta:,.0f} steps)" if steps_eta is not None else "")
            + f" and the {t.margin:.0%} margin in ~{fmt_eta(margin_eta or 0.0)}")
    sentence = (f"Memory still allocated after each optimizer step in {s.who} grew "
                f"{fmt_bytes(int(fit.growth))} over the last {fit.steps} steps ({fmt_eta(fit.seconds)}): "
                f"{fmt_bytes(int(fit.per_step))}/step, {fmt_bytes(int(fit.per_second * 60))}/min{when}.")
    action = ("Look for tensors kept across steps: losses or outputs appended to a list without .item() or "
              ".detach(), growing caches, or hooks that store activations.")
    title = (f"GPU {s.place.index}: persistent memory of {s.who} grows {fmt_bytes(int(fit.per_step))}/step"
             + (f", OOM in ~{fmt_eta(eta)}" if eta is not None and eta <= t.leak_horizon else ""))
    want = level if raise_ok else None
    return Finding(want, level, _warning(s, level, LEAK, title, evidence, sentence, action))


def fragmentation_rule(s: Subject, t: Thresholds) -> Finding:
    """A fragmented cache, shown only with evidence that it does harm."""
    stats = s.device.stats
    if s.agent.expandable_segments is True:
        # Under memory pressure the allocator unmaps the free pages of expandable segments and
        # maps them where they are needed: free blocks in pieces cannot fail a large request.
        return NOTHING
    from vramtop.analysis.bill import fragmentation, fragmentation_proxy

    frag = fragmentation(stats)
    proxy = frag is None
    if frag is None:
        frag = fragmentation_proxy(stats)
    if frag is None:
        return NOTHING
    cache = stats.reserved - stats.allocated
    floor = max(t.frag_min_cache, int(t.frag_min_share * s.place.total)) if s.place.total else t.frag_min_cache
    high = frag > t.frag_ratio and cache >= floor
    keep = frag > t.frag_clear_ratio and cache >= floor * 3 // 4
    if not keep:
        return NOTHING
    lines = s.lines(t)
    # A healthy transformer's cache between steps is in pieces and harms nothing: the figure
    # stays in the bill line. It becomes a warning only with evidence of harm: the allocator
    # had to flush its cache (retries) or failed (an OOM), or the peak is past the margin.
    pressed = (stats.num_alloc_retries > 0 or stats.num_ooms > 0
               or (lines is not None and s.load > lines[0]))
    if not pressed:
        return NOTHING
    level = WARNING
    evidence: dict[str, float] = {"fragmentation": frag, "cache": cache, "retries": stats.num_alloc_retries}
    if stats.largest_free_block is not None:
        evidence["largest_free_block"] = stats.largest_free_block
    block = ("" if stats.largest_free_block is None
             else f", its largest free block only {fmt_bytes(stats.largest_free_block)}")
    sentence = (f"{s.who}'s allocator caches {fmt_bytes(cache)} unused by any tensor{block}: fragmentation "
                f"{frag:.2f}{' (estimated between snapshots)' if proxy else ''}"
                + (f", with {stats.num_alloc_retries} allocation retries." if stats.num_alloc_retries else "."))
    action = ("Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True before the program starts so the cache "
              "stays usable for large tensors.")
    title = f"GPU {s.place.index}: fragmented allocator cache in {s.who} ({frag:.2f} of {fmt_bytes(cache)})"
    return Finding(level if high else None, level,
                    _warning(s, level, FRAGMENTATION, title, evidence, sentence, action))


def neighbours(subjects: Sequence[Subject], places: Mapping[str, Place],
               t: Thresholds) -> dict[tuple[str, str, int | None], Finding]:
    """Other processes holding a share of a GPU that training runs on, and ranks sharing one."""
    out: dict[tuple[str, str, int | None], Finding] = {}
    by_place: dict[str, list[Subject]] = {}
    for s in subjects:
        by_place.setdefault(s.place.uuid, []).append(s)
    for uuid, training in by_place.items():
        place = places[uuid]
        if any(s.row is None for s in training) and place.processes:
            # A training process NVML lists under a PID we could not match (PID namespaces):
            # any row might be its own, so no row can be called a neighbour.
            continue
        floor = min(t.neighbour_min_bytes, int(t.neighbour_min_share * place.total)) if place.total \
            else t.neighbour_min_bytes
        pressed = any(s.past_margin(t) for s in training)
        ranks = {s.pid: s for s in training if s.agent.rank is not None}
        if len({s.agent.rank for s in ranks.values()}) < 2:
            ranks = {}
        else:  # said once for the GPU, not as each rank being the others' neighbour
            out.update(_ranks_sharing(place, list(ranks.values()), places))
        for proc in place.processes:
            if proc.pid in ranks:
                continue
            used = proc.used_memory
            victims = [s for s in training if s.pid != proc.pid]
            if used is None or not victims or used < floor * 3 // 4:
                continue
            level = WARNING if pressed else INFO
            who = proc.command or proc.name or "command unknown"
            if proc.visibility == NOT_VISIBLE:
                who += ", not visible here: another container?"
            if proc.user:
                who += f", user {proc.user}"
            pids = ", ".join(str(s.pid) for s in victims)
            share = used / place.total if place.total else 0.0
            sentence = (f"PID {proc.pid} ({_short(who)}) holds {fmt_bytes(used)}"
                        + (f" ({share:.0%} of the GPU)" if place.total else "")
                        + f" on GPU {place.index}, next to training PID {pids}.")
            action = (f"Stop PID {proc.pid} or move it to another GPU (CUDA_VISIBLE_DEVICES): that gives "
                      f"{fmt_bytes(used)} back to training.")
            title = f"GPU {place.index}: PID {proc.pid} holds {fmt_bytes(used)} next to training"
            warning = RiskWarning(level, NEIGHBOUR, uuid, place.index, proc.pid, title,
                                  {"used": used, "share": share, "threshold": floor}, sentence, action)
            out[(NEIGHBOUR, uuid, proc.pid)] = Finding(level if used >= floor else None, level, warning)
    return out


def _ranks_sharing(place: Place, ranks: list[Subject],
                   places: Mapping[str, Place]) -> dict[tuple[str, str, int | None], Finding]:
    """Ranks of a distributed job training on one GPU: usually a missing
    ``torch.cuda.set_device(LOCAL_RANK)``, which puts every rank on GPU 0. A warning when another
    GPU on the machine has no process at all, else information (more ranks than GPUs)."""
    ranks = sorted(ranks, key=lambda s: (s.agent.rank or 0, s.pid))
    idle = sorted(str(p.index) for p in places.values()
                  if p.uuid != place.uuid and not p.processes and p.index is not None)
    level = WARNING if idle else INFO
    numbers = ", ".join(str(s.agent.rank) for s in ranks)
    who = ", ".join(f"rank {s.agent.rank} ({s.who}, {fmt_bytes(s.row.used_memory or 0) if s.row else '?'})"
                    for s in ranks)
    sentence = (f"{who} of a distributed job all train on GPU {place.index}"
                + (f", while GPU {', '.join(idle)} {'has' if len(idle) == 1 else 'have'} no process." if idle
                   else "."))
    action = ("Give each rank its own GPU: call torch.cuda.set_device(int(os.environ['LOCAL_RANK'])) before "
              "any CUDA work (or create tensors on f\"cuda:{LOCAL_RANK}\").")
    title = f"GPU {place.index}: ranks {numbers} share one GPU"
    evidence = {"ranks": float(len(ranks)), "idle_gpus": float(len(idle))}
    warning = RiskWarning(level, NEIGHBOUR, place.uuid, place.index, ranks[0].pid, title, evidence, sentence,
                          action)
    return {(NEIGHBOUR, place.uuid, ranks[0].pid): Finding(level, level, warning)}


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
