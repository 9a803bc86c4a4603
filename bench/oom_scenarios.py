"""Training programs that end in an out-of-memory error nobody catches, as real jobs do.

    python bench/oom_scenarios.py doubling       # the batch doubles until a forward pass fails
    python bench/oom_scenarios.py leak           # every step's loss kept with its graph
    python bench/oom_scenarios.py capped-leak    # a leak under set_per_process_memory_fraction

Each prints ``STEP n`` lines as it goes; the OOM ends the process with a traceback (exit 1),
within milliseconds, which is what vramtop's post-mortem must survive. GPT-2 small with bf16
autocast and fused AdamW (bench/workloads.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import workloads


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["doubling", "leak", "capped-leak"])
    parser.add_argument("--fraction", type=float, default=0.1, help="capped-leak: the process's memory fraction")
    parser.add_argument("--leak-mib", type=int, default=32, help="capped-leak: MiB kept every step")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between steps")
    args = parser.parse_args()
    if args.mode == "capped-leak":
        torch.cuda.set_per_process_memory_fraction(args.fraction)
    batch, seq = {"doubling": (4, 1024), "leak": (1, 512), "capped-leak": (2, 512)}[args.mode]
    work = workloads.gpt2(batch, seq)
    kept = []
    step = 0
    while True:
        if args.mode == "doubling" and step and step % 3 == 0:
            batch *= 2  # a bigger batch every three steps, until one does not fit
            work.ids = torch.randint(0, 50257, (batch, seq), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = work.model(input_ids=work.ids, labels=work.ids).loss
        loss.backward(retain_graph=args.mode == "leak")
        work.optimizer.step()
        work.optimizer.zero_grad(set_to_none=True)
        if args.mode == "leak":
            kept.append(loss)  # the classic: a loss kept with its graph (and every activation it saved)
        elif args.mode == "capped-leak":
            kept.append(torch.empty(args.leak_mib << 20, dtype=torch.uint8, device="cuda"))
        step += 1
        print(f"STEP {step} batch {batch} allocated {torch.cuda.memory_allocated() >> 20} MiB", flush=True)
        if args.pause:
            time.sleep(args.pause)


if __name__ == "__main__":
    sys.exit(main())
