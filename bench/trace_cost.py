"""What ``vramtop run --trace`` costs a training job: step time with PyTorch's allocation history
off and on, the agent running in both, interleaved.

The agent is started as ``vramtop run --trace`` starts it (VRAMTOP_AGENT_TRACE set: its sampler's
snapshots leave the history's entries out). Then, for each workload (GPU-bound GPT-2 small,
launch-bound small MLP), short rounds alternate a block of steps with the history off and a
block with it on, in rotating order; each block is timed as a whole (synchronised at both ends).
The cost is taken per round against that round's "off" block (paired) and reported as the median
over rounds with its interquartile range. At the end, with the history full, it times what an
OOM then pays: ``torch.cuda.memory._snapshot()`` and writing its pickle (the file's size too).

    python bench/trace_cost.py --json-out trace-cost.json

Without CUDA it says so and measures nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

from vramtop.launch import DEFAULT_TRACE_ENTRIES
from vramtop.protocol import AGENT_TRACE_ENV


def run_block(work: Any, steps: int) -> float:
    """Mean seconds per step over one block."""
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        work.step()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def measure(name: str, work: Any, rounds: int, steps: int, entries: int) -> dict[str, Any]:
    from vramtop.agent._trace import start_history, stop_history

    run_block(work, 3)  # warm up (and let the agent find the optimizer)
    costs, off_times, on_times = [], [], []
    for r in range(rounds):
        times = {}
        for condition in (("off", "on") if r % 2 == 0 else ("on", "off")):
            if condition == "on":
                start_history(torch, entries)
            else:
                stop_history(torch)
            times[condition] = run_block(work, steps)
        stop_history(torch)
        off_times.append(times["off"])
        on_times.append(times["on"])
        costs.append(times["on"] / times["off"] - 1)
    quartiles = statistics.quantiles(costs, n=4) if len(costs) >= 2 else [costs[0]] * 3
    result = {"workload": name, "rounds": rounds, "steps_per_block": steps, "max_entries": entries,
              "step_ms_off": 1e3 * statistics.median(off_times), "step_ms_on": 1e3 * statistics.median(on_times),
              "cost_median": statistics.median(costs), "cost_iqr": [quartiles[0], quartiles[2]]}
    print(f"{name}: {result['step_ms_off']:.2f} ms/step off, {result['step_ms_on']:.2f} on: "
          f"{100 * result['cost_median']:+.1f}% (IQR {100 * quartiles[0]:+.1f}% .. {100 * quartiles[2]:+.1f}%)")
    return result


def at_oom(work: Any, entries: int, steps: int) -> dict[str, Any]:
    """What an OOM pays with the history full: the snapshot and its pickle."""
    from vramtop.agent._trace import start_history, stop_history

    start_history(torch, entries)
    try:
        run_block(work, steps)  # fill the ring buffer
        started = time.perf_counter()
        snapshot = torch.cuda.memory._snapshot()
        snapshot_s = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "history.pickle"
            started = time.perf_counter()
            with open(path, "wb") as f:
                pickle.dump(snapshot, f)
            pickle_s = time.perf_counter() - started
            size = path.stat().st_size
    finally:
        stop_history(torch)
    result = {"trace_entries": sum(len(t) for t in snapshot.get("device_traces", [])), "snapshot_s": snapshot_s,
              "pickle_s": pickle_s, "pickle_bytes": size}
    print(f"at an OOM: snapshot {snapshot_s:.2f} s, pickle {pickle_s:.2f} s, {size / 2**20:.0f} MiB "
          f"({result['trace_entries']} entries)")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="steps per block")
    parser.add_argument("--entries", type=int, default=DEFAULT_TRACE_ENTRIES, help="the history's max_entries")
    parser.add_argument("--workloads", default="gpt2,mlp")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA: nothing to measure (--trace records CUDA allocations); run this on a GPU machine")
        return 0
    import workloads

    import vramtop.agent as agent

    os.environ[AGENT_TRACE_ENV] = str(args.entries)  # as `vramtop run --trace` sets it
    torch.zeros(1, device="cuda")
    agent.start(directory=tempfile.mkdtemp(prefix="vramtop-trace-cost-"))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not ((a := agent.current()) and a.active):
        time.sleep(0.01)  # it turns the history on as it starts: not in the middle of a block
    results: dict[str, Any] = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "workloads": []}
    for name in args.workloads.split(","):
        work = workloads.gpt2() if name == "gpt2" else workloads.mlp()
        results["workloads"].append(measure(name, work, args.rounds, args.steps, args.entries))
        if name == args.workloads.split(",")[0]:
            results["at_oom"] = at_oom(work, args.entries, 2 * args.steps)
        del work
    agent.stop()
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
