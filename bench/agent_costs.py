"""What each of the agent's operations costs on this machine, one at a time (microseconds).

The agent bounds its work on the training thread by these costs (see GIL_BUDGET in
vramtop/agent/_torchstats.py); this shows the figures behind the overhead benchmark.

    python bench/agent_costs.py [--json-out costs.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import workloads

from vramtop.agent import _torchstats as ts
from vramtop.agent._census import take_census
from vramtop.agent._runtime import Agent


def per_call_us(fn: Any, calls: int) -> float:
    """Median over 5 rounds of the mean time of ``calls`` calls, in microseconds."""
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(rounds)


def measure(name: str, work: workloads.Workload) -> dict[str, float]:
    workloads.timed_steps(work, 3)
    models, optimizers = [work.model], [work.optimizer]
    out = {
        f"{name}: allocator counters (_cuda_memoryStats)": per_call_us(lambda: ts.raw_stats(torch, 0), 200),
        f"{name}: allocator snapshot summary": per_call_us(lambda: ts.take_snapshot(torch), 5),
        f"{name}: census": per_call_us(lambda: take_census(torch, optimizers, models), 20),
    }
    agent = Agent(interval=3600)  # never started: its hook is called directly
    agent._torch = torch
    agent._rescan_devices(force=True)
    agent._optimizers.add(work.optimizer)
    agent._census.last = time.monotonic()

    def hook_between_reads() -> None:
        agent._boundaries.last_read = time.monotonic()
        agent._after_optimizer_step(work.optimizer, (), {})

    out[f"{name}: optimizer-step hook between reads"] = per_call_us(hook_between_reads, 20000)
    out[f"{name}: sampler tick"] = per_call_us(agent.tick, 20)
    out[f"{name}: training step (for scale)"] = statistics.median(workloads.timed_steps(work, 30)) * 1e6
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    results: dict[str, float] = {}
    results.update(measure("mlp", workloads.mlp()))
    torch.cuda.empty_cache()  # the benchmark's own housekeeping between workloads
    results.update(measure("gpt2", workloads.gpt2(batch=8)))
    width = max(map(len, results))
    for name, us in results.items():
        print(f"{name:<{width}}  {us:12.1f} us")
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
