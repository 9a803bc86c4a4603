"""Fragment PyTorch's caching allocator the classic way, then ask for one large tensor.

One 16 GiB tensor is freed (its segment stays cached), 32 tensors of 500 MiB are carved out of
that segment and every other one is freed: 8 GiB sit in the cache in 500 MiB holes. With the
process capped a little above its reserve, a 1 GiB request then cannot be served: "8 GiB
reserved but unallocated", yet out of memory. Run it twice to see what the allocator setting does:

    vramtop run -- python bench/fragment_demo.py
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True vramtop run -- python bench/fragment_demo.py

Prints ``RESULT ok`` or ``RESULT oom`` and the allocator figures at the request.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

GiB, MiB = 1 << 30, 1 << 20


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hold", type=float, default=8.0, help="seconds to hold the fragmented cache first")
    args = parser.parse_args()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction((16 * GiB + 512 * MiB) / total)
    torch.empty(16 * GiB, dtype=torch.uint8, device="cuda")  # freed at once; its segment stays cached
    blocks = [torch.empty(500 * MiB, dtype=torch.uint8, device="cuda") for _ in range(32)]
    kept = blocks[1::2]
    del blocks
    print(f"fragmented: allocated {torch.cuda.memory_allocated() / GiB:.2f} GiB, "
          f"reserved {torch.cuda.memory_reserved() / GiB:.2f} GiB", flush=True)
    time.sleep(args.hold)  # the monitor's turn
    state = {"allocated": torch.cuda.memory_allocated(), "reserved": torch.cuda.memory_reserved()}
    try:
        big = torch.empty(GiB, dtype=torch.uint8, device="cuda")
        result = "ok"
        del big
    except torch.cuda.OutOfMemoryError:
        result = "oom"
    stats = torch.cuda.memory_stats()
    state["retries"] = stats["num_alloc_retries"]
    print(f"RESULT {result} {json.dumps(state)}", flush=True)
    time.sleep(args.hold / 2)  # the monitor sees the outcome too
    del kept
    return 0


if __name__ == "__main__":
    sys.exit(main())
