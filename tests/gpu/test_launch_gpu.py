"""`vramtop run` around real multi-process and multi-GPU jobs: every torchrun rank gets its agent,
DataLoader workers forked from a CUDA process neither crash nor show up as agents, one
`vramtop --once --json` sees each rank with its own bill on the GPU where NVML lists it; with two
GPUs: a process that spreads a model over both gets a bill per GPU, FSDP2 ranks count their own
shards, and ranks that forget set_device (all on GPU 0) are one warning."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vramtop.units import mib

REPO = Path(__file__).resolve().parents[2]

RANK = """
import os, sys, time
from pathlib import Path
import torch
from torch.utils.data import DataLoader, TensorDataset
rank = int(os.environ["RANK"])
# One GPU each (or both on one when there is one); "gpu0" forgets set_device(LOCAL_RANK), as many do.
torch.cuda.set_device(0 if sys.argv[3:] == ["gpu0"] else rank % torch.cuda.device_count())
model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 1024)).cuda()
opt = torch.optim.AdamW(model.parameters())
# Forked after CUDA is initialised: the workers inherit the agent and must stay out of the way.
data = DataLoader(TensorDataset(torch.randn(2048, 1024)), batch_size=64, num_workers=2)
for epoch in range(3):
    for (x,) in data:
        model(x.cuda(non_blocking=True)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
torch.cuda.synchronize()
Path(sys.argv[1], f"rank{rank}").write_text(str(os.getpid()))
time.sleep(float(sys.argv[2]))
"""


def torchrun_and_look(tmp_path: Path, *extra: str,
                      script_text: str = RANK) -> tuple[dict[int, int], dict, subprocess.Popen[str], str]:
    """Two ranks under `vramtop run -- torchrun`; once both have trained, one `vramtop --once
    --json`. Returns {PID: rank}, that document, the finished job and its stderr."""
    run = tmp_path / "xdg"
    run.mkdir(mode=0o700)
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_RUNTIME_DIR": str(run)}
    script = tmp_path / "rank.py"
    script.write_text(script_text)
    ready = tmp_path / "ready"
    ready.mkdir()
    job = subprocess.Popen([sys.executable, "-m", "vramtop", "run", "--agent-interval", "0.1", "--",
                            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            str(script), str(ready), "8", *extra], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(ready.iterdir())) < 2 and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(list(ready.iterdir())) == 2, job.communicate(timeout=30)
        ranks = {int((ready / f"rank{r}").read_text()): r for r in (0, 1)}
        time.sleep(1.0)  # one more sampler tick after the last step
        once = subprocess.run([sys.executable, "-m", "vramtop", "--once", "--json"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)
        assert once.returncode == 0, once.stderr
        doc = json.loads(once.stdout)
        _, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    return ranks, doc, job, err


def test_every_torchrun_rank_reports_its_own_bill_and_forked_workers_stay_silent(tmp_path):
    ranks, doc, job, err = torchrun_and_look(tmp_path)
    assert job.returncode == 0, err[-3000:]  # the ranks and their forked workers ran to the end
    assert "Traceback" not in err, err[-3000:]

    gpu_of = {p["pid"]: g["uuid"] for g in doc["gpus"] for p in g["processes"]}
    assert set(ranks) <= set(gpu_of)
    for pid in ranks:  # each rank on its one GPU: the agent opened no context anywhere else
        assert sum(p["pid"] == pid for g in doc["gpus"] for p in g["processes"]) == 1
    agents = {a.get("host_pid") or a["pid"]: a for a in doc["agents"]}
    print(json.dumps({pid: {k: a[k] for k in ("rank", "step", "phase")} for pid, a in agents.items()}, indent=1))
    # Exactly the ranks: no agent from the launcher (it never uses CUDA) nor from a DataLoader worker.
    assert set(agents) == set(ranks)
    for pid, rank in ranks.items():
        agent = agents[pid]
        assert agent["rank"] == rank
        assert agent["step"] == 3 * 2048 // 64  # every optimizer step of the rank, counted
        (device,) = agent["devices"]
        assert device["uuid"] == gpu_of[pid]  # the bill sits next to the right NVML row
        census = device["census"]
        params = 2 * 1024 * 4096 + 4096 + 1024
        assert census["parameters_trainable"] == 4 * params
        assert census["optimizer_state"] >= 2 * 4 * params  # AdamW: two moments (plus step counters)


TWO_GPUS = """
import os, sys, time, torch
first = torch.nn.Linear(4096, 4096).to("cuda:0")   # 16,781,312 parameters
second = torch.nn.Linear(4096, 1024).to("cuda:1")  # 4,195,328 parameters
opt = torch.optim.AdamW([*first.parameters(), *second.parameters()])
for _ in range(20):
    second(first(torch.randn(64, 4096, device="cuda:0")).to("cuda:1")).pow(2).mean().backward()
    opt.step()
    opt.zero_grad()
torch.cuda.synchronize(0), torch.cuda.synchronize(1)
print("READY", os.getpid(), flush=True)
time.sleep(float(sys.argv[1]))
"""


def gpu_count() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    return len([line for line in out.splitlines() if line.startswith("GPU ")])


@pytest.mark.skipif(gpu_count() < 2, reason="needs two GPUs")
def test_a_model_spread_over_two_gpus_gets_a_bill_per_gpu(tmp_path):
    run = tmp_path / "xdg"
    run.mkdir(mode=0o700)
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_RUNTIME_DIR": str(run), "CUDA_VISIBLE_DEVICES": "0,1"}
    job = subprocess.Popen([sys.executable, "-m", "vramtop", "run", "--agent-interval", "0.1", "--",
                            sys.executable, "-c", TWO_GPUS, "10"], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert job.stdout is not None
        ready, pid = job.stdout.readline().split()  # the program's PID (`vramtop run` is its parent)
        assert ready == "READY"
        pid = int(pid)
        time.sleep(1.5)  # a census after the last step, then a sample
        smi = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True).stdout
        once = subprocess.run([sys.executable, "-m", "vramtop", "--once", "--json"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)
    finally:
        job.kill()
        job.wait()
    assert once.returncode == 0, once.stderr
    doc = json.loads(once.stdout)
    smi_used = {uuid: int(used) for _, uuid, used in (line.split(", ") for line in smi.strip().splitlines())}
    uuids = list(smi_used)[:2]
    for gpu in doc["gpus"]:  # the process sleeps: both read the same, as nvidia-smi prints it
        assert mib(gpu["memory_used"]) == smi_used[gpu["uuid"]]
    (agent,) = [a for a in doc["agents"] if (a.get("host_pid") or a["pid"]) == pid]
    by_uuid = {d["uuid"]: d for d in agent["devices"]}
    assert set(by_uuid) == set(uuids)  # both GPUs, each under its own UUID
    for uuid, params in zip(uuids, (4096 * 4096 + 4096, 4096 * 1024 + 1024), strict=True):
        census = by_uuid[uuid]["census"]
        assert census["parameters_trainable"] == 4 * params  # each GPU counts only its own tensors
        assert census["optimizer_state"] >= 2 * 4 * params
        rows = [p for g in doc["gpus"] if g["uuid"] == uuid for p in g["processes"] if p["pid"] == pid]
        assert len(rows) == 1  # NVML lists the process on both GPUs


@pytest.mark.skipif(gpu_count() < 2, reason="needs two GPUs")
def test_ranks_that_forgot_set_device_are_one_warning_naming_the_idle_gpu(tmp_path):
    ranks, doc, job, err = torchrun_and_look(tmp_path, "gpu0")
    assert job.returncode == 0, err[-3000:]
    shared = [w for w in doc["warnings"] if "share one GPU" in w["title"]]
    print(json.dumps(shared, indent=1))
    (w,) = shared
    assert w["level"] == "warning" and w["gpu_index"] == 0 and w["pid"] in ranks
    assert all(f"rank {r} (PID {pid}" in w["sentence"] for pid, r in ranks.items())
    assert "while GPU 1" in w["sentence"] and "LOCAL_RANK" in w["action"]
    # Neither rank is called the other's neighbour besides.
    assert not [x for x in doc["warnings"] if "next to training" in x["title"]]


FSDP2_RANK = """
import os, sys, time
from pathlib import Path
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
rank = int(os.environ["RANK"])
torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
dist.init_process_group("nccl")
model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 1024)).cuda()
for layer in (model[0], model[2]):
    fully_shard(layer)
fully_shard(model)
opt = torch.optim.AdamW(model.parameters())
for _ in range(20):
    model(torch.randn(64, 1024, device="cuda")).pow(2).mean().backward()
    opt.step()
    opt.zero_grad()
torch.cuda.synchronize()
Path(sys.argv[1], f"rank{rank}").write_text(str(os.getpid()))
time.sleep(float(sys.argv[2]))
dist.destroy_process_group()
"""


@pytest.mark.skipif(gpu_count() < 2, reason="needs two GPUs")
def test_fsdp2_ranks_count_their_own_shard_of_parameters_and_state(tmp_path):
    ranks, doc, job, err = torchrun_and_look(tmp_path, script_text=FSDP2_RANK)
    assert job.returncode == 0, err[-3000:]
    total = 1024 * 4096 + 4096 + 4096 * 1024 + 1024  # parameters of the whole model
    agents = {a.get("host_pid") or a["pid"]: a for a in doc["agents"]}
    for pid in ranks:
        agent = agents[pid]
        assert agent["world_size"] == 2
        census = agent["devices"][0]["census"]
        print(pid, {k: census[k] for k in ("parameters_trainable", "gradients", "optimizer_state", "seen")})
        half = 4 * total / 2  # each rank holds half of every parameter (dim-0 shards)
        assert abs(census["parameters_trainable"] - half) <= 0.01 * half
        assert census["optimizer_state"] >= 2 * 0.99 * half  # AdamW's two moments, sharded alike
