"""bench/exporter_cpu.py end to end over the fake NVML with a tiny window (no GPU): the shape of
its JSON and that CPU and scrapes were measured; never how fast anything is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


def test_fake_mode_measures_both_exporters(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "result.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "exporter_cpu.py"), "--fake", "--seconds", "2",
                             "--warmup", "1", "--scrape-every", "0.5", "--json-out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["schema"] == "vramtop.bench.exporter_cpu" and data["fake"] is True
    # At least one scrape answered (how many fit in 2 s depends on the machine's load).
    assert data["scraped"]["scrapes"] >= 1 and data["scraped"]["bytes"] > 0
    assert data["scraped"]["cpu_percent"] > 0 and data["not_scraped"]["cpu_percent"] >= 0
    assert "| scraped every 0.5 s |" in result.stdout
