"""The OOMs of a recording, each once, with the post-mortem summary of each (analysis/postmortem.py)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from vramtop.analysis.bill import non_pytorch_of
from vramtop.analysis.diagnosis import with_history
from vramtop.analysis.join import join
from vramtop.analysis.postmortem import postmortem_of
from vramtop.analysis.samples import gpu_used, selected
from vramtop.analysis.thresholds import Thresholds
from vramtop.codec import DecodeError, from_dict
from vramtop.model import AgentDevice, AgentSample, OomReport, Sample, StepPeak
from vramtop.recording import Event


@dataclass(frozen=True)
class PostMortemSeen:
    """An OOM a training process's agent captured, with its summary (analysis/postmortem.py)."""

    time: float
    pid: int
    oom: OomReport
    lines: tuple[str, ...]



def postmortems(fresh: list[Sample], events: Sequence[Event], selectors: Sequence[str] | None,
                 thresholds: Thresholds | None) -> list[PostMortemSeen]:
    """Each OOM once, from the agent's figures at the failure: kept in the samples of a process
    that survived it, or only in an "oom" event when the OOM killed it. The process's memory
    outside PyTorch comes from the samples before it (the median of NVML's figure minus
    reserved), and so does what other processes held on its GPU (for the diagnosis)."""
    before: dict[tuple[int, int], AgentDevice] = {}
    agents: dict[int, AgentSample] = {}
    outside: dict[tuple[int, int], list[int]] = {}
    others: dict[tuple[int, int], int] = {}
    steps: dict[tuple[int, int], list[StepPeak]] = {}
    seen: set[tuple[int, float]] = set()
    out = []
    ooms = sorted(((e.time, e.pid, report) for e in events if e.kind == "oom" and isinstance(e.pid, int)
                   and (report := _oom_report(e.data)) is not None), key=lambda x: x[0])

    def add(pid: int, oom: OomReport, agent: AgentSample | None) -> None:
        if (pid, oom.time) in seen:
            return
        seen.add((pid, oom.time))
        device = before.get((pid, oom.device))
        uuid = device.uuid if device is not None and device.uuid else ""
        if selected(oom.device, uuid, selectors):
            known = outside.get((pid, oom.device))
            oom = with_history(oom, steps.get((pid, oom.device), []))
            summary = postmortem_of(oom, device, int(statistics.median(known)) if known else None,
                                    agent=agent, thresholds=thresholds, others=others.get((pid, oom.device)))
            out.append(PostMortemSeen(oom.time, pid, oom, summary.lines))

    i = 0
    for s in fresh:
        while i < len(ooms) and ooms[i][0] <= s.time:
            _, pid, oom = ooms[i]
            add(pid, oom, agents.get(pid))
            i += 1
        for agent in s.agents:
            agents[agent.pid] = agent
            if agent.last_oom is not None:
                add(agent.pid, agent.last_oom, agent)
            for device in agent.devices:
                before[(agent.pid, device.index)] = device
                kept = steps.setdefault((agent.pid, device.index), [])
                if device.last_step is not None and (not kept or kept[-1].step < device.last_step.step):
                    kept.append(device.last_step)
                if device.uuid is None:
                    continue
                match = next((m for m in join(s).matches if m.agent is agent and m.device is device), None)
                row = match.row if match is not None else None
                used = row.used_memory if row is not None else None
                on_gpu = gpu_used(s, device.uuid)
                non_pytorch = non_pytorch_of(device.stats, used, on_gpu)
                if non_pytorch is not None:
                    outside.setdefault((agent.pid, device.index), []).append(non_pytorch)
                gpu = s.gpu(device.uuid)
                if gpu is not None and row is not None:  # the rows of one poll: comparable
                    others[(agent.pid, device.index)] = sum(p.used_memory or 0 for p in gpu.processes if p is not row)
    for _, pid, oom in ooms[i:]:  # after the last sample: the process died of it
        add(pid, oom, agents.get(pid))
    out.sort(key=lambda pm: pm.time)
    return out


def _oom_report(data: object) -> OomReport | None:
    try:
        return from_dict(OomReport, data)
    except (DecodeError, TypeError, ValueError):
        return None
