"""Distributed jobs: the agents of one job's ranks (torchrun, accelerate, DeepSpeed, FSDP) put
together, each rank with its step peak and headroom, and what sets the ranks apart.

Which agents belong together, in order of trust (their launcher's environment, model.Launch):

1. the same rendezvous: ``TORCHELASTIC_RUN_ID`` (unless torchrun's default ``none``) and
   ``MASTER_ADDR:MASTER_PORT``; two jobs running at once cannot share a master's port;
2. else the same launcher: the parent PID in the same PID namespace (``mp.spawn``);
3. else (older agents that report no launcher) the same world size: a guess, said as such.

A process with no rank, or alone in a world of one, is not a job.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vramtop.analysis.subjects import Subject, places, subjects
from vramtop.model import AgentSample, RemoteDevice, Sample
from vramtop.units import fmt_bytes

# torchrun's --rdzv-id when none is given: every static launch has it, so it tells jobs apart only
# with the master's address.
DEFAULT_RUN_ID = "none"


@dataclass(frozen=True)
class RankState:
    """One rank of a job, on the device where it is closest to running out of memory."""

    rank: int
    pid: int  # as NVML reports it when matched, else the agent's own
    agent: AgentSample
    subject: Subject | None  # None while its device cannot be placed on a GPU of the sample

    remote: RemoteDevice | None = None  # another host's rank: the figures its exporter published

    @property
    def host(self) -> str | None:
        """Another host's name, for a rank read from its exporter; None: this host's."""
        return self.agent.remote.host if self.agent.remote else None

    @property
    def gpu_index(self) -> int | None:
        if self.remote is not None:
            return self.remote.gpu_index
        return self.subject.place.index if self.subject else None

    @property
    def peak(self) -> int | None:
        """The bill at the allocator's peak: reserved then + non-PyTorch (bytes)."""
        if self.remote is not None:
            return self.remote.step_peak
        return self.subject.own_peak if self.subject else None

    @property
    def headroom(self) -> int | None:
        """What is left of the device (or the process's cap) at the projected step peak; negative
        when the peak would not fit."""
        if self.remote is not None:
            return self.remote.headroom
        s = self.subject
        return None if s is None or not s.limit else s.limit - s.load

    @property
    def limit(self) -> int | None:
        if self.remote is not None:
            return self.remote.limit
        return self.subject.limit if self.subject else None

    @property
    def load(self) -> int | None:
        """What counts against ``limit``: the projected step peak (or, under a cap, the peak reserved)."""
        limit, headroom = self.limit, self.headroom
        return None if not limit or headroom is None else limit - headroom

    @property
    def step(self) -> int:
        return self.agent.step


@dataclass(frozen=True)
class PeakSpread:
    """How far apart the ranks' step peaks are: a skewed rank is the one that runs out first."""

    highest: RankState
    lowest: RankState
    median: float

    @property
    def gap(self) -> int:
        return (self.highest.peak or 0) - (self.lowest.peak or 0)

    @property
    def ratio(self) -> float | None:
        """The highest peak over the median one (1.0: the ranks are even)."""
        return (self.highest.peak or 0) / self.median if self.median > 0 else None


@dataclass(frozen=True)
class Job:
    label: str  # how the job is named: its run id, its master's address or its launcher
    world_size: int | None  # every rank, on every node; None when no agent says
    ranks: tuple[RankState, ...]  # the ranks on this host, by rank
    guessed: bool = False  # grouped by world size alone (older agents): maybe two jobs

    @property
    def closest(self) -> RankState | None:
        """The rank with the least headroom: the first to run out of memory."""
        known = [r for r in self.ranks if r.headroom is not None]
        return min(known, key=lambda r: (r.headroom, r.rank)) if known else None

    @property
    def spread(self) -> PeakSpread | None:
        """The spread of the ranks' peaks; None with fewer than two peaks known."""
        known = [r for r in self.ranks if r.peak is not None]
        if len(known) < 2:
            return None
        highest = max(known, key=lambda r: (r.peak or 0, -r.rank))
        lowest = min(known, key=lambda r: (r.peak or 0, r.rank))
        return PeakSpread(highest, lowest, float(statistics.median(r.peak or 0 for r in known)))


def jobs(sample: Sample) -> tuple[Job, ...]:
    """The distributed jobs with a rank on this sample's host or on a remote one (--remote,
    --prometheus), in order of their first rank."""
    by_key: dict[tuple[object, ...], list[AgentSample]] = {}
    for agent in (*sample.agents, *sample.remote_agents):
        key = job_key(agent)
        if key is not None:
            by_key.setdefault(key, []).append(agent)
    if not by_key:
        return ()
    found: dict[int, list[Subject]] = {}
    for s in subjects(sample, places(sample), {}):
        found.setdefault(id(s.agent), []).append(s)
    out = []
    for key, agents in by_key.items():
        world = next((w for w in map(world_size, agents) if w is not None), None)
        if len(agents) < 2 and (world is None or world < 2):
            continue  # a process alone in a world of one
        ranks = tuple(sorted((_rank_state(a, found.get(id(a), [])) for a in agents), key=lambda r: (r.rank, r.pid)))
        out.append(Job(_label(key), world, ranks, guessed=key[0] == "world"))
    return tuple(sorted(out, key=lambda j: (j.ranks[0].rank, j.ranks[0].pid)))


def job_with(jobs_found: Sequence[Job], pid: int) -> Job | None:
    """The job one of whose ranks is ``pid`` (as NVML reports it, or as its agent does)."""
    return next((j for j in jobs_found if any(pid in (r.pid, r.agent.pid) for r in j.ranks)), None)


def rank_of(agent: AgentSample) -> int | None:
    if agent.rank is not None:
        return agent.rank
    return agent.launch.rank if agent.launch else None


def world_size(agent: AgentSample) -> int | None:
    """torch.distributed's world size, else the launcher's WORLD_SIZE."""
    if agent.world_size is not None:
        return agent.world_size
    return agent.launch.world_size if agent.launch else None


def job_key(agent: AgentSample) -> tuple[object, ...] | None:
    """What the agents of one job have in common (see the module's docstring); None: no rank."""
    if rank_of(agent) is None:
        return None
    launch = agent.launch
    if launch is not None:
        run = launch.run_id if launch.run_id != DEFAULT_RUN_ID else None
        if run is not None or launch.master is not None:
            return ("rendezvous", run, launch.master)
        if launch.parent_pid is not None:
            return ("launcher", agent.remote.host if agent.remote else None, agent.pid_namespace, launch.parent_pid)
    return ("world", world_size(agent))


def _rank_state(agent: AgentSample, found: list[Subject]) -> RankState:
    rank = rank_of(agent)
    assert rank is not None  # job_key keeps only ranked agents
    if agent.remote is not None:  # figures from its host's exporter: nothing is placed here

        def remote_room(d: RemoteDevice) -> float:
            return d.headroom if d.headroom is not None else float("inf")

        device = min(agent.remote.devices, key=remote_room, default=None)
        return RankState(rank, agent.pid, agent, None, device)
    if not found:
        return RankState(rank, agent.host_pid or agent.pid, agent, None)

    def room(s: Subject) -> float:
        return s.limit - s.load if s.limit else float("inf")

    subject = min(found, key=room)
    return RankState(rank, subject.pid, agent, subject)


def _label(key: tuple[object, ...]) -> str:
    kind = key[0]
    if kind == "rendezvous":
        run, master = key[1], key[2]
        return " · ".join(part for part in (f"run {run}" if run else None, f"master {master}" if master else None)
                          if part)
    if kind == "launcher":
        return f"launcher PID {key[3]}" + (f" on {key[1]}" if key[1] else "")
    world = key[1]
    return f"world size {world}" if world is not None else "ranks without a launcher"


def summary(job: Job) -> str:
    """One line about the job: its ranks here, the rank closest to OOM, the spread of the peaks."""
    here = len(job.ranks)
    ranks = f"{here} of {job.world_size} ranks" if job.world_size not in (None, here) else f"{here} ranks"
    parts = [f"job {job.label}" + (" (grouped by world size: an older agent)" if job.guessed else ""), ranks]
    closest = job.closest
    if closest is not None and closest.headroom is not None:
        room = (f"{fmt_bytes(closest.headroom)} left" if closest.headroom >= 0
                else f"{fmt_bytes(-closest.headroom)} short")
        where = f"GPU {closest.gpu_index}" + (f" on {closest.host}" if closest.host else "")
        parts.append(f"closest to OOM: rank {closest.rank} ({where}, {room} at its peak)")
    spread = job.spread
    if spread is not None:
        ratio = f", max/median {spread.ratio:.2f}" if spread.ratio is not None else ""
        parts.append(f"peaks spread {fmt_bytes(spread.gap)} (rank {spread.highest.rank} highest{ratio})")
    return " · ".join(parts)


def job_to_dict(job: Job) -> dict[str, Any]:
    """The job as JSON-ready values (bytes as integers), for --once --json and the report."""
    closest, spread = job.closest, job.spread
    return {
        "label": job.label,
        "world_size": job.world_size,
        "guessed": job.guessed,
        "closest_rank": closest.rank if closest else None,
        "peak_spread": None if spread is None else {
            "highest_rank": spread.highest.rank, "lowest_rank": spread.lowest.rank, "gap": spread.gap,
            "median": spread.median, "ratio": spread.ratio},
        "ranks": [{"rank": r.rank, "pid": r.pid, "host": r.host, "gpu_index": r.gpu_index,
                   "gpu_uuid": r.remote.gpu_uuid if r.remote else r.subject.place.uuid if r.subject else None,
                   "step": r.step, "peak": r.peak,
                   "headroom": r.headroom, "limit": r.limit} for r in job.ranks],
    }
