"""`vramtop attach` on a GPT-2 fine-tune started plainly (no vramtop anywhere in its environment):
the agent is injected after the job has trained for a while, its bill appears within a few steps
and reconciles with NVML's per-process figure (and nvidia-smi's), the job keeps training at the
same speed and ends normally."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GPT2 = 124_439_808

TRAIN = """
import sys, time
import torch
import workloads
work = workloads.gpt2(8, 1024)
print("PID-READY", flush=True)
for step in range(int(sys.argv[1])):
    t = time.perf_counter()
    work.step()
    torch.cuda.synchronize()
    print(f"STEP {step} {time.monotonic():.6f} {time.perf_counter() - t:.6f}", flush=True)
"""


def clean_env(xdg: Path) -> dict[str, str]:
    """The job's environment: nothing of vramtop (no VRAMTOP_*, no PYTHONPATH to the repository)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRAMTOP") and k != "PYTHONPATH"}
    env["XDG_RUNTIME_DIR"] = str(xdg)
    return env


def test_attach_to_a_plainly_started_gpt2_job_shows_its_bill(tmp_path):
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    shutil.copy(REPO / "bench" / "workloads.py", job_dir)
    (job_dir / "train.py").write_text(TRAIN)
    job = subprocess.Popen([sys.executable, "train.py", "700"], cwd=job_dir, env=clean_env(xdg),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    steps: list[tuple[int, float, float]] = []
    try:
        assert job.stdout is not None
        started = time.monotonic()
        for line in job.stdout:  # train ~30 s first, as a job that has been going for a while
            if line.startswith("STEP "):
                _, n, at, took = line.split()
                steps.append((int(n), float(at), float(took)))
            if time.monotonic() - started > 30 and steps:
                break
        env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_RUNTIME_DIR": str(xdg)}
        recording = tmp_path / "attach.jsonl"
        attach_at = time.monotonic()
        rec = subprocess.Popen([sys.executable, "-m", "vramtop", "record", "--pid", str(job.pid), "--inject",
                                "-i", "0.5", "--duration", "20", "-o", str(recording)],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in job.stdout:  # keep the job's pipe drained while it is recorded
            if line.startswith("STEP "):
                _, n, at, took = line.split()
                steps.append((int(n), float(at), float(took)))
            if rec.poll() is not None:
                break
        _, err = rec.communicate(timeout=60)
        assert rec.returncode == 0, err[-3000:]
        once = subprocess.run([sys.executable, "-m", "vramtop", "--once", "--json"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)
        smi = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout
        for line in job.stdout:
            if line.startswith("STEP "):
                _, n, at, took = line.split()
                steps.append((int(n), float(at), float(took)))
        job.wait(timeout=300)
        assert job.returncode == 0, job.stderr.read()[-3000:] if job.stderr else ""
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()

    # The bill: the agent is in the process, its census counted GPT-2's parameters and AdamW's state.
    from vramtop.analysis.bill import bill_now
    from vramtop.recording.reader import read_recording

    rec_doc = read_recording(recording)
    agent_samples = [(s, a) for s in rec_doc.samples for a in s.agents if a.devices]
    assert agent_samples, "no agent sample in the recording"
    first_time = agent_samples[0][0].time
    with_census = [(s, a) for s, a in agent_samples if a.devices[0].census is not None
                   and a.devices[0].census.optimizer_state]
    assert with_census, "the bill never got its categories"
    s, a = with_census[-1]
    device = a.devices[0]
    census = device.census
    params = 4 * GPT2  # fp32 weights under bf16 autocast
    assert abs(census.parameters_trainable - params) <= 0.01 * params, census
    assert abs(census.optimizer_state - 2 * params) <= 0.01 * params, census
    rows = [p for g in s.gpus for p in g.processes if p.pid == job.pid]
    assert rows and rows[0].used_memory, rows
    bill = bill_now(device, rows[0].used_memory)
    parts = [bill.parameters_trainable, bill.parameters_frozen, bill.gradients, bill.optimizer_state,
             bill.other_persistent, bill.activations, bill.cache, bill.non_pytorch]
    assert all(p is not None for p in parts), bill
    assert abs(sum(parts) - rows[0].used_memory) <= 0.01 * rows[0].used_memory
    # --once --json after the recording ended: the agent still serves, NVML's figure is nvidia-smi's.
    doc = json.loads(once.stdout)
    assert any(ag.get("host_pid") == job.pid or ag.get("pid") == job.pid for ag in doc["agents"]), doc["agents"]
    smi_used = {int(p): int(u) for p, u in (line.split(", ") for line in smi.strip().splitlines())}
    assert job.pid in smi_used
    # Step time around the attach (a figure, printed; asserted only against a gross slowdown).
    before = [took for n, at, took in steps if at < attach_at and n >= 5]
    after = [took for n, at, took in steps if at > attach_at + 10]
    pause = max((took for n, at, took in steps if attach_at - 1 < at < attach_at + 10), default=0.0)
    print(f"ATTACH step median before {statistics.median(before) * 1000:.2f} ms ({len(before)} steps), "
          f"after {statistics.median(after) * 1000:.2f} ms ({len(after)} steps), longest step around the "
          f"attach {pause * 1000:.1f} ms; bill with categories {with_census[0][0].time - first_time:.1f} s "
          f"after the first agent sample; census {census.parameters_trainable / 2**20:.0f} MiB params, "
          f"{census.optimizer_state / 2**20:.0f} MiB optimizer; NVML {rows[0].used_memory / 2**20:.0f} MiB, "
          f"nvidia-smi {smi_used[job.pid]} MiB")
    assert statistics.median(after) < 1.5 * statistics.median(before)
