"""Fake ranks of a distributed job, for CPU-only tests and screenshots: each one a process that
runs the agent's real socket server (as bench/monitor_scale.py's fake agents do) and publishes a
synthetic AgentSample with the launcher's environment torchrun gives its workers. With
tests/fakes/run_with_fake_nvml.py (FAKE_NVML_SCALE=their PIDs) they are an 8-GPU box running one
job. Usage: python -m tests.fakes.fake_ranks RANK WORLD PEAK_GIB [PORT [GPU]] (XDG_RUNTIME_DIR set)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

GiB = 1 << 30
REPO = Path(__file__).resolve().parent.parent.parent
MASTER_PORT = 29500


def fake_rank(rank: int, world: int, peak_gib: float, port: int = MASTER_PORT, gpu: int | None = None) -> None:
    from vramtop.agent._launch import launch_env
    from vramtop.agent._server import AgentServer
    from vramtop.codec import to_dict
    from vramtop.model import AgentDevice, AgentSample, AllocatorStats, StepPeak, TensorCensus
    from vramtop.protocol import AGENT_PROTOCOL_MAX, AGENT_PROTOCOL_MIN

    directory = Path(os.environ["XDG_RUNTIME_DIR"]) / "vramtop"
    started = time.time()
    beacon = {"pid": os.getpid(), "started": started, "rank": rank,
              "protocol": [AGENT_PROTOCOL_MIN, AGENT_PROTOCOL_MAX]}
    server = AgentServer(directory, beacon, lambda request: None)
    server.start()
    launch = launch_env({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                         "LOCAL_WORLD_SIZE": str(world), "TORCHELASTIC_RUN_ID": "none",
                         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    census = TensorCensus(parameters_trainable=7 * GiB, parameters_frozen=0, gradients=7 * GiB,
                          optimizer_state=14 * GiB, time=started, seen="1 optimizer (AdamW); 1 model (Llama)")
    peak = int(peak_gib * GiB)
    step = 0
    while True:
        step += 1
        # run_with_fake_nvml's big box lists each rank at 62 GiB: 61.5 reserved + a CUDA context.
        allocated = 56 * GiB + (step % 17) * (GiB // 16)
        stats = AllocatorStats(allocated=allocated, reserved=61 * GiB + GiB // 2, active=allocated, requested=allocated,
                               inactive_split=0, allocated_peak=peak - 2 * GiB, reserved_peak=peak,
                               num_alloc_retries=0, num_ooms=0)
        last = StepPeak(step=step, duration=0.25, peak_allocated=peak - 2 * GiB, peak_reserved=peak,
                        persistent=28 * GiB, exact=True)
        uuid = f"GPU-{rank if gpu is None else gpu:08x}-0000-0000-0000-000000000000"
        device = AgentDevice(index=0, uuid=uuid, name="H100", stats=stats, census=census, last_step=last,
                             peak_step=step)
        sample = AgentSample(pid=os.getpid(), time=time.time(), torch_version="2.11.0", devices=(device,),
                             step=step, phase="backward", rank=rank, world_size=world, launch=launch)
        server.publish({"type": "sample", "sample": to_dict(sample)})
        time.sleep(0.25)


@contextmanager
def fake_job(runtime: Path, peaks_gib: Sequence[float], port: int = MASTER_PORT,
             first_gpu: int = 0) -> Iterator[list[subprocess.Popen[bytes]]]:
    """One fake rank per peak (rank i on GPU first_gpu + i; the master's port tells jobs apart),
    serving in ``runtime`` (a 0700 directory) until the block ends. Their PIDs, in GPU order as
    FAKE_NVML_SCALE, give each its GPU in run_with_fake_nvml."""
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "PYTHONPATH": str(REPO)}
    ranks = [subprocess.Popen([sys.executable, "-m", "tests.fakes.fake_ranks", str(i), str(len(peaks_gib)),
                               str(peak), str(port), str(first_gpu + i)], env=env, cwd=REPO)
             for i, peak in enumerate(peaks_gib)]
    try:
        deadline = time.monotonic() + 30
        directory = runtime / "vramtop"
        while time.monotonic() < deadline and not all((directory / f"{p.pid}.sock").exists() for p in ranks):
            time.sleep(0.05)
        yield ranks
    finally:
        for process in ranks:
            process.kill()
            process.wait()


def job_documents(count: int = 6, peaks_gib: Sequence[float] = (62, 62, 62, 68, 62, 63, 62, 62),
                  start: float = 1_780_000_000.0) -> list[dict[str, object]]:
    """``vramtop --once --json`` documents of a made-up 8-GPU box running one torchrun job, a
    second apart, for the screenshot of the rank view (no multi-GPU recording exists yet)."""
    from vramtop.agent._launch import launch_env
    from vramtop.model import (
        AgentDevice,
        AgentSample,
        AllocatorStats,
        GpuSample,
        HostSample,
        ProcessSample,
        Sample,
        StepPeak,
        TensorCensus,
    )
    from vramtop.protocol import sample_document

    total, mib = 81559 << 20, 1 << 20
    docs = []
    for i in range(count):
        t = start + i
        gpus, agents = [], []
        for rank, peak_gib in enumerate(peaks_gib):
            uuid, pid = f"GPU-{rank:08x}-5a1e-4f00-9d2c-000000000000", 41000 + rank
            peak = int(peak_gib * GiB)
            reserved = peak - GiB + (i % 3) * 256 * mib
            allocated = reserved - 3 * GiB + (i * 7 + rank) % 11 * 128 * mib
            used = reserved + 512 * mib
            row = ProcessSample(pid, uuid, used, "C", name="python", user="alice", host_rss=6 * GiB,
                                command="python train.py --model llama-3-8b --fsdp --micro-batch 4")
            gpus.append(GpuSample(index=rank, uuid=uuid, name="NVIDIA H100 80GB HBM3", memory_total=total,
                                  memory_used=used + 200 * mib, memory_free=total - used - 200 * mib - 480 * mib,
                                  memory_reserved=480 * mib, utilization_gpu=96, utilization_memory=58,
                                  temperature=61, power_usage=598_000, power_limit=700_000, processes=(row,)))
            env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(len(peaks_gib)),
                   "LOCAL_WORLD_SIZE": str(len(peaks_gib)), "TORCHELASTIC_RUN_ID": "none",
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
            stats = AllocatorStats(allocated=allocated, reserved=reserved, active=allocated, requested=allocated,
                                   inactive_split=0, allocated_peak=peak - 2 * GiB, reserved_peak=peak,
                                   num_alloc_retries=0, num_ooms=0)
            step = 1200 + 2 * i
            census = TensorCensus(parameters_trainable=2 * GiB, parameters_frozen=0, gradients=2 * GiB,
                                  optimizer_state=4 * GiB, time=t, seen="1 optimizer (AdamW); 1 model (FSDP)")
            device = AgentDevice(index=0, uuid=uuid, name="NVIDIA H100 80GB HBM3", stats=stats, census=census,
                                 last_step=StepPeak(step=step, duration=0.5, peak_allocated=peak - 2 * GiB,
                                                    peak_reserved=peak, persistent=9 * GiB, exact=True),
                                 peak_step=step)
            agents.append(AgentSample(pid=pid, time=t, torch_version="2.9.0", devices=(device,), step=step,
                                      phase="backward", rank=rank, world_size=len(peaks_gib), host_pid=pid,
                                      launch=launch_env(env, parent_pid=40990), autocast=True))
        host = HostSample("gpu-node-7", 2015 * GiB, 412 * GiB)
        docs.append(sample_document(Sample(time=t, host=host, gpus=tuple(gpus), agents=tuple(agents),
                                           driver_version="580.95.05", cuda_driver_version="13.0")))
    return docs


if __name__ == "__main__":
    if sys.argv[1:] == ["--documents"]:
        import json

        print(json.dumps(job_documents()))
        raise SystemExit(0)
    rank, world, peak, *rest = sys.argv[1:]
    fake_rank(int(rank), int(world), float(peak), *(int(v) for v in rest))
