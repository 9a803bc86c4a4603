"""`vramtop export` as a user runs it: the command on a free port over a fake NVML (and a fake-CUDA
training process with the real agent), read over HTTP; a real Prometheus server scraping it
when one is installed; the shipped alerting rules and dashboard checked by promtool."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.test_launch import free_port

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
TRAINER_MIB = 39800  # what the fake NVML lists for the training process



def _env(runtime: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "XDG_RUNTIME_DIR": str(runtime),
            **extra}


class Exporter:
    """``vramtop export`` over the fake NVML, started on a free port."""

    def __init__(self, runtime: Path, *args: str, **env: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.run_with_fake_nvml", "export", *args],
                                     cwd=REPO, env=_env(runtime, **env), stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        self.lines: list[str] = []
        end = time.monotonic() + 30
        while time.monotonic() < end:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line.rstrip("\n"))
            found = re.search(r"serving metrics on (http://\S+)", line)
            if found:
                self.url = found[1]
                return
        self.stop()
        raise AssertionError(f"the exporter did not start: {self.lines}")

    def get(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        with urllib.request.urlopen(self.url, timeout=5) as response:
            assert response.status == 200
            text = response.read().decode()
        out: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out.setdefault(s.name, []).append((s.labels, s.value))
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture
def runtime(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def trainer(runtime: Path) -> Iterator[subprocess.Popen[str]]:
    pytest.importorskip("torch")
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.fake_trainer"], cwd=REPO, env=_env(runtime),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
    yield proc
    proc.kill()
    proc.wait()


def _until(condition: Any, seconds: float) -> Any:
    end = time.monotonic() + seconds
    while True:
        value = condition()
        if value or time.monotonic() > end:
            return value
        time.sleep(0.2)


def test_export_serves_the_fake_gpus_on_loopback_and_stops_on_sigterm(runtime):
    exporter = Exporter(runtime, "--listen", "127.0.0.1:0", "-i", "0.2", "--per-process")
    try:
        assert exporter.url.startswith("http://127.0.0.1:")
        assert not any("warning" in line for line in exporter.lines)  # loopback: nothing to warn about
        m = _until(lambda: (lambda got: got if got["vramtop_up"] == [({}, 1.0)] else None)(exporter.get()), 10)
        assert m, "vramtop_up never became 1"
        assert sorted(labels["gpu"] for labels, _ in m["vramtop_gpu_memory_total_bytes"]) == ["0", "1"]
        assert [labels["pid"] for labels, _ in m["vramtop_process_gpu_memory_bytes"]] == [str(exporter.proc.pid)]
    finally:
        assert exporter.stop() == 0


def test_a_listener_beyond_loopback_is_warned_about_in_one_line(runtime):
    exporter = Exporter(runtime, "--listen", "0.0.0.0:0")
    try:
        warnings = [line for line in exporter.lines if "warning" in line]
        assert len(warnings) == 1 and "0.0.0.0" in warnings[0]
    finally:
        exporter.stop()


def test_the_bill_of_a_training_process_with_the_agent_adds_up_to_its_nvml_figure(runtime, trainer):
    exporter = Exporter(runtime, "--listen", "127.0.0.1:0", "-i", "0.2", FAKE_NVML_PIDS=str(trainer.pid))
    try:
        m = _until(lambda: (lambda got: got if "vramtop_bill_bytes" in got else None)(exporter.get()), 20)
        assert m, "no bill exported"
        bill = {labels["category"]: v for labels, v in m["vramtop_bill_bytes"]}
        assert sum(bill.values()) == TRAINER_MIB * MiB
        labels = m["vramtop_bill_bytes"][0][0]
        assert (labels["gpu"], labels["pid"]) == ("0", str(trainer.pid))
        assert m["vramtop_step"][0][1] > 0
    finally:
        exporter.stop()


# -- a real Prometheus ---------------------------------------------------------------------------

@contextlib.contextmanager
def prometheus_scraping(target: str, tmp_path: Path, rules: Path | None = None) -> Iterator[str]:
    """A real Prometheus server on loopback scraping ``target`` every second (evaluating
    ``rules``, when given); yields its base URL and stops it afterwards."""
    config = tmp_path / "prometheus.yml"
    config.write_text(textwrap.dedent(f"""
        global:
          scrape_interval: 1s
          evaluation_interval: 1s
        rule_files: [{f'"{rules}"' if rules else ""}]
        scrape_configs:
          - job_name: vramtop
            static_configs:
              - targets: ["{target}"]
    """))
    port = free_port()
    server = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=15)


def _query(base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
    except OSError:
        return []
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_a_prometheus_server_scrapes_the_bill_and_sums_it_by_category(runtime, trainer, tmp_path):
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus): the real-server test "
                    "did not run")
    exporter = Exporter(runtime, "--listen", "127.0.0.1:0", "-i", "0.5", FAKE_NVML_PIDS=str(trainer.pid))
    target = exporter.url.removeprefix("http://").removesuffix("/metrics")
    try:
        with prometheus_scraping(target, tmp_path, REPO / "docs" / "prometheus" / "vramtop-alerts.yml") as base:
            _check_the_bill_and_rules(base)
    finally:
        exporter.stop()


def _check_the_bill_and_rules(base: str) -> None:
    bill = _until(lambda: _query(base, 'vramtop_bill_bytes{job="vramtop"}'), 60)
    assert bill, "Prometheus returned no bill series"
    assert {r["metric"]["category"] for r in bill} >= {"parameters_trainable", "allocator_cache", "non_pytorch"}
    total = _query(base, "sum without (category) (vramtop_bill_bytes)")
    assert [float(r["value"][1]) for r in total] == [TRAINER_MIB * MiB]
    assert _query(base, "vramtop_up == 1")
    # The rules loaded and evaluate (none fires on a healthy run).
    rules = _until(lambda: _rule_groups(base), 10)
    assert rules and rules[0]["name"] == "vramtop" and all(r["health"] != "err" for r in rules[0]["rules"])


def _rule_groups(base: str) -> list[dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=5) as response:
            groups = json.load(response)["data"]["groups"]
    except OSError:
        return []
    evaluated = groups and all(r.get("health") in ("ok", "err") for r in groups[0]["rules"])
    return list(groups) if evaluated else []


# -- the shipped rules and dashboard -------------------------------------------------------------

def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus): rules not checked")
    return path


def test_the_alerting_rules_pass_promtool():
    result = subprocess.run([_promtool(), "check", "rules", str(REPO / "docs/prometheus/vramtop-alerts.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((REPO / "docs/grafana/vramtop.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]


def test_the_dashboard_queries_are_valid_promql_over_exported_names(tmp_path):
    exprs = _dashboard_exprs()
    documented = (REPO / "docs/exporter.md").read_text()
    for expr in exprs:
        for name in re.findall(r"\b(vramtop_[a-z_]+)", expr):
            assert f"`{name}`" in documented, f"the dashboard reads {name}, which is not exported"
    # promtool checks PromQL syntax in rule files: each query becomes a recording rule, with
    # Grafana's variables given values.
    rules = [{"record": f"dashboard:query_{i}", "expr": re.sub(r"\$\w+", ".*", e).replace('pid=".*"', 'pid=~".*"')}
             for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML
    result = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
