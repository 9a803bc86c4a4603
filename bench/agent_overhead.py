"""What the agent costs a training job: step time with the agent off and on, interleaved.

For each workload (GPU-bound GPT-2 small, launch-bound small MLP) the same process runs many
short rounds of: agent off, agent on at the default rate, agent on at 10x the default rate, in
rotating order. Each condition runs a block of steps timed as a whole (synchronised at both
ends only, as a training loop runs). Step times drift by +-20% between blocks on a busy
machine, so the overhead is taken per round against that round's "off" block (paired), and
reported as the median over rounds with its interquartile range.

    python bench/agent_overhead.py --json-out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import workloads

import vramtop.agent as agent
from vramtop.agent._runtime import DEFAULT_INTERVAL

CONDITIONS = {"off": None, "on": DEFAULT_INTERVAL, "on-10x": DEFAULT_INTERVAL / 10}


def run_block(name: str, work: workloads.Workload, steps: int, directory: Path) -> float:
    """Mean seconds per step over one block, with the agent in condition ``name``."""
    interval = CONDITIONS[name]
    if interval is not None:
        agent.start(interval=interval, directory=directory)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (agent.current() and agent.current().active):
            time.sleep(0.01)
        workloads.timed_steps(work, 3)  # let it see the optimizer and take its first census
    try:
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            work.step()
        torch.cuda.synchronize()
        return (time.perf_counter() - started) / steps
    finally:
        if interval is not None:
            agent.stop()


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return q[0], statistics.median(values), q[2]


def bench(name: str, work: workloads.Workload, rounds: int, steps: int, directory: Path) -> dict:
    workloads.timed_steps(work, 10)  # warm-up: allocator, kernels, optimizer state
    blocks: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    order = list(CONDITIONS)
    for r in range(rounds):
        for condition in order[r % len(order):] + order[: r % len(order)]:
            blocks[condition].append(run_block(condition, work, steps, directory))
    result = {"workload": name, "rounds": rounds, "steps_per_block": steps, "conditions": {}}
    for condition in CONDITIONS:
        paired = [100 * (on / off - 1) for on, off in zip(blocks[condition], blocks["off"], strict=False)]
        low, mid, high = quartiles(paired)
        result["conditions"][condition] = {
            "interval_s": CONDITIONS[condition],
            "median_step_ms": statistics.median(blocks[condition]) * 1e3,
            "block_ms": [b * 1e3 for b in blocks[condition]],
            "overhead_pct_median": mid,
            "overhead_pct_iqr": [low, high],
        }
    return result


def gpu_facts() -> dict:
    query = "name,driver_version,persistence_mode"
    out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
    return {"gpu": out, "torch": torch.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpus": os.cpu_count(),
            "command": " ".join(sys.argv)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--gpt2-steps", type=int, default=10)
    parser.add_argument("--mlp-steps", type=int, default=200)
    parser.add_argument("--gpt2-batch", type=int, default=8)
    parser.add_argument("--workloads", default="mlp,gpt2", help="comma-separated: mlp, gpt2")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    directory = Path(os.environ.get("VRAMTOP_BENCH_DIR", f"/tmp/vramtop-bench-{os.getpid()}"))
    results = {"facts": gpu_facts(), "results": []}
    chosen = args.workloads.split(",")
    for name, make, steps in (("mlp", workloads.mlp, args.mlp_steps),
                              ("gpt2", lambda: workloads.gpt2(batch=args.gpt2_batch), args.gpt2_steps)):
        if name not in chosen:
            continue
        work = make()
        results["results"].append(bench(name, work, args.rounds, steps, directory))
        del work
        torch.cuda.empty_cache()  # the benchmark's own housekeeping between workloads
    lines = [f"GPU: {results['facts']['gpu']}  torch {results['facts']['torch']}  {results['facts']['date']}",
             "", "| workload | condition | agent interval | median step | overhead vs off (paired median) "
             "| interquartile range |", "|---|---|---|---|---|---|"]
    for r in results["results"]:
        for condition, c in r["conditions"].items():
            interval = "-" if c["interval_s"] is None else f"{c['interval_s']:g} s"
            low, high = c["overhead_pct_iqr"]
            lines.append(f"| {r['workload']} | {condition} | {interval} | {c['median_step_ms']:.3f} ms | "
                         f"{c['overhead_pct_median']:+.2f}% | {low:+.2f}% .. {high:+.2f}% |")
    print("\n".join(lines))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
