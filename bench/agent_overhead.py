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
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import workloads
from overhead_stats import BlockTicks, block_ticks, tick_interference

import vramtop.agent as agent
from vramtop.agent._discovery import ModelDiscovery
from vramtop.agent._phases import StepPhases
from vramtop.agent._runtime import DEFAULT_INTERVAL, Agent

CONDITIONS = {"off": None, "on": DEFAULT_INTERVAL, "on-10x": DEFAULT_INTERVAL / 10}


class AgentClock:
    """The agent's own CPU time, measured directly: the time spent in its hooks on the training
    thread plus the CPU time of its threads. Block times of a launch-bound loop vary by more than
    the agent costs, so this is the sharper figure of what it can take from the loop (it does not
    count the GIL hand-over latency when its thread wakes up)."""

    hooks = 0.0
    ticks: list[tuple[float, float]] = []  # (start, end) of each sampler tick, perf_counter

    @classmethod
    def install(cls) -> None:
        Agent._after_optimizer_step = cls._timed(Agent._after_optimizer_step)  # type: ignore[method-assign]
        for name in ("_before_call", "_after_call"):  # model discovery's module-call hooks
            setattr(ModelDiscovery, name, cls._timed(getattr(ModelDiscovery, name)))
        # The step's phases (the bill at the peak); after_optimizer runs inside the agent's
        # optimizer-step hook, timed above already.
        for name in ("_before_forward", "_after_forward", "_backward_started", "_gradient_landed",
                     "_optimizer_pre_hook"):
            setattr(StepPhases, name, cls._timed(getattr(StepPhases, name)))
        tick = Agent.tick

        def logged_tick(self: Agent) -> Any:
            started = time.perf_counter()
            try:
                return tick(self)
            finally:
                cls.ticks.append((started, time.perf_counter()))

        Agent.tick = logged_tick  # type: ignore[method-assign]

    @classmethod
    def _timed(cls, method: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                cls.hooks += time.perf_counter() - started
        return timed

    @staticmethod
    def threads() -> float:
        """CPU seconds of the agent's live threads (NaN where the kernel cannot say)."""
        total = 0.0
        for thread in threading.enumerate():
            if thread.name.startswith("vramtop-agent") and thread.ident is not None:
                try:
                    total += time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
                except OSError:
                    try:  # nanoseconds on the CPU, first field
                        total += int(Path(f"/proc/self/task/{thread.native_id}/schedstat").read_text().split()[0]) / 1e9
                    except OSError:
                        return float("nan")
        return total

    @classmethod
    def read(cls) -> tuple[float, float]:
        return cls.hooks, cls.threads()


def run_block(name: str, work: workloads.Workload, steps: int,
              directory: Path) -> tuple[float, float, float, BlockTicks | None]:
    """Mean seconds per step over one block with the agent in condition ``name``; the agent's
    CPU seconds in it (hooks on the training thread, its own threads); and the steps that met a
    sampler tick against the others (overhead_stats.block_ticks), from each step's end time
    (taken on the host without synchronising: a launch-bound loop never waits for the GPU)."""
    interval = CONDITIONS[name]
    if interval is not None:
        agent.start(interval=interval, directory=directory)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (agent.current() and agent.current().active):
            time.sleep(0.01)
        workloads.timed_steps(work, 3)  # let it see the optimizer and take its first census
    try:
        torch.cuda.synchronize()
        hooks, threads = AgentClock.read()
        AgentClock.ticks.clear()
        started = time.perf_counter()
        ends = [started]
        for _ in range(steps):
            work.step()
            ends.append(time.perf_counter())
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        hooks_after, threads_after = AgentClock.read()
        ticks = [t for t in AgentClock.ticks if t[1] >= started]
        # A GPU-bound loop's host runs ahead and waits at sync points, so its host-side step
        # times say where it waited, not what a step cost: compare steps only when launch-bound.
        compared = block_ticks(ends, ticks) if interval is not None and work.launch_bound else None
        return elapsed / steps, hooks_after - hooks, threads_after - threads, compared
    finally:
        if interval is not None:
            agent.stop()
            # A thread that ends during the next block would take its CPU time out of that
            # block's sum: let this block's threads finish first.
            for thread in threading.enumerate():
                if thread.name.startswith("vramtop-agent"):
                    thread.join(timeout=5)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}%"


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return q[0], statistics.median(values), q[2]


def bench(name: str, work: workloads.Workload, rounds: int, steps: int, directory: Path) -> dict:
    workloads.timed_steps(work, 10)  # warm-up: allocator, kernels, optimizer state
    blocks: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    hooks: dict[str, float] = dict.fromkeys(CONDITIONS, 0.0)
    threads: dict[str, float] = dict.fromkeys(CONDITIONS, 0.0)
    compared: dict[str, list[BlockTicks]] = {c: [] for c in CONDITIONS}
    order = list(CONDITIONS)
    for r in range(rounds):
        for condition in order[r % len(order):] + order[: r % len(order)]:
            per_step, hook_s, thread_s, block = run_block(condition, work, steps, directory)
            blocks[condition].append(per_step)
            hooks[condition] += hook_s
            threads[condition] += thread_s
            if block is not None:
                compared[condition].append(block)
    result = {"workload": name, "rounds": rounds, "steps_per_block": steps, "conditions": {}}
    for condition in CONDITIONS:
        paired = [100 * (on / off - 1) for on, off in zip(blocks[condition], blocks["off"], strict=False)]
        low, mid, high = quartiles(paired)
        wall = sum(blocks[condition]) * steps
        ticked = tick_interference(compared[condition])
        interference = None if ticked is None else 100 * ticked[0] / statistics.median(blocks[condition])
        result["conditions"][condition] = {
            "agent_hooks_us_per_step": hooks[condition] / (rounds * steps) * 1e6,
            "agent_threads_cpu_pct": 100 * threads[condition] / wall,
            "agent_cpu_pct": 100 * (hooks[condition] + threads[condition]) / wall,
            # The sampler's cost seen in the loop itself (steps it overlapped vs the others, within
            # each block), plus the hooks' time: the loop's slowdown without block-to-block noise.
            "sampler_interference_pct": interference,
            "steps_meeting_a_tick": sum(len(b.excess) for b in compared[condition]),
            "loop_slowdown_pct": None if interference is None else 100 * hooks[condition] / wall + interference,
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
    AgentClock.install()
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
             "| interquartile range | agent hooks per step | agent threads' CPU | agent CPU / step time "
             "| sampler interference (within blocks) | hooks + interference |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["results"]:
        for condition, c in r["conditions"].items():
            interval = "-" if c["interval_s"] is None else f"{c['interval_s']:g} s"
            low, high = c["overhead_pct_iqr"]
            lines.append(f"| {r['workload']} | {condition} | {interval} | {c['median_step_ms']:.3f} ms | "
                         f"{c['overhead_pct_median']:+.2f}% | {low:+.2f}% .. {high:+.2f}% | "
                         f"{c['agent_hooks_us_per_step']:.1f} us | {c['agent_threads_cpu_pct']:.3f}% | "
                         f"{c['agent_cpu_pct']:.3f}% | {pct(c['sampler_interference_pct'])} | "
                         f"{pct(c['loop_slowdown_pct'])} |")
    print("\n".join(lines))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
