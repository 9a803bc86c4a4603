"""The monitor's side of an agent's socket: what it decodes, and when."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.waiting import wait_for
from vramtop.agent._server import AgentServer
from vramtop.codec import to_dict
from vramtop.model import AgentSample
from vramtop.protocol import AGENT_PROTOCOL_MAX, AGENT_PROTOCOL_MIN
from vramtop.sources import agent as agent_source
from vramtop.sources.agent import AgentSource


def serve(directory: Path) -> AgentServer:
    beacon = {"pid": os.getpid(), "started": time.time(), "protocol": [AGENT_PROTOCOL_MIN, AGENT_PROTOCOL_MAX]}
    server = AgentServer(directory, beacon, lambda request: None)
    server.start()
    return server


def publish(server: AgentServer, step: int) -> None:
    sample = AgentSample(pid=os.getpid(), time=time.time(), torch_version="2.11.0", step=step)
    server.publish({"type": "sample", "sample": to_dict(sample)})


def test_only_the_newest_sample_is_decoded_and_an_unchanged_one_is_the_same_object(tmp_path, monkeypatch):
    server = serve(tmp_path / "vramtop")
    try:
        source = AgentSource(tmp_path / "vramtop")
        source.poll()
        # Until the server has taken the connection in, what it publishes goes to nobody.
        wait_for(lambda: publish(server, 1) or [a.step for a in source.poll()] == [1])
        decoded: list[object] = []
        real = agent_source.from_dict
        monkeypatch.setattr(agent_source, "from_dict", lambda cls, data: decoded.append(data) or real(cls, data))
        for step in (2, 3, 4):
            publish(server, step)
        time.sleep(0.5)  # all three arrive before the next poll, as at a 1 s refresh
        first = source.poll()
        assert [a.step for a in first] == [4]
        assert len(decoded) == 1
        assert source.poll()[0] is first[0]  # nothing new: the same sample, not decoded again
        assert len(decoded) == 1
    finally:
        server.stop()


def test_a_malformed_sample_ends_the_connection_with_a_reason(tmp_path):
    server = serve(tmp_path / "vramtop")
    try:
        source = AgentSource(tmp_path / "vramtop")
        source.poll()
        wait_for(lambda: publish(server, 1) or source.poll())
        bad = {"type": "sample", "sample": {"pid": "not a number"}}
        problems = wait_for(lambda: server.publish(bad) or (source.poll() == () and source.visible_problems()))
        assert any("malformed data from the agent" in p for p in problems)
    finally:
        server.stop()
