"""One join of agents to NVML rows (analysis/join.py), and every consumer reading it: the risk
rules, the process table's marker, the detail pane, the report, record --pid."""

from __future__ import annotations

from dataclasses import replace

from tests.test_risk import PID, UUID, snap
from vramtop.analysis.join import join
from vramtop.analysis.report_processes import find_agent
from vramtop.analysis.risk import HEADROOM, RiskTracker
from vramtop.model import ProcessSample
from vramtop.sinks.record_session import only_process

GiB = 1 << 30
CONTAINER, HOST = 4026532001, 4026531836  # PID namespace inodes


def in_container(sample, *, row_namespace=CONTAINER, row_ns_pid=1, agent_pid=1, monitor=HOST):
    """The training process runs in a container: NVML lists host PID ``PID``, its agent says 1."""
    gpu = sample.gpus[0]
    rows = tuple(replace(p, pid_namespace=row_namespace, ns_pid=row_ns_pid) if p.pid == PID else p
                 for p in gpu.processes)
    agents = tuple(replace(a, pid=agent_pid, host_pid=None, pid_namespace=CONTAINER) for a in sample.agents)
    return replace(sample, gpus=(replace(gpu, processes=rows),), agents=agents,
                   host=replace(sample.host, pid_namespace=monitor))


def test_an_agent_in_another_pid_namespace_is_matched_to_its_host_pid():
    # Measured on the GPU machine: under `unshare --pid --fork --mount-proc` the agent says PID 1
    # and NVML lists 1213; the monitor outside did not match them and its warning named "PID 1".
    sample = in_container(snap(0.0, reserved_peak=75 * GiB))
    (m,) = join(sample).matches
    assert m.row is not None and m.pid == PID and not m.foreign
    assert find_agent(sample, m.row) == (m.agent, m.device)
    tracker = RiskTracker()
    for i in range(3):
        warnings = tracker.update(replace(in_container(snap(float(i), reserved_peak=75 * GiB))))
    (w,) = [w for w in warnings if w.kind == HEADROOM]
    assert w.pid == PID and f"PID {PID}" in w.sentence and "PID 1 " not in w.sentence + " "
    assert only_process(sample, PID).agents == sample.agents


def test_the_same_number_in_two_namespaces_is_two_processes():
    # The agent's PID 1 is not the host's PID 1 (init): never matched, never named as local.
    sample = in_container(snap(0.0), row_namespace=HOST, row_ns_pid=PID)
    sample = replace(sample, gpus=(replace(sample.gpus[0], processes=(
        *sample.gpus[0].processes, ProcessSample(1, UUID, 1 * GiB, "C", pid_namespace=HOST, ns_pid=1)),),))
    (m,) = join(sample).matches
    assert m.row is None and m.foreign and m.pid == 1
    tracker = RiskTracker()
    for i in range(3):
        warnings = tracker.update(replace(sample, time=float(i)))
    assert all("PID 1 (in another PID namespace)" in w.title or w.pid != 1 for w in warnings)


def test_a_monitor_in_the_same_namespace_matches_by_pid():
    sample = in_container(snap(0.0), row_namespace=None, row_ns_pid=None, agent_pid=PID, monitor=CONTAINER)
    (m,) = join(sample).matches
    assert m.row is not None and m.pid == PID and not m.foreign


async def test_the_table_marker_and_the_detail_pane_agree_on_a_device_without_a_uuid():
    # On a one-GPU box an agent device without a UUID can only be that GPU: the table marks the
    # row and the detail pane shows the bill (the marker once looked the UUID up and showed no
    # agent while the pane showed its bill).
    from tests.test_ui import WIDE_SIZE, feed, monitor, screen_text

    sample = snap(0.0)
    sample = replace(sample, agents=tuple(replace(a, devices=tuple(replace(d, uuid=None) for d in a.devices))
                                          for a in sample.agents))
    (m,) = join(sample).matches
    assert m.inferred and m.key == (UUID, PID)
    app = monitor()
    async with app.run_test(size=WIDE_SIZE) as pilot:
        await feed(pilot, sample)
        screen = screen_text(app)
        assert f"●{PID}" in screen and "allocated" in screen and "No vramtop agent" not in screen


def test_once_json_names_the_nvml_pid_the_join_found_for_an_agent_in_a_container():
    import json

    from vramtop.sinks.once import render_json

    doc = json.loads(render_json(in_container(snap(0.0))))
    (agent,) = doc["agents"]
    assert agent["pid"] == 1 and agent["host_pid"] == PID  # its own PID, and the one nvidia-smi shows
    # Unmatched (the same number in two namespaces): no host PID is invented.
    lone = in_container(snap(0.0), row_namespace=HOST, row_ns_pid=PID)
    assert "host_pid" not in json.loads(render_json(lone))["agents"][0] or \
        json.loads(render_json(lone))["agents"][0]["host_pid"] is None
