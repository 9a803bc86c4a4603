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

``--paired``: one process per repeat, the agent started and stopped in it in turn (off, on, on,
off, ...) while ``vramtop record`` runs beside it as the connected monitor. One process differs
from the next by more than the agent costs (up to 20% between two plain runs), so whole runs
compare processes as much as configurations; within one process the two halves of a pair share
the allocator's layout, the libraries' choices and the cores, and what differs is the agent. The
first seconds after each start (the agent's first steps, the recorder finding it) are not timed.

    python bench/launch_bound.py --repeats 3 --depths 8,25,50 --json-out out.json
    python bench/launch_bound.py --paired --repeats 2 --pairs 6
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
from typing import Any

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


def paired_child(depths: list[int], seconds: float, block: int, cpus: set[int] | None, pairs: int,
                 settle: float) -> None:
    """The training process of ``--paired``: per depth, ``pairs`` pairs of an agent-off and an
    agent-on stretch of ``seconds`` each (ABBA order against drift), the agent's first ``settle``
    seconds after each start run but not timed; prints {depth: [[off, on] median step per pair]}."""
    cpus = (cpus or set()) & os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    sys.path.insert(0, str(HERE))
    import torch
    import workloads

    import vramtop.agent as agent

    works = {d: workloads.mlp(depth=d) for d in depths}
    for work in works.values():
        for _ in range(30):
            work.step()

    def stretch(work: Any, length: float) -> float:
        """Median step time of the blocks run for ``length`` seconds."""
        times = []
        end = time.perf_counter() + length
        while time.perf_counter() < end or not times:
            torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(block):
                work.step()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - started) / block)
        return statistics.median(times)

    result: dict[int, list[list[float]]] = {d: [] for d in depths}
    served = 0
    for d, work in works.items():
        for i in range(pairs):
            medians = {}
            for on in ((False, True) if i % 2 == 0 else (True, False)):
                if on:
                    agent.start()
                    stretch(work, settle)
                medians[on] = stretch(work, seconds)
                if on:
                    running = agent.current()
                    served += bool(running and running._server and running._server.client_count)
                    agent.stop()
            result[d].append([medians[False], medians[True]])
    print(json.dumps({"pairs": result, "on_stretches_with_a_client": served,
                      "on_stretches": pairs * len(depths)}), flush=True)


def paired(args: argparse.Namespace, depths: list[int]) -> int:
    """Runs ``--repeats`` paired processes beside a recorder and prints the agent's cost per depth."""
    me = [sys.executable, str(Path(__file__).resolve()), "--child", "--paired", "--depths", args.depths,
          "--seconds", str(args.seconds), "--block", str(args.block), "--cpus", args.cpus,
          "--pairs", str(args.pairs), "--settle", str(args.settle)]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(args.repeats):
            recorder = subprocess.Popen([sys.executable, "-m", "vramtop", "record", "-f", "-o",
                                         str(Path(scratch) / f"paired{r}.jsonl"), "-i", str(args.interval)],
                                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                done = subprocess.run(me, env=env, capture_output=True, text=True, timeout=900)
            finally:
                recorder.terminate()
                recorder.wait(timeout=30)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode != 0 or not lines:
                raise SystemExit(f"paired run failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
            runs.append(json.loads(lines[-1]))
            print(f"  paired run {r + 1}/{args.repeats}: done", file=sys.stderr, flush=True)
    table = {}
    print("| depth | step, agent off | agent on + recorder | on vs off, median of pairs | pairs: lowest, highest |")
    print("|---:|---:|---:|---:|---|")
    for d in map(str, depths):
        pairs = [p for run in runs for p in run["pairs"][d]]
        ratios = sorted(on / off - 1 for off, on in pairs)
        off = statistics.median(p[0] for p in pairs)
        on = statistics.median(p[1] for p in pairs)
        table[d] = {"off_ms": off * 1e3, "on_ms": on * 1e3, "median_ratio": statistics.median(ratios),
                    "ratios": ratios}
        print(f"| {d} | {off * 1e3:.3f} ms | {on * 1e3:.3f} ms | {statistics.median(ratios):+.2%} | "
              f"{ratios[0]:+.2%}, {ratios[-1]:+.2%} ({len(ratios)} pairs) |")
    served = sum(run["on_stretches_with_a_client"] for run in runs)
    print(f"\nagent-on stretches with the recorder connected at their end: {served} of "
          f"{sum(run['on_stretches'] for run in runs)}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"args": vars(args) | {"json_out": str(args.json_out)},
                                             "table": table, "runs": runs}, indent=1, default=str))
    return 0


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
    parser.add_argument("--paired", action="store_true",
                        help="the agent started and stopped within each process, beside a recorder")
    parser.add_argument("--pairs", type=int, default=6, help="--paired: off/on pairs per depth and process")
    parser.add_argument("--settle", type=float, default=2.5,
                        help="--paired: seconds after each start not timed (the recorder rescans every 2 s)")
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    if args.child and args.paired:
        paired_child(depths, args.seconds, args.block, {int(c) for c in args.cpus.split(",") if c},
                     args.pairs, args.settle)
        return 0
    if args.paired:
        return paired(args, depths)
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
