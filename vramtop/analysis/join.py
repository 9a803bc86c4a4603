"""Which agent device belongs to which NVML process row: decided once per sample, here.

NVML lists host PIDs; an agent knows its process's PID in its own namespace. Inside a container
(its own PID namespace) the two differ: NVML says 1213, the agent says 1. The rule, in order:

1. the row's PID namespace (``/proc/<pid>/ns/pid``, read by the monitor) is the agent's and the
   row's PID inside it (``NSpid``) is the agent's PID: the same process, wherever either runs;
2. the agent's ``host_pid`` (set by a source that knows it) is the row's PID;
3. the same PID, when neither namespace says otherwise (one of them unknown, or both equal).

The place is the agent device's GPU (by UUID); a device without a UUID is taken for the only
GPU of a one-GPU sample (marked ``inferred``). An agent whose process is in another namespace
and has no row is ``foreign``: its PID means nothing here, so it is never shown as a local PID
nor signalled. Every consumer (the risk rules, the TUI's table and detail, the report, record
--pid) reads this join; none matches on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramtop.model import AgentDevice, AgentSample, ProcessSample, Sample


@dataclass(frozen=True)
class Match:
    """One agent device and what it is on this host."""

    agent: AgentSample
    device: AgentDevice
    gpu_uuid: str | None  # the GPU (or MIG device) it is on; None when it cannot be placed
    row: ProcessSample | None  # its NVML process row, when found
    inferred: bool = False  # placed on the only GPU for want of a UUID
    foreign: bool = False  # no row, and the agent's PID is another namespace's

    @property
    def pid(self) -> int:
        """The PID to show and act on: NVML's (host) PID when the row is known."""
        return self.row.pid if self.row is not None else self.agent.pid

    @property
    def key(self) -> tuple[str, int] | None:
        """(GPU UUID, host PID): the key of its NVML row."""
        return None if self.gpu_uuid is None else (self.gpu_uuid, self.pid)


@dataclass(frozen=True)
class Join:
    matches: tuple[Match, ...]

    def of_row(self, row: ProcessSample) -> Match | None:
        """The agent device of an NVML process row."""
        return next((m for m in self.matches if m.row is row or (m.row is not None and m.row.pid == row.pid
                                                                 and m.gpu_uuid == row.gpu_uuid)), None)

    def of_pid(self, pid: int, gpu_uuid: str) -> Match | None:
        """The agent device of the process NVML lists as ``pid`` on ``gpu_uuid``."""
        return next((m for m in self.matches if m.gpu_uuid == gpu_uuid and m.pid == pid), None)

    def of_process(self, pid: int) -> tuple[Match, ...]:
        """Every device of the process NVML lists as ``pid`` (or, unmatched, whose agent says so)."""
        return tuple(m for m in self.matches if m.pid == pid)


_last: tuple[Sample, Join] | None = None


def join(sample: Sample) -> Join:
    """The join of ``sample`` (computed once for a sample, however many consumers ask)."""
    global _last
    if _last is not None and _last[0] is sample:
        return _last[1]
    monitor_namespace = sample.host.pid_namespace
    places: dict[str, tuple[ProcessSample, ...]] = {}
    for gpu in sample.gpus:
        places[gpu.uuid] = gpu.processes
        for mig in gpu.mig_devices:
            places[mig.uuid] = tuple(p for p in gpu.processes if p.gpu_instance_id == mig.gpu_instance_id)
    single = next(iter(places)) if len(sample.gpus) == 1 else None
    matches = []
    for agent in sample.agents:
        for device in agent.devices:
            uuid, inferred = device.uuid, False
            if uuid is None and single is not None:
                uuid, inferred = single, True
            rows = places.get(uuid, ()) if uuid is not None else ()
            row = _row_of(agent, rows)
            foreign = row is None and _other_namespace(agent, monitor_namespace)
            matches.append(Match(agent, device, uuid if uuid in places else None, row, inferred, foreign))
    result = Join(tuple(matches))
    _last = (sample, result)
    return result


def _row_of(agent: AgentSample, rows: tuple[ProcessSample, ...]) -> ProcessSample | None:
    if agent.pid_namespace is not None:
        for row in rows:
            if row.pid_namespace == agent.pid_namespace and row.ns_pid == agent.pid:
                return row
    if agent.host_pid is not None:
        for row in rows:
            if row.pid == agent.host_pid:
                return row
    for row in rows:
        if row.pid == agent.pid and (row.pid_namespace is None or agent.pid_namespace is None
                                     or row.pid_namespace == agent.pid_namespace):
            return row
    return None


def _other_namespace(agent: AgentSample, monitor_namespace: int | None) -> bool:
    return (agent.pid_namespace is not None and monitor_namespace is not None
            and agent.pid_namespace != monitor_namespace)
