"""`vramtop --remote HOST:PORT`: the stdlib parser of the Prometheus text format, and what the real
exporter does not produce on a CPU-only machine (a fake page: tests/fakes/fake_exporter.py). The
real exporter, the monitor and the rank view: tests/test_remote_live.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.fake_exporter import exporter_page, serve
from tests.test_ui import NARROW_SIZE, WIDE_SIZE, box, feed, monitor, screen_text
from vramtop.errors import VramtopError
from vramtop.sources.prometheus_text import parse, parse_line
from vramtop.sources.remote import RemoteHosts, gpus_from, parse_address
from vramtop.sources.remote_page import host_page, merge_pages

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


def test_a_gpu_that_failed_there_and_stale_figures_are_said():
    page = host_page(parse(exporter_page("node2", gpus=2, failed_gpu=1, up=False)).metrics, "fallback")
    assert [(g.index, g.error) for g in page.gpus] == [(0, None), (1, "vramtop on node2 could not read this GPU")]
    merged = merge_pages(box(), [page])
    assert merged.problems == ("node2: its exporter serves old figures (NVML there did not answer)",)
    # The torch series of PID 7000 (no bill yet): a read-only agent on node2's GPU 0, rank 0.
    (agent,) = merged.remote_agents
    assert agent.remote is not None and (agent.pid, agent.rank, agent.remote.host) == (7000, 0, "node2")
    assert agent.remote.devices[0].gpu_uuid == "GPU-remote-0000" and agent.remote.devices[0].bill == ()


def test_once_exits_0_when_only_another_hosts_gpu_failed():
    with serve(exporter_page("node2", 2, failed_gpu=1)) as address:
        done = subprocess.run([sys.executable, "-m", "tests.fakes.run_with_fake_nvml", "--once", "--json",
                               "--remote", address], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "GPU 1 on node2 (GPU-remote-0001): vramtop on node2 could not read this GPU" in done.stderr
    assert [g["host"] for g in json.loads(done.stdout)["gpus"]] == [None, None, "node2", "node2"]


def page_of_giants(figure: str) -> str:
    """An exporter's page whose every figure is ``figure`` (the float's largest, say): well formed
    and finite, so read as it is, and then drawn, summed and divided like any other."""
    keep = ("#", "vramtop_up", "vramtop_gpu_up", "vramtop_last_sample_timestamp_seconds")
    return "\n".join(line if line.startswith(keep) or not line.strip() else re.sub(r" \S+$", f" {figure}", line)
                     for line in exporter_page("node2", 2).splitlines()) + "\n"


@pytest.mark.parametrize("figure", ["1.7976931348623157e308", "1e300", "9.3e18"])
async def test_another_hosts_giant_figures_are_drawn_without_an_error(figure):
    sample = merge_pages(box(), [host_page(parse(page_of_giants(figure)).metrics, "fallback")])
    assert sample.gpus[-1].host == "node2" and sample.gpus[-1].memory_used == int(float(figure))
    for size in (WIDE_SIZE, NARROW_SIZE):
        app = monitor()
        async with app.run_test(size=size) as pilot:
            await feed(pilot, sample, sample)
            for key in ("end", "r", "r"):  # its process selected, the rank view opened and closed
                await pilot.press(key)
                await pilot.pause()
            assert "node2" in screen_text(app)


def test_once_reads_another_hosts_giant_figures():
    with serve(page_of_giants("1.7976931348623157e308")) as address:
        for args in (["--once"], ["--once", "--json"]):
            done = subprocess.run([sys.executable, "-m", "tests.fakes.run_with_fake_nvml", *args, "--remote", address],
                                  cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
            assert "node2" in done.stdout
