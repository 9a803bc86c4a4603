"""Stress the agent inside a launch-bound training loop, to catch crashes rather than to time.

    python bench/agent_stress.py --cycles 80            # start/stop the agent 80 times while training
    python bench/agent_stress.py --steady 60            # one agent at 200 Hz for 60 s while training
    VRAMTOP_AGENT_SNAPSHOTS=0 python bench/agent_stress.py ...   # the same without allocator snapshots

Exits 0 and prints the step count if the process survived.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import workloads

import vramtop.agent as agent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=0)
    parser.add_argument("--steady", type=float, default=0.0)
    args = parser.parse_args()
    work = workloads.mlp()
    directory = Path(f"/tmp/vramtop-stress-{os.getpid()}")
    steps = 0
    for _ in range(args.cycles):
        agent.start(interval=0.025, directory=directory)
        for _ in range(150):
            work.step()
            steps += 1
        agent.stop()
        for _ in range(50):
            work.step()
            steps += 1
    if args.steady:
        agent.start(interval=0.005, directory=directory)
        deadline = time.monotonic() + args.steady
        while time.monotonic() < deadline:
            work.step()
            steps += 1
        current = agent.current()
        print("agent error:", current.error if current else None)
        agent.stop()
    print(f"survived {steps} steps (snapshots {'off' if os.environ.get('VRAMTOP_AGENT_SNAPSHOTS') == '0' else 'on'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
