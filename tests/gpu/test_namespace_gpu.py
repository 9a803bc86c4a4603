"""A training process in its own PID namespace (as in a container), the monitor outside: the
agent says PID 1 or 2, NVML lists the host PID, and the join puts the bill on NVML's row."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

TRAIN = """
import os, sys, time, torch
model = torch.nn.Sequential(torch.nn.Linear(2048, 8192), torch.nn.ReLU(), torch.nn.Linear(8192, 2048)).cuda()
opt = torch.optim.AdamW(model.parameters())
for _ in range(20):
    model(torch.randn(256, 2048, device="cuda")).pow(2).mean().backward()
    opt.step()
    opt.zero_grad()
torch.cuda.synchronize()
open(sys.argv[1], "w").write(str(os.getpid()))
time.sleep(float(sys.argv[2]))
"""


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="unshare --pid not permitted here (needs CAP_SYS_ADMIN)")
def test_an_agent_in_another_pid_namespace_gets_its_bill_on_its_nvml_row(tmp_path):
    run = tmp_path / "xdg"
    run.mkdir(mode=0o700)
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_RUNTIME_DIR": str(run)}
    (tmp_path / "train.py").write_text(TRAIN)
    ready = tmp_path / "ready"
    job = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "vramtop", "run",
                            "--agent-interval", "0.1", "--", sys.executable, "train.py", str(ready), "15"],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not ready.exists() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ready.exists(), job.communicate(timeout=30)
        time.sleep(1.5)  # a census after the last step, then a sample
        inner_pid = int(ready.read_text())
        once = subprocess.run([sys.executable, "-m", "vramtop", "--once", "--json"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)
        text = subprocess.run([sys.executable, "-m", "vramtop", "--once"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)
    finally:
        job.kill()
        job.wait()
    assert once.returncode == 0, once.stderr
    doc = json.loads(once.stdout)
    rows = [p for g in doc["gpus"] for p in g["processes"] if "train.py" in (p.get("command") or "")]
    assert len(rows) == 1, json.dumps(doc["gpus"], indent=1)[:3000]
    host_pid = rows[0]["pid"]
    (agent,) = [a for a in doc["agents"] if a["pid"] == inner_pid]
    print(f"agent PID {inner_pid} in its namespace, NVML PID {host_pid}; host_pid in --once --json: "
          f"{agent.get('host_pid')}")
    assert inner_pid != host_pid  # really another namespace
    assert agent["pid_namespace"] != os.stat("/proc/self/ns/pid").st_ino
    assert agent["host_pid"] == host_pid  # the join matched it through NSpid
    # The text view puts the bill under NVML's row, and never names the agent's PID as a local one.
    print(text.stdout)
    assert f"PID {host_pid} torch: allocated" in text.stdout
    assert "bill:" in text.stdout and "optim " in text.stdout.split("bill:")[1]
    assert f"PID {inner_pid} torch" not in text.stdout
