"""The largest GPT-2 small micro-batch (seq 1024, bf16 autocast, fused AdamW) that trains on
this GPU, found by bisection with each size tried in a fresh process (an OOM leaves a process's
allocator in a state that would bias the next try). Checks vramtop's batch-size estimate.

    python bench/largest_batch.py --low 8 --high 128     # prints "LARGEST <batch>"
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

FITS, OOM = 0, 3


def try_batch(batch: int, steps: int) -> int:
    import torch
    import workloads

    try:
        work = workloads.gpt2(batch=batch)
        for _ in range(steps):  # the first step creates the optimizer state
            work.step()
        torch.cuda.synchronize()
    except torch.cuda.OutOfMemoryError:
        return OOM
    return FITS


def fits(batch: int, steps: int) -> bool:
    result = subprocess.run([sys.executable, __file__, "--try", str(batch), "--steps", str(steps)])
    if result.returncode not in (FITS, OOM):
        raise SystemExit(f"batch {batch}: the trial failed with exit code {result.returncode}")
    print(f"batch {batch}: {'fits' if result.returncode == FITS else 'out of memory'}", flush=True)
    return result.returncode == FITS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--low", type=int, default=1, help="a batch known to fit")
    parser.add_argument("--high", type=int, default=256, help="a batch known not to fit")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--try", dest="trial", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trial is not None:
        return try_batch(args.trial, args.steps)
    low, high = args.low, args.high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle, args.steps) else (low, middle)
    print(f"LARGEST {low}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
