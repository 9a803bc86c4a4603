"""`vramtop --remote HOST:PORT`: other hosts' GPUs read from their exporters' pages (a stdlib
parser of the Prometheus text format), shown next to this host's, never signalled."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.fakes.fake_exporter import exporter_page, serve
from tests.test_ui import NARROW_SIZE, WIDE_SIZE, box, feed, monitor, screen_text, toasts
from vramtop.errors import VramtopError
from vramtop.sources.prometheus_text import parse, parse_line
from vramtop.sources.remote import RemoteHosts, gpus_from, parse_address

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def test_the_text_format_is_read_as_prometheus_writes_it():
    page = parse('# HELP x help\n# TYPE x gauge\nx 1\ny{a="1",b="two words"} 2.5 1700000000000\n'
                 'z{cmd="a \\"quoted\\" \\\\path\\nnext",} +Inf\nw{} -3e2\nnan_one NaN\n'
                 'broken{a="1" 3\n{a="1"} 4\nv{a="1"} 1 2 3\n')
    assert [(m.name, m.labels, m.value) for m in page.metrics] == [
        ("x", {}, 1.0), ("y", {"a": "1", "b": "two words"}, 2.5),
        ("z", {"cmd": 'a "quoted" \\path\nnext'}, float("inf")), ("w", {}, -300.0)]
    assert page.skipped == 4  # NaN (no data), a label list left open, no name, extra fields
    assert parse_line('m{a="x,y}",b="2"} 7') is not None and parse_line('m{a="x,y}",b="2"} 7').labels["a"] == "x,y}"


def test_an_exporters_page_becomes_that_hosts_gpus_and_processes():
    gpus = gpus_from(parse(exporter_page("node2", gpus=2)), "fallback")
    assert [(g.index, g.uuid, g.host) for g in gpus] == [(0, "GPU-remote-0000", "node2"),
                                                        (1, "GPU-remote-0001", "node2")]
    assert (gpus[1].memory_used, gpus[1].memory_total, gpus[1].memory_reserved) == (30001 * MiB, 81559 * MiB, 480 * MiB)
    (proc,) = gpus[0].processes
    assert (proc.pid, proc.used_memory, proc.user) == (7000, 29500 * MiB, "bob")
    assert proc.command == 'python train.py --name "run 0"'


class LocalBox:
    def open(self) -> None:
        pass

    def read(self):
        return box()

    def close(self) -> None:
        pass


def test_remote_gpus_follow_the_local_ones_and_a_silent_host_is_a_problem_not_a_failure():
    pages = {"http://node2:9400/metrics": exporter_page("node2", 1)}

    def fetch(url: str, timeout: float) -> str:
        if url not in pages:
            raise TimeoutError()
        return pages[url]

    source = RemoteHosts(LocalBox(), ["node2:9400", "http://node3:9400/metrics"], fetch=fetch)
    try:
        sample = source.read()
    finally:
        source.close()
    local = box()
    assert [g.uuid for g in sample.gpus] == [*(g.uuid for g in local.gpus), "GPU-remote-0000"]
    assert [g.host for g in sample.gpus] == [None, None, "node2"]
    assert sample.problems == ("node3:9400: its exporter did not answer in time",)


def test_addresses_are_checked_before_anything_starts():
    assert parse_address("node2:9400") == "http://node2:9400/metrics"
    for bad in ("node2", "node2:http", ":9400", "node2:70000"):
        with pytest.raises(VramtopError, match="expected HOST:PORT"):
            parse_address(bad)


def test_once_json_shows_the_remote_hosts_gpus_over_http():
    with serve(exporter_page("node2", 2)) as address:
        done = subprocess.run([sys.executable, "-m", "tests.fakes.run_with_fake_nvml", "--once", "--json",
                               "--remote", address], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    gpus = json.loads(done.stdout)["gpus"]
    assert [g["host"] for g in gpus] == [None, None, "node2", "node2"]
    assert gpus[3]["memory_used"] == 30001 * MiB and gpus[2]["processes"][0]["pid"] == 7000


@pytest.mark.parametrize("size", [NARROW_SIZE, WIDE_SIZE], ids=["80x24", "160x48"])
async def test_the_monitor_marks_another_hosts_gpus_and_never_signals_its_processes(size):
    remote = gpus_from(parse(exporter_page("node2", 1)), "node2")
    sample = replace(box(), gpus=(*box().gpus, *remote))
    app = monitor()
    async with app.run_test(size=size, notifications=True) as pilot:
        await feed(pilot, sample)
        text = screen_text(app)
        assert "@node2" in text and "[node2] python train.py" in text
        for _ in range(10):
            if app.query_one("ProcessTable").selected_key() == "GPU-remote-0000:7000":
                break
            await pilot.press("down")
        assert "A process on node2, read from its exporter" in screen_text(app)
        await pilot.press("k")
        await pilot.pause()
        assert "never signalled" in toasts(app) and app.screen is app.screen_stack[0]
