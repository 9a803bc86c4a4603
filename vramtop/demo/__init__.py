"""A recording shipped with vramtop, made on a real NVIDIA H100, for `vramtop demo`.

gpt2-h100.jsonl.gz: `vramtop record -o train.jsonl -i 0.5 -- python bench/train_demo.py
--steps 80 --oom` (bench/gpu_session.sh, step "record") on an H100 80GB HBM3, driver 580.159.04:
GPT-2 small training with the agent, ending in a caught out-of-memory error.
"""

from __future__ import annotations

from pathlib import Path

RECORDING = Path(__file__).resolve().parent / "gpt2-h100.jsonl.gz"
