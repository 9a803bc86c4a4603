"""What the agent costs a training job: step time with the agent off and on, interleaved.

For each workload (GPU-bound GPT-2 small, launch-bound small MLP) the same process runs rounds
of: agent off, agent on at the default rate, agent on at 10x the default rate, in rotating
order, so drift (clocks, temperature) hits every condition alike. Each step is timed to
completion on the GPU. Reported: median step time per condition and the overhead against
"off", with the spread of the per-round medians.

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

import torch  # noqa: E402
import workloads  # noqa: E402

import vramtop.agent as agent  # noqa: E402
from vramtop.agent._runtime import DEFAULT_INTERVAL  # noqa: E402

CONDITIONS = {"off": None, "on": DEFAULT_INTERVAL, "on-10x": DEFAULT_INTERVAL / 10}


def run_condition(name: str, work: workloads.Workload, steps: int, directory: Path) -> list[float]:
    interval = CONDITIONS[name]
    if interval is not None:
        agent.start(interval=interval, directory=directory)
        # Let it activate and take its first census before timing.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (agent.current() and agent.current().active):
            time.sleep(0.01)
        workloads.timed_steps(work, 3)
    try:
        return workloads.timed_steps(work, steps)
    finally:
        if interval is not None:
            agent.stop()


def bench(name: str, work: workloads.Workload, rounds: int, steps: int, directory: Path) -> dict:
    workloads.timed_steps(work, 10)  # warm-up: allocator, kernels, optimizer state
    per_round: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    all_steps: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    order = list(CONDITIONS)
    for r in range(rounds):
        rotated = order[r % len(order):] + order[: r % len(order)]
        for condition in rotated:
            times = run_condition(condition, work, steps, directory)
            per_round[condition].append(statistics.median(times))
            all_steps[condition].extend(times)
    base = statistics.median(all_steps["off"])
    result = {"workload": name, "rounds": rounds, "steps_per_round": steps, "conditions": {}}
    for condition in CONDITIONS:
        median = statistics.median(all_steps[condition])
        result["conditions"][condition] = {
            "interval_s": CONDITIONS[condition],
            "median_step_ms": median * 1e3,
            "round_medians_ms": [t * 1e3 for t in per_round[condition]],
            "overhead_pct": (median / base - 1) * 100,
            "steps": len(all_steps[condition]),
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
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gpt2-steps", type=int, default=12)
    parser.add_argument("--mlp-steps", type=int, default=300)
    parser.add_argument("--gpt2-batch", type=int, default=8)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    directory = Path(os.environ.get("VRAMTOP_BENCH_DIR", f"/tmp/vramtop-bench-{os.getpid()}"))
    results = {"facts": gpu_facts(), "results": []}
    for name, make, steps in (("mlp", workloads.mlp, args.mlp_steps),
                              ("gpt2", lambda: workloads.gpt2(batch=args.gpt2_batch), args.gpt2_steps)):
        work = make()
        results["results"].append(bench(name, work, args.rounds, steps, directory))
        del work
        torch.cuda.empty_cache()  # the benchmark's own housekeeping between workloads
    lines = [f"GPU: {results['facts']['gpu']}  torch {results['facts']['torch']}  {results['facts']['date']}",
             "", "| workload | condition | agent interval | median step | overhead vs off | round medians |",
             "|---|---|---|---|---|---|"]
    for r in results["results"]:
        for condition, c in r["conditions"].items():
            interval = "-" if c["interval_s"] is None else f"{c['interval_s']:g} s"
            spread = ", ".join(f"{t:.2f}" for t in c["round_medians_ms"])
            lines.append(f"| {r['workload']} | {condition} | {interval} | {c['median_step_ms']:.3f} ms | "
                         f"{c['overhead_pct']:+.2f}% | {spread} |")
    print("\n".join(lines))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
