"""`vramtop --prometheus URL`: a canned answer of Prometheus' HTTP API (two hosts, one rank of a job
on each), a server that does not answer or answers something else. The real server:
tests/test_remote_live.py."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fake_exporter import serve
from tests.test_ui import box
from vramtop.analysis.jobs import jobs
from vramtop.errors import VramtopError
from vramtop.sources.prometheus_api import pages_from, parse_server, query_url
from vramtop.sources.remote import RemoteHosts

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
GiB = 1 << 30


def _series(name: str, value: float, instance: str, **labels: str) -> dict[str, Any]:
    return {"metric": {"__name__": name, "job": "vramtop", "instance": instance, **labels},
            "value": [1700000000.5, str(value)]}


def _host(instance: str, hostname: str, rank: int, peak_gib: int) -> list[dict[str, Any]]:
    gpu = {"gpu": "0", "uuid": f"GPU-{hostname}", "hostname": hostname}
    torch = {"gpu": "0", "pid": "4242", "rank": str(rank)}
    return [
        _series("vramtop_gpu_up", 1, instance, **gpu),
        _series("vramtop_gpu_memory_total_bytes", 80 * GiB, instance, **gpu),
        _series("vramtop_gpu_memory_used_bytes", 41 * GiB, instance, **gpu),
        _series("vramtop_torch_memory_reserved_bytes", 38 * GiB, instance, **torch),
        _series("vramtop_step_peak_bytes", peak_gib * GiB, instance, **torch),
        _series("vramtop_headroom_bytes", (80 - peak_gib - 2) * GiB, instance, **torch),
        _series("vramtop_bill_bytes", 30 * GiB, instance, category="activations", **torch),
        _series("vramtop_bill_bytes", 10 * GiB, instance, category="non_pytorch", **torch),
        _series("vramtop_step", 120 + rank, instance, pid="4242", rank=str(rank)),
        _series("vramtop_job_info", 1, instance, pid="4242", rank=str(rank), world_size="2", run_id="",
                master="10.0.0.1:29500"),
        _series("vramtop_last_sample_timestamp_seconds", 1700000000.0, instance),
        _series("vramtop_up", 1, instance),
    ]


def canned_answer() -> str:
    """What /api/v1/query answers for the query of prometheus_api.py over two nodes' exporters."""
    result = [*_host("node2:9400", "node2", 0, 60), *_host("node3:9400", "node3", 1, 70)]
    result.append({"metric": {"__name__": "vramtop_up", "job": "vramtop", "instance": "node4:9400"},
                   "value": [1700000000.5, "NaN"]})  # no figure: left out
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})


def test_an_api_answer_becomes_one_page_per_host_and_their_ranks_one_job():
    pages = pages_from(canned_answer())
    assert [(p.host, [g.uuid for g in p.gpus]) for p in pages] == [("node2", ["GPU-node2"]), ("node3", ["GPU-node3"])]
    (agent,) = pages[1].agents
    assert agent.remote is not None and agent.remote.devices[0].bill == (("activations", 30 * GiB),
                                                                           ("non_pytorch", 10 * GiB))
    # Without --per-process the exporter lists no rows: the agent's row carries its bill's sum.
    (row,) = pages[1].gpus[0].processes
    assert (row.pid, row.used_memory) == (4242, 40 * GiB)
    source = RemoteHosts(LocalBox(), [], fetch=lambda url, timeout: canned_answer(), prometheus="prom:9090")
    try:
        sample = source.read()
    finally:
        source.close()
    (job,) = jobs(sample)
    assert job.label == "master 10.0.0.1:29500" and job.world_size == 2
    assert [(r.rank, r.host, r.peak) for r in job.ranks] == [(0, "node2", 60 * GiB), (1, "node3", 70 * GiB)]
    assert job.closest is not None and job.closest.rank == 1 and job.spread is not None
    assert job.spread.gap == 10 * GiB


def test_one_query_per_refresh_restricted_to_vramtops_families():
    asked: list[str] = []

    def fetch(url: str, timeout: float) -> str:
        asked.append(url)
        return canned_answer()

    source = RemoteHosts(LocalBox(), [], fetch=fetch, prometheus="http://prom:9090/")
    try:
        source.read()
        source.read()
    finally:
        source.close()
    assert asked == [query_url("http://prom:9090")] * 2
    assert "vramtop_.%2B" in asked[0]


@pytest.mark.parametrize("answer, said", [
    ('{"status": "error", "errorType": "bad_data", "error": "parse error"}', "the query failed: parse error"),
    ("<html>not found</html>", "its answer is not JSON"),
    ('{"status": "success", "data": {"resultType": "matrix", "result": []}}', "not an instant vector"),
])
def test_an_answer_that_is_not_a_vector_is_a_problem_line(answer, said):
    source = RemoteHosts(LocalBox(), [], fetch=lambda url, timeout: answer, prometheus="prom:9090")
    try:
        sample = source.read()
    finally:
        source.close()
    (problem,) = sample.problems
    assert problem.startswith("Prometheus at http://prom:9090: cannot read the server (") and said in problem
    assert len(sample.gpus) == len(box().gpus)  # this host's GPUs, untouched


def test_a_server_that_never_answers_costs_a_problem_line_within_the_deadline():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()  # accepts connections, never answers
    port = listener.getsockname()[1]
    try:
        source = RemoteHosts(LocalBox(), [], timeout=0.5, prometheus=f"127.0.0.1:{port}")
        started = time.monotonic()
        try:
            sample = source.read()
        finally:
            source.close()
        assert time.monotonic() - started < 2.5
        assert sample.problems == (f"Prometheus at http://127.0.0.1:{port}: the server did not answer in time",)
    finally:
        listener.close()


def test_the_server_url_is_checked_before_anything_starts():
    assert parse_server("prom:9090") == "http://prom:9090"
    assert parse_server("https://prom.example/prometheus/") == "https://prom.example/prometheus"
    for bad in ("ftp://prom:9090", "http://", "http://prom:9090/?x=1"):
        with pytest.raises(VramtopError, match="expected the server's URL"):
            parse_server(bad)


def test_once_json_with_prometheus_over_http():
    served = threading.Event()

    with serve(canned_answer(), path="/api/v1/query", seen=served) as address:
        done = subprocess.run([sys.executable, "-m", "tests.fakes.run_with_fake_nvml", "--once", "--json",
                               "--prometheus", f"http://{address}"], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert [g["host"] for g in doc["gpus"]] == [None, None, "node2", "node3"]
    assert [(r["rank"], r["host"]) for r in doc["jobs"][0]["ranks"]] == [(0, "node2"), (1, "node3")]
    assert served.is_set()


class LocalBox:
    def open(self) -> None:
        pass

    def read(self):
        return box()

    def close(self) -> None:
        pass
