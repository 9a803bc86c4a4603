"""Train a workload with the agent on and report what every party saw, as JSON on stdout.

The agent is enabled the way users enable it (``vramtop run`` sets VRAMTOP_AGENT and the
bootstrap starts it); this process also plays the monitor, reading its own agent through the
real socket (AgentSource) and its own per-process figure through NVML, so the three views
(agent, torch, NVML) are taken at the same moments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import torch
import workloads

from vramtop.analysis.bill import bill_at_peak, bill_now
from vramtop.codec import to_dict
from vramtop.sources.agent import AgentSource
from vramtop.sources.nvml import NvmlSource


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", default="gpt2")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--lora", action="store_true")
    args = parser.parse_args()
    import vramtop.agent as agent_api

    assert agent_api.current() is not None, "the agent was not started by the launcher"
    if args.workload == "gpt2":
        work = workloads.gpt2(args.batch, args.seq, args.checkpointing, args.lora)
    else:
        work = workloads.mlp()
    source = AgentSource(pids={os.getpid()})
    nvml = NvmlSource()
    steps_seen = {}
    for _ in range(args.steps):
        work.step()
        torch.cuda.synchronize()
        for sample in source.poll():
            for dev in sample.devices:
                if dev.last_step is not None:
                    steps_seen[dev.last_step.step] = to_dict(dev.last_step)
    time.sleep(1.5)  # let a census and a snapshot land after the last step
    deadline = time.monotonic() + 10
    sample = None
    while time.monotonic() < deadline:
        samples = source.poll()
        if samples and samples[0].devices and samples[0].devices[0].census and samples[0].devices[0].last_step:
            sample = samples[0]
            break
        time.sleep(0.1)
    assert sample is not None, "no complete agent sample"
    nv = nvml.read()
    mine = [p for g in nv.gpus for p in g.processes if p.pid == os.getpid()]
    dev = sample.devices[0]
    nvml_used = mine[0].used_memory if mine else None
    stats = torch.cuda.memory_stats(0)
    report = {
        "agent": to_dict(sample),
        "bill_now": to_dict(bill_now(dev, nvml_used)),
        "bill_peak": to_dict(bill_at_peak(dev, nvml_used)),
        "steps_seen": steps_seen,
        "nvml_process_used": nvml_used,
        "nvml_gpu_uuid": nv.gpus[0].uuid,
        "torch": {
            "allocated": stats["allocated_bytes.all.current"],
            "reserved": stats["reserved_bytes.all.current"],
            "max_allocated": torch.cuda.max_memory_allocated(0),
            "max_reserved": torch.cuda.max_memory_reserved(0),
            "num_alloc_retries": stats["num_alloc_retries"],
        },
        "analytic": {"trainable_params": work.trainable_params, "frozen_params": work.frozen_params},
    }
    print("REPORT " + json.dumps(report))
    source.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
