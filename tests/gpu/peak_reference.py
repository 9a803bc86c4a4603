"""The bill at the allocator's peak against PyTorch's own trackers, in one process, on one step.

Run under ``vramtop run`` (the agent starts as users start it). Each step of the workload runs
under an independent reference: PyTorch's MemTracker (``torch.distributed._tools.mem_tracker``,
categories Parameter, Buffer, Gradient, Activation, Temp, Optstate, Other at its peak) or, for a
model with frozen parameters (which MemTracker refuses), the profiler's memory timeline
(categories at the moment of its highest total). After each step, the agent's bill at the peak
of that step is read from the agent itself; at the end, the same bill from its socket sample.
Prints one ``RESULT {json}`` line.
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

from vramtop.analysis.bill import bill_at_peak
from vramtop.codec import to_dict
from vramtop.model import AgentDevice
from vramtop.sources.agent import AgentSource


def memtracker_step(work: workloads.Workload) -> dict[str, int]:
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(work.model, work.optimizer)
    allocated = torch.cuda.memory_allocated()
    with tracker:
        start = tracker.get_tracker_snapshot("current")
        work.step()
    torch.cuda.synchronize()
    peak = tracker.get_tracker_snapshot("peak")
    device = next(d for d in peak if str(d).startswith("cuda"))
    out = {str(k.value if hasattr(k, "value") else k): int(v) for k, v in peak[device].items()}
    # What was allocated when the step began but MemTracker cannot see (it tracks only what its
    # modules, optimizers and ops give it): the inputs, cuBLAS workspaces, tensors the loop kept.
    tracked = sum(int(v) for k, v in start.get(device, {}).items() if str(getattr(k, "value", k)) != "Total")
    out["Untracked"] = allocated - tracked
    return out


def profiler_step(work: workloads.Workload) -> dict[str, int]:
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX, MemoryProfileTimeline

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], profile_memory=True,
                 record_shapes=True, with_stack=True) as prof:
        work.step()
        torch.cuda.synchronize()
    timeline = MemoryProfileTimeline(prof._memory_profile())
    _, sizes = timeline._coalesce_timeline(f"cuda:{torch.cuda.current_device()}")
    top = max(sizes, key=sum)
    # sizes[i][index + 1] is the category at _CATEGORY_TO_INDEX[category] (None: not categorised).
    names = ["_"] + ["Unknown" if c is None else c.name.title() for c in _CATEGORY_TO_INDEX]
    out = dict(zip(names, (int(v) for v in top), strict=True))
    out["Total"] = sum(top)
    return out


def agent_peak() -> dict[str, object]:
    import vramtop.agent as agent_api

    agent = agent_api.current()
    assert agent is not None and agent._devices.states, "no agent, or it has not seen the device"
    state = agent._devices.states[torch.cuda.current_device()]
    peak = state.peak
    return {"peak": to_dict(peak) if peak is not None else None, "allocator_peak": torch.cuda.max_memory_allocated(),
            "models": sorted(type(m).__name__ for m in agent._discovery.models)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=["gpt2", "gpt2-ckpt", "lora", "mlp"], required=True)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    import vramtop.agent as agent_api

    assert agent_api.current() is not None, "start this under `vramtop run`"
    if args.workload == "mlp":
        work = workloads.mlp(batch=2048, width=4096, depth=8)
    else:
        work = workloads.gpt2(16, 1024, checkpointing=args.workload == "gpt2-ckpt", lora=args.workload == "lora")
    reference = profiler_step if args.workload == "lora" else memtracker_step
    deadline = time.monotonic() + 30
    while not agent_api.current().active and time.monotonic() < deadline:  # as after loading a real model
        time.sleep(0.05)
    # cuBLAS makes its workspaces (32 MiB a handle: one for forward, one for the autograd thread)
    # at the first matrix product of each: outside the step, as after a real job's first step.
    # MemTracker cannot see them; the allocator can.
    warm = torch.ones(64, 64, device="cuda", requires_grad=True)
    (warm @ warm).sum().backward()
    del warm
    steps = []
    for i in range(args.steps):
        before = torch.cuda.max_memory_allocated()
        ref = reference(work)
        after = torch.cuda.max_memory_allocated()
        steps.append({"step": i + 1, "reference": ref, "allocator_peak_before": before, "allocator_peak": after,
                      "agent": agent_peak()})
    # The same bill through the socket, as a monitor sees it.
    source = AgentSource(pids={os.getpid()})
    deadline = time.monotonic() + 10
    sample = None
    while time.monotonic() < deadline:
        polled = source.poll()
        if polled and polled[0].devices and polled[0].devices[0].peak is not None:
            sample = polled[0]
            break
        time.sleep(0.05)
    source.close()
    device: AgentDevice | None = sample.devices[0] if sample else None
    bill = bill_at_peak(device, None) if device else None
    print("RESULT " + json.dumps({"workload": args.workload, "steps": steps,
                                   "socket_peak": to_dict(device.peak) if device and device.peak else None,
                                   "socket_bill": to_dict(bill) if bill else None,
                                   "allocator_peak": torch.cuda.max_memory_allocated()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
