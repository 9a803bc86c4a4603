"""A recording shipped with vramtop, made on a real NVIDIA H100, for `vramtop demo`.

gpt2-h100.jsonl.gz: `vramtop record -o train.jsonl -i 0.5 -- python train_demo.py --steps 300
--leak-mib 32 --oom` (bench/gpu_session.sh, step "record") on an H100 80GB HBM3, driver
580.159.04: GPT-2 small training with the agent and a leak of 32 MiB a step, ending with a step at
8x the batch that runs out of memory in its forward pass (caught): the bill, a fragmentation and a
leak warning, and an OOM post-mortem.
"""

from __future__ import annotations

from pathlib import Path

RECORDING = Path(__file__).resolve().parent / "gpt2-h100.jsonl.gz"
