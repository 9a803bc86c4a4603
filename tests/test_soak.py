"""A short run of bench/soak.py (20 s): agent, monitor and recorder side by side at 0.1 s. All
three stay alive, their open fds and threads stay flat, their RSS grows by a bounded amount
(the 60-minute figures are the benchmark's, bench/RESULTS.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("psutil")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import soak


def test_agent_monitor_and_recorder_side_by_side_do_not_grow(tmp_path):
    out = tmp_path / "soak.json"
    assert soak.main(["--minutes", str(20 / 60), "--every", "2", "--warmup", "3", "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["died"] == {}
    assert result["with_agent"] > 50  # the recorder saw the agent's figures all along
    for row in result["rows"]:
        assert row["points"] >= 8, row
        # Flat, give or take one caught in flight: each NVML read runs on a worker thread of its
        # own (a hung driver cannot block the caller), and a socket may be open for a probe.
        assert row["fds"][1] - row["fds"][0] <= 1, row
        assert row["threads"][1] - row["threads"][0] <= 1, row
        assert row["rss_growth"] < 16, row  # a loose bound: the benchmark reports the figure
