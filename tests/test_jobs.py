"""The ranks of a distributed job put together (analysis/jobs.py), from the launcher's
environment the agent reports (agent/_launch.py), and read back from older agents' samples."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.test_risk import DRIVER, NON_PT, TOTAL, census
from vramtop.agent._launch import launch_env
from vramtop.analysis.jobs import job_with, jobs
from vramtop.codec import from_dict, to_dict
from vramtop.model import (
    AgentDevice,
    AgentSample,
    AllocatorStats,
    GpuSample,
    HostSample,
    Launch,
    ProcessSample,
    Sample,
    StepPeak,
)

GiB = 1 << 30
BASE_PID = 5000


def torchrun_env(rank: int, world: int, *, port: int = 29500, run_id: str = "none") -> dict[str, str]:
    """What ``torchrun --nproc-per-node WORLD`` puts in each worker's environment."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
            "TORCHELASTIC_RUN_ID": run_id, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "GROUP_RANK": "0", "PATH": "/usr/bin"}


def rank_agent(pid: int, uuid: str, reserved_peak: int, *, launch: Launch | None, rank: int | None,
               step: int = 120) -> AgentSample:
    stats = AllocatorStats(allocated=reserved_peak - 2 * GiB, reserved=reserved_peak - GiB, active=0, requested=0,
                           inactive_split=0, allocated_peak=reserved_peak - GiB, reserved_peak=reserved_peak,
                           num_alloc_retries=0, num_ooms=0)
    last = StepPeak(step=step, duration=0.5, peak_allocated=reserved_peak - GiB, peak_reserved=reserved_peak,
                    persistent=8 * GiB, exact=True)
    device = AgentDevice(index=0, uuid=uuid, name="H100", stats=stats, census=census(), last_step=last,
                         peak_step=step)
    return AgentSample(pid=pid, time=0.0, torch_version="2.5.0", devices=(device,), step=step, host_pid=pid,
                       rank=rank, launch=launch, world_size=launch.world_size if launch else None)


def job_sample(peaks: list[int], *, envs: list[dict[str, str]] | None = None, parent: int = 4000,
               first_pid: int = BASE_PID, ranked: bool = True, launch: bool = True) -> Sample:
    """One GPU per process, each process one rank (its reserved peak from ``peaks``) started by a
    launcher (``envs``: each rank's environment; torchrun's by default)."""
    envs = envs or [torchrun_env(i, len(peaks)) for i in range(len(peaks))]
    gpus, agents = [], []
    for i, peak in enumerate(peaks):
        uuid, pid = f"GPU-{i:04d}", first_pid + i
        used = peak - GiB + NON_PT
        row = ProcessSample(pid, uuid, used, "C", name="python", command="python train.py")
        gpus.append(GpuSample(index=i, uuid=uuid, name="H100", memory_total=TOTAL, memory_used=used,
                              memory_free=TOTAL - used - DRIVER, memory_reserved=DRIVER, processes=(row,)))
        env = launch_env(envs[i], parent_pid=parent) if launch else None
        agents.append(rank_agent(pid, uuid, peak, launch=env, rank=env.rank if env and ranked else None))
    return Sample(time=0.0, host=HostSample("box", 512 * GiB, 64 * GiB), gpus=tuple(gpus), agents=tuple(agents))


def merged(*samples: Sample) -> Sample:
    gpus = tuple(replace(g, index=i) for i, g in enumerate(g for s in samples for g in s.gpus))
    return replace(samples[0], gpus=gpus, agents=tuple(a for s in samples for a in s.agents))


def test_the_ranks_of_a_torchrun_job_are_one_job_with_the_skewed_rank_closest_to_oom():
    # Eight ranks, rank 3 holding 10 GiB more at its peak: the usual "only rank 3 OOMs".
    peaks = [60 * GiB] * 8
    peaks[3] = 70 * GiB
    (job,) = jobs(job_sample(peaks))
    assert job.world_size == 8 and [r.rank for r in job.ranks] == list(range(8))
    assert [r.gpu_index for r in job.ranks] == list(range(8)) and all(r.step == 120 for r in job.ranks)
    # The bill at the peak: reserved at the peak + non-PyTorch; headroom: the GPU's total minus
    # that, the others' memory and the driver's.
    assert job.ranks[0].peak == 60 * GiB + NON_PT
    assert job.ranks[0].headroom == TOTAL - (60 * GiB + NON_PT) - DRIVER
    assert job.closest is not None and job.closest.rank == 3
    assert job.closest.headroom == TOTAL - (70 * GiB + NON_PT) - DRIVER
    spread = job.spread
    assert spread is not None and spread.highest.rank == 3 and spread.gap == 10 * GiB
    assert spread.median == 60 * GiB + NON_PT
    assert spread.ratio == pytest.approx((70 * GiB + NON_PT) / (60 * GiB + NON_PT))
    assert "master 127.0.0.1:29500" in job.label and not job.guessed
    assert job_with((job,), BASE_PID + 5) is job and job_with((job,), 1) is None


def test_two_jobs_at_once_are_not_merged():
    # Two 2-rank torchrun jobs on one box: the same default run id ("none"), other master ports.
    first = job_sample([40 * GiB, 41 * GiB], parent=4000)
    second = job_sample([50 * GiB, 52 * GiB], parent=4100, first_pid=6000,
                        envs=[torchrun_env(i, 2, port=29501) for i in range(2)])
    found = jobs(merged(first, second))
    assert len(found) == 2
    assert [[r.pid for r in j.ranks] for j in found] == [[BASE_PID, BASE_PID + 1], [6000, 6001]]
    assert [j.spread.gap for j in found if j.spread] == [GiB, 2 * GiB]


def test_a_named_rendezvous_tells_jobs_apart_on_the_same_master():
    # Multi-node launches name their rendezvous (--rdzv-id): the run id is the job.
    a = job_sample([40 * GiB] * 2, envs=[torchrun_env(i, 2, run_id="alpha") for i in range(2)])
    b = job_sample([40 * GiB] * 2, first_pid=6000, envs=[torchrun_env(i, 2, run_id="beta") for i in range(2)])
    assert sorted(j.label.split(" ·")[0] for j in jobs(merged(a, b))) == ["run alpha", "run beta"]


def test_ranks_spawned_without_a_rendezvous_are_grouped_by_their_launcher():
    # mp.spawn: RANK and WORLD_SIZE set by the program, no master in the environment.
    envs = [{"RANK": str(i), "WORLD_SIZE": "2"} for i in range(2)]
    a = job_sample([40 * GiB] * 2, envs=envs, parent=4000)
    b = job_sample([40 * GiB] * 2, envs=envs, parent=4100, first_pid=6000)
    found = jobs(merged(a, b))
    assert [j.label for j in found] == ["launcher PID 4000", "launcher PID 4100"]


def test_a_single_process_is_not_a_job():
    assert jobs(job_sample([40 * GiB], envs=[torchrun_env(0, 1)])) == ()  # torchrun --nproc-per-node 1
    assert jobs(job_sample([40 * GiB, 40 * GiB], launch=False)) == ()  # two plain processes
    assert launch_env({"PATH": "/usr/bin", "HOME": "/root"}) is None


def test_one_node_of_a_multi_node_job_is_a_job_with_its_world_size():
    envs = [{**torchrun_env(8 + i, 16), "LOCAL_RANK": str(i), "LOCAL_WORLD_SIZE": "1"} for i in range(1)]
    (job,) = jobs(job_sample([40 * GiB], envs=envs))
    assert job.world_size == 16 and [r.rank for r in job.ranks] == [8] and job.spread is None


def test_older_agents_without_the_launcher_are_grouped_by_world_size_and_said_to_be_a_guess():
    sample = job_sample([40 * GiB, 44 * GiB], launch=False)
    sample = replace(sample, agents=tuple(replace(a, rank=i, world_size=2) for i, a in enumerate(sample.agents)))
    (job,) = jobs(sample)
    assert job.guessed and job.label == "world size 2" and job.closest is not None and job.closest.rank == 1


def test_the_launcher_travels_through_the_codec_and_older_samples_decode_without_it():
    sample = job_sample([40 * GiB, 44 * GiB])
    back = from_dict(Sample, to_dict(sample))
    assert back == sample and back.agents[1].launch is not None and back.agents[1].launch.local_rank == 1
    old = to_dict(sample)
    for agent in old["agents"]:
        del agent["launch"]
    assert all(a.launch is None for a in from_dict(Sample, old).agents)


def test_the_launcher_environment_is_read_defensively():
    env = launch_env({"RANK": "x", "LOCAL_RANK": " 2 ", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "r" * 500},
                     parent_pid=7)
    assert env == Launch(rank=None, local_rank=2, run_id="r" * 200, master="?:29500", parent_pid=7)


def test_once_shows_the_job_in_text_and_json():
    import json

    from vramtop.sinks.once import render_json, render_text

    peaks = [60 * GiB, 60 * GiB, 70 * GiB, 60 * GiB]
    doc = json.loads(render_json(job_sample(peaks)))
    (job,) = doc["jobs"]
    assert job["world_size"] == 4 and job["closest_rank"] == 2 and [r["rank"] for r in job["ranks"]] == [0, 1, 2, 3]
    assert job["peak_spread"]["gap"] == 10 * GiB and job["ranks"][2]["gpu_index"] == 2
    assert doc["agents"][0]["launch"]["master"] == "127.0.0.1:29500"
    text = render_text(job_sample(peaks))
    assert "4 ranks · closest to OOM: rank 2 (GPU 2, " in text and "peaks spread 10.0 GiB (rank 2 highest" in text
    assert text.count("  rank ") == 4
