"""`vramtop --remote` against the real `vramtop export`: the exporter runs over a fake NVML whose
GPUs have other UUIDs (FAKE_NVML_HOST, as if on another host) beside a fake-CUDA training process
with the real agent (rank 1 of a job of two); the monitor here runs rank 0 of the same job. What
the monitor shows of the other host is read from the exporter's own page, not a page written
from the metric names."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.test_export_live import REPO, TRAINER_MIB, Exporter, _env, _query, _until, prometheus_scraping
from tests.test_tui_tmux import SESSION, Tmux
from tests.test_ui import NARROW_SIZE, WIDE_SIZE, feed, monitor, screen_text, toasts
from vramtop.protocol import sample_from_document

MiB = 1 << 20
JOB_ENV = {"WORLD_SIZE": "2", "MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "ft-7"}


def _trainer(runtime: Path, rank: int, **env: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.fake_trainer"], cwd=REPO,
                            env=_env(runtime, RANK=str(rank), LOCAL_RANK="0", **JOB_ENV, **env),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
    return proc


def _runtime(path: Path) -> Path:
    path.mkdir(mode=0o700)
    return path


@dataclass
class Hosts:
    exporter: Exporter  # the other host's `vramtop export --per-process`
    remote_trainer: subprocess.Popen[str]  # rank 1, there
    doc: dict[str, Any]  # `vramtop --once --json --remote` here, with rank 0 here
    here: Path  # this host's agents' directory
    local_trainer: subprocess.Popen[str]  # rank 0, here
    span: tuple[float, float]  # Unix times: before the exporter started, after doc was read


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    """Two "hosts" on this machine, each with its own fake GPUs, agents' directory and rank."""
    pytest.importorskip("torch")
    base = tmp_path_factory.mktemp("hosts")
    started = time.time()
    there, here = _runtime(base / "there"), _runtime(base / "here")
    remote_trainer = _trainer(there, 1, FAKE_NVML_HOST="0fe1")
    exporter = Exporter(there, "--listen", "127.0.0.1:0", "-i", "0.2", "--per-process",
                        FAKE_NVML_PIDS=str(remote_trainer.pid), FAKE_NVML_HOST="0fe1")
    local_trainer = _trainer(here, 0)
    try:
        # The first scrapes may come before the agent's first census: wait for the bill.
        assert _until(lambda: "vramtop_bill_bytes" in exporter.get(), 20), "no bill exported"
        doc = once_json(here, "--remote", address(exporter), FAKE_NVML_PIDS=str(local_trainer.pid))
        yield Hosts(exporter, remote_trainer, doc, here, local_trainer, (started, time.time()))
    finally:
        exporter.stop()
        for proc in (remote_trainer, local_trainer):
            proc.kill()
            proc.wait()


def address(exporter: Exporter) -> str:
    return exporter.url.removeprefix("http://").removesuffix("/metrics")


def once_json(runtime: Path, *args: str, fake_nvml: bool = True, **env: str) -> dict[str, Any]:
    command = ["-m", "tests.fakes.run_with_fake_nvml"] if fake_nvml else ["-m", "vramtop"]
    done = subprocess.run([sys.executable, *command, "--once", "--json", *args], cwd=REPO,
                          env=_env(runtime, **env), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout), stderr=done.stderr)


def test_once_json_reads_the_real_exporters_gpus_processes_bill_and_rank(hosts):
    doc, remote_trainer = hosts.doc, hosts.remote_trainer
    host = os.uname().nodename
    gpus = doc["gpus"]
    assert [g["host"] for g in gpus] == [None, None, host, host]
    assert [g["uuid"][:8] for g in gpus[2:]] == ["GPU-0fe1", "GPU-0fe1"]
    assert gpus[2]["memory_total"] == 81559 * MiB
    (row,) = gpus[2]["processes"]
    assert (row["pid"], row["used_memory"]) == (remote_trainer.pid, TRAINER_MIB * MiB)
    assert "fake_trainer" in row["command"]
    (agent,) = doc["remote_agents"]
    assert (agent["pid"], agent["rank"], agent["remote"]["host"]) == (remote_trainer.pid, 1, host)
    # When the exporter read its figures, by its clock: not ordered with this sample's time (the
    # exporter reads every 0.2 s on its own; it may read again after this host's NVML read, before
    # it answers the scrape), only within the exporter's life before the answer.
    assert hosts.span[0] <= agent["remote"]["as_of"] <= hosts.span[1]
    (device,) = agent["remote"]["devices"]
    assert device["gpu_uuid"] == gpus[2]["uuid"] and device["gpu_index"] == 0
    assert sum(v for _, v in device["bill"]) == TRAINER_MIB * MiB  # the exporter's bill, whole
    assert {c for c, _ in device["bill"]} >= {"parameters_trainable", "allocator_cache", "non_pytorch"}
    assert device["reserved"] > 0 and device["headroom"] is not None and device["step_peak"] > 0
    assert agent["step"] > 0 and agent["launch"]["master"] == "10.1.2.3:29500"
    # Rank 0 here and rank 1 there: one job, grouped by its rendezvous.
    (job,) = doc["jobs"]
    assert job["label"] == "run ft-7 · master 10.1.2.3:29500" and job["world_size"] == 2
    assert [(r["rank"], r["host"]) for r in job["ranks"]] == [(0, None), (1, host)]
    assert job["ranks"][1]["peak"] == device["step_peak"]
    assert job["ranks"][1]["headroom"] == device["headroom"]


@pytest.mark.parametrize("size", [NARROW_SIZE, WIDE_SIZE], ids=["80x24", "160x48"])
async def test_the_monitor_shows_the_remote_rank_its_bill_and_what_it_cannot_show(hosts, size):
    sample = sample_from_document({k: v for k, v in hosts.doc.items() if k != "stderr"})
    host, pid = os.uname().nodename, hosts.remote_trainer.pid
    app = monitor()
    async with app.run_test(size=size, notifications=True) as pilot:
        await feed(pilot, sample)
        text = screen_text(app)
        assert f"@{host}" in text and " job " in text and "2 ranks" in text
        await pilot.press("r")
        await pilot.pause()
        assert f"rank   1  GPU  0 @{host}" in screen_text(app) or f"rank  1  GPU  0 @{host}" in screen_text(app)
        await pilot.press("r")
        uuid = sample.gpus[2].uuid
        for _ in range(12):
            if app.query_one("ProcessTable").selected_key() == f"{uuid}:{pid}":
                break
            await pilot.press("down")
        assert f"step {hosts.doc['remote_agents'][0]['step']} · rank 1 · as of" in screen_text(app)
        seen = screen_text(app)
        for _ in range(12):  # at 80x24 the bill is further down the details (PgDn)
            if "never signalled here" in seen:
                break
            await pilot.press("pagedown")
            seen += screen_text(app)
        assert "bill now: 38.9 GiB" in seen and "allocator cache" in seen and "never signalled here" in seen
        await pilot.press("k")
        await pilot.pause()
        assert "never signalled" in toasts(app) and app.screen is app.screen_stack[0]


def test_without_a_gpu_here_the_remote_hosts_are_still_shown(hosts, tmp_path):
    """This machine has no NVIDIA driver: the real NVML fails to start, and the other host shows."""
    doc = once_json(_runtime(tmp_path / "no-gpu"), "--remote", address(hosts.exporter), fake_nvml=False)
    assert [g["host"] for g in doc["gpus"]] == [os.uname().nodename] * 2
    (problem,) = doc["problems"]
    assert problem.startswith("this host's GPUs are not shown: ") and len(problem) > 40
    assert problem in doc["stderr"]


def test_prometheus_scraping_the_real_exporter_shows_the_other_host_and_its_rank(hosts, tmp_path):
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus): --prometheus was not "
                    "tested against a real server")
    with prometheus_scraping(address(hosts.exporter), tmp_path) as base:
        assert _until(lambda: _query(base, "vramtop_job_info"), 60), "Prometheus has not scraped the exporter"
        doc = once_json(hosts.here, "--prometheus", base, FAKE_NVML_PIDS=str(hosts.local_trainer.pid))
    host = os.uname().nodename
    assert [g["host"] for g in doc["gpus"]] == [None, None, host, host]
    (agent,) = doc["remote_agents"]
    assert agent["pid"] == hosts.remote_trainer.pid and agent["remote"]["host"] == host
    assert sum(v for _, v in agent["remote"]["devices"][0]["bill"]) == TRAINER_MIB * MiB
    (job,) = doc["jobs"]
    assert [(r["rank"], r["host"]) for r in job["ranks"]] == [(0, None), (1, host)]
    assert doc["problems"] == []


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
@pytest.mark.parametrize("fake_nvml, size", [(True, (160, 48)), (False, (80, 24))],
                         ids=["with-gpus-here-160x48", "no-gpu-here-80x24"])
def test_the_real_monitor_in_a_terminal_reads_the_other_host(hosts, tmp_path, fake_nvml, size):
    host = os.uname().nodename
    module = "tests.fakes.run_with_fake_nvml" if fake_nvml else "vramtop"
    command = ["env", "-u", "FAKE_NVML_GROW", f"XDG_RUNTIME_DIR={hosts.here}",
               f"FAKE_NVML_PIDS={hosts.local_trainer.pid}", f"PYTHONPATH={REPO}",
               sys.executable, "-m", module, "-i", "0.5", "--remote", address(hosts.exporter)]
    tmux = Tmux()
    try:
        tmux.start(command, *size, tmp_path / "status")
        if fake_nvml:  # rank 0 here, rank 1 there: one job
            tmux.wait_for(lambda s: f"@{host}" in s and "2 ranks" in s, "the other host's GPUs and the job")
            tmux("send-keys", "-t", SESSION, "r")
            tmux.wait_for(lambda s: re.search(rf"rank +1 +GPU +0 @{host} ", s) is not None
                          and re.search(r"rank +0 +GPU +0  ", s) is not None, "a line per rank, rank 1 there")
        else:
            tmux.wait_for(lambda s: f"@{host}" in s and "this host's GPUs are not shown" in s,
                          "the other host, and why this one's GPUs are not there")
        tmux("send-keys", "-t", SESSION, "q")
        assert tmux.wait_for_exit() == 0
    finally:
        tmux.kill_server()
