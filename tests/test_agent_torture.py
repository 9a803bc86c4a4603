"""A short run of bench/agent_torture.py: a live agent in a real training process, attacked;
behaviour only (timings are the benchmark's business): the process lives, a real monitor is
served within a second through every attack, fds and threads come back to where they were."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import agent_torture


def test_a_live_agent_under_attack_keeps_serving_and_gives_back_what_it_took(tmp_path, capsys):
    out = tmp_path / "torture.json"
    assert agent_torture.main(["--scale", "0.05", "--rounds", "1", "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())
    for row in result["rows"]:
        assert row["alive"], row
        assert row["monitor_s"] < 1.0, row
        assert row["attack_error"] is None, row
        assert row["steps"] > 0, row
    before, after = result["before"], result["after"]
    assert after["fds"] == before["fds"] and after["threads"] == before["threads"]
    assert after["rss_mib"] - before["rss_mib"] < 20  # a loose bound: the benchmark reports the figure
