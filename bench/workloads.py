"""Training workloads shared by the GPU tests and the agent-overhead benchmark.

- ``gpt2``: GPT-2 small (transformers, random init), bf16 autocast, fused AdamW: GPU-bound.
- ``mlp``: a small MLP with tiny batches, ~ms steps: launch-bound, where per-step overhead shows.

Analytic sizes are computed from the architecture, not from the tensors, so the tests compare
the agent's census against an independent count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

GPT2_SMALL_PARAMS = 124_439_808  # wte 38,597,376 + wpe 786,432 + 12 x 7,087,872 + ln_f 1,536


@dataclass
class Workload:
    model: Any
    optimizer: Any
    step: Any  # () -> None: one forward, backward, optimizer step, zero_grad
    trainable_params: int  # analytic
    frozen_params: int  # analytic
    ids: Any = None  # the input batch
    launch_bound: bool = False  # True: the host never waits for the GPU, so host-side step times
    # are the steps' real times (see agent_overhead.run_block)


def gpt2(batch: int = 16, seq: int = 1024, checkpointing: bool = False, lora: bool = False) -> Workload:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_positions=max(1024, seq))
    model = GPT2LMHeadModel(config).cuda()
    if checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    trainable, frozen = GPT2_SMALL_PARAMS, 0
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn"], fan_in_fan_out=True))
        # c_attn is 768 -> 2304 in each of the 12 blocks: A is 8 x 768, B is 2304 x 8.
        trainable = 12 * (8 * 768 + 2304 * 8)
        frozen = GPT2_SMALL_PARAMS
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    ids = torch.randint(0, config.vocab_size, (batch, seq), device="cuda")
    model.train()

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return Workload(model, optimizer, step, trainable, frozen, ids)


def mlp(batch: int = 32, width: int = 512, depth: int = 8) -> Workload:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
    model = torch.nn.Sequential(*layers).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, width, device="cuda")

    def step() -> None:
        loss = model(x).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    n = depth * (width * width + width)
    return Workload(model, optimizer, step, n, 0, launch_bound=True)


def timed_steps(workload: Workload, steps: int) -> list[float]:
    """Seconds per step, each measured to completion on the GPU (the benchmark synchronises;
    the agent never does)."""
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        started = time.perf_counter()
        workload.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return times
