"""What the agent costs launch-bound training loops of every depth, as whole runs.

Launch-bound loops (small layers, tiny batches: the GPU waits for Python) are where anything the
agent does on the training thread, or any moment it holds the GIL, shows in the step time. Each
run is one process training MLPs of several depths in turn (blocks of steps, synchronised only at
the ends of a block, as a training loop runs); the runs of each configuration are interleaved:

- ``plain``: the script alone;
- ``run``: under ``vramtop run`` (the agent, nobody connected);
- ``record``: under ``vramtop record --`` (the agent with a connected monitor, NVML polled);
- ``nvml``: the script alone while ``vramtop record`` polls NVML (no agent): what polling the
  driver costs by itself;
- ``run-idle`` (on demand): the agent with a sample every 30 s: what the sampler thread costs.

For each depth: the median step time of every configuration (over all its blocks), the overhead
against ``plain``, and the spread of the per-run medians.

    python bench/launch_bound.py --repeats 3 --depths 8,25,50 --json-out out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONFIGS = ("plain", "run", "record", "nvml")
# Diagnostic variants, on demand (--configs): the agent with its sampler nearly idle.
EXTRA = ("run-idle",)


def child(depths: list[int], seconds: float, block: int, cpus: set[int] | None) -> None:
    """The training process: blocks of ``block`` steps per depth, round robin, for ``seconds``
    per depth; prints {depth: [seconds per step of each block]} as JSON on stdout."""
    cpus = (cpus or set()) & os.sched_getaffinity(0)  # the ones this machine has
    if cpus:
        # The same cores for every run: a launch-bound loop's speed depends on where it runs
        # (core, frequency, cache) by more than the effect measured here.
        os.sched_setaffinity(0, cpus)
    sys.path.insert(0, str(HERE))
    import torch
    import workloads

    works = {d: workloads.mlp(depth=d) for d in depths}
    for work in works.values():  # warm-up: allocator, cuBLAS handles, optimizer state
        for _ in range(30):
            work.step()
    torch.cuda.synchronize()
    blocks: dict[int, list[float]] = {d: [] for d in depths}
    spent = dict.fromkeys(depths, 0.0)
    while min(spent.values()) < seconds:
        for d, work in works.items():
            torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(block):
                work.step()
            torch.cuda.synchronize()
            took = time.perf_counter() - started
            spent[d] += took
            blocks[d].append(took / block)
    print(json.dumps({"blocks": blocks, "steps": {d: len(b) * block for d, b in blocks.items()}}), flush=True)


def one_run(config: str, args: argparse.Namespace, scratch: Path) -> dict[str, list[float]]:
    me = [sys.executable, str(Path(__file__).resolve()), "--child", "--depths", args.depths,
          "--seconds", str(args.seconds), "--block", str(args.block), "--cpus", args.cpus]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    vramtop = [sys.executable, "-m", "vramtop"]
    poller = None
    if config == "plain":
        argv = me
    elif config == "run":
        argv = [*vramtop, "run", "--", *me]
    elif config == "run-idle":
        argv = [*vramtop, "run", "--agent-interval", "30", "--", *me]
    elif config == "record":
        argv = [*vramtop, "record", "-f", "-o", str(scratch / "record.jsonl"), "-i", str(args.interval), "--", *me]
    else:  # nvml: a recorder polls the GPUs while the plain script runs
        argv = me
        poller = subprocess.Popen([*vramtop, "record", "-f", "-o", str(scratch / "nvml.jsonl"), "-i",
                                   str(args.interval)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    finally:
        if poller is not None:
            poller.terminate()
            poller.wait(timeout=30)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{config} run failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
    blocks = json.loads(lines[-1])["blocks"]
    return {str(d): v for d, v in blocks.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--depths", default="8,25,50", help="comma-separated MLP depths (layers)")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of steps per depth in each run")
    parser.add_argument("--block", type=int, default=50, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration, interleaved")
    parser.add_argument("--interval", type=float, default=0.5, help="the recorder's interval (s)")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--cpus", default="2,3", help="cores the training process runs on ('' for any)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    if args.child:
        child(depths, args.seconds, args.block, {int(c) for c in args.cpus.split(",") if c})
        return 0
    configs = args.configs.split(",")
    runs: dict[str, list[dict[str, list[float]]]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(args.repeats):
            for c in configs[r % len(configs):] + configs[:r % len(configs)]:  # rotate the order
                runs[c].append(one_run(c, args, Path(scratch)))
                print(f"  run {r + 1}/{args.repeats} {c}: done", file=sys.stderr, flush=True)
                if args.json_out:  # every run's blocks as they come: a run cut short keeps them
                    args.json_out.write_text(json.dumps({"runs": runs}))
    table = {}
    print(f"{'depth':>5}  " + "  ".join(f"{c:>22}" for c in configs))
    for d in map(str, depths):
        row = {}
        base = statistics.median(b for run in runs.get("plain", []) for b in run[d]) if "plain" in runs else None
        for c in configs:
            pooled = statistics.median(b for run in runs[c] for b in run[d])
            per_run = [statistics.median(run[d]) for run in runs[c]]
            row[c] = {"median_ms": pooled * 1e3, "runs_ms": [x * 1e3 for x in per_run],
                      "overhead": None if base is None else pooled / base - 1}
        table[d] = row
        print(f"{d:>5}  " + "  ".join(
            f"{row[c]['median_ms']:8.3f} ms " + (f"{row[c]['overhead']:+7.2%}" if row[c]['overhead'] is not None
                                                  else " " * 8).rjust(8) + "    " for c in configs))
    if args.json_out:
        args.json_out.write_text(json.dumps({"args": vars(args) | {"json_out": str(args.json_out)},
                                             "table": table, "runs": runs}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
