"""The source the monitor, `--once`, `record` and `attach` read: NVML plus the agents, joined
into one sample with what the agents reported since the last one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from vramtop.model import Sample
from vramtop.sources.agent import AgentSource, typed_events
from vramtop.sources.nvml import NvmlSource


def monitor_source(gpus: Sequence[str] | None, agent_wait: float = 0.0) -> MonitorSource:
    """NVML for every process (of the ``gpus`` selected), the allocator bill of those that run the
    vramtop agent: how every command builds its source."""
    return MonitorSource(NvmlSource(gpus), AgentSource(), agent_wait=agent_wait)


class MonitorSource:
    """NVML plus the agents: the source the monitor and the recorder read."""

    def __init__(self, nvml: NvmlSource, agents: AgentSource | None, agent_wait: float = 0.0) -> None:
        self.nvml = nvml
        self.agents = agents
        self.agent_wait = agent_wait
        self.dropped_events = 0  # agent events that did not validate

    def open(self) -> None:
        self.nvml.open()

    def read(self) -> Sample:
        sample = self.nvml.read()
        if self.agents is None:
            return sample
        agents = self.agents.poll(self.agent_wait)
        events, bad = typed_events(self.agents.drain_events())
        self.dropped_events += bad
        return replace(sample, agents=agents, events=tuple(events), problems=self.agents.visible_problems())

    def close(self) -> None:
        self.nvml.close()
        if self.agents is not None:
            self.agents.close()
