"""A realistic training run for recordings, screenshots and the demo: GPT-2 small, bf16
autocast, fused AdamW. Run it under vramtop, e.g.

    vramtop record -o run.jsonl -- python bench/train_demo.py --steps 150

Options add the mistakes vramtop is meant to catch: ``--leak`` keeps every loss with its
graph (a classic leak), ``--leak-mib`` keeps a tensor of that size every step, and ``--oom``
ends with one step at 8x the batch (as an evaluation with a larger batch would), which runs
out of memory in the forward pass; the program catches it, as training scripts often do.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import workloads


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--leak", action="store_true", help="keep each step's loss and its graph")
    parser.add_argument("--leak-mib", type=int, default=0, help="keep this many MiB more on the GPU at every step")
    parser.add_argument("--oom", action="store_true", help="end with an allocation that cannot fit")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds to sleep between steps")
    args = parser.parse_args()
    # Under torchrun each rank takes its own GPU (the default device "cuda" follows set_device).
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    work = workloads.gpt2(args.batch, args.seq)
    kept = []
    started = time.time()
    for step in range(args.steps):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = work.model(input_ids=work.ids, labels=work.ids).loss
        loss.backward()
        work.optimizer.step()
        work.optimizer.zero_grad(set_to_none=True)
        if args.leak_mib:  # a tensor kept in a list every step: memory that is never freed
            kept.append(torch.empty(args.leak_mib << 20, dtype=torch.uint8, device="cuda"))
        if args.leak:
            kept.append(work.model.transformer.h[0].mlp.c_fc(torch.randn(64, 1024, 768, device="cuda")))
        if step % 10 == 0:
            print(f"step {step} loss {loss.item():.3f} {time.time() - started:.1f}s", flush=True)
        if args.pause:
            time.sleep(args.pause)
    if args.oom:
        big = torch.randint(0, work.model.config.vocab_size, (8 * args.batch, args.seq), device="cuda")
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = work.model(input_ids=big, labels=big).loss
            loss.backward()
        except torch.cuda.OutOfMemoryError as err:
            print(f"caught OOM: {str(err).splitlines()[0]}", flush=True)
            loss = None
            work.optimizer.zero_grad(set_to_none=True)
            time.sleep(3)  # the monitor's turn to see it
    return 0


if __name__ == "__main__":
    sys.exit(main())
