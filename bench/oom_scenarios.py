"""Training programs that end in an out-of-memory error nobody catches, as real jobs do.

    python bench/oom_scenarios.py doubling       # the batch doubles until a forward pass fails
    python bench/oom_scenarios.py leak           # every step's loss kept with its graph
    python bench/oom_scenarios.py capped-leak    # a leak under set_per_process_memory_fraction
    python bench/oom_scenarios.py layer          # model.layers.2.mlp asks for too much in its forward
    python bench/oom_scenarios.py layer-backward # ... in its backward (on the autograd engine's thread)

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


class TooMuch(torch.autograd.Function):
    """Identity whose backward asks for ``ask`` bytes (when not 0)."""

    @staticmethod
    def forward(ctx, x, ask):
        ctx.ask = ask
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        if ctx.ask:
            torch.empty(ctx.ask, dtype=torch.uint8, device=grad.device)  # OOM IN BACKWARD
        return grad, None


class MLP(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.up = torch.nn.Linear(width, 4 * width)
        self.down = torch.nn.Linear(4 * width, width)
        self.ask = 0  # bytes this MLP's forward asks for, when set
        self.ask_in_backward = 0  # bytes its backward asks for, when set

    def forward(self, x):
        h = self.up(x).relu()
        if self.ask:
            torch.empty(self.ask, dtype=torch.uint8, device=x.device)  # OOM IN FORWARD
        return self.down(TooMuch.apply(h, self.ask_in_backward))


class Block(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.mlp = MLP(width)

    def forward(self, x):
        return x + self.mlp(x)


class Decoder(torch.nn.Module):
    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(Block(width) for _ in range(depth))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class CausalLM(torch.nn.Module):
    """Named as Transformers names a Llama's modules: ``model.layers.2.mlp``."""

    def __init__(self, width: int = 1024, depth: int = 4) -> None:
        super().__init__()
        self.model = Decoder(width, depth)

    def forward(self, x):
        return self.model(x)


def in_a_layer(backward: bool) -> int:
    """Three good steps, then model.layers.2.mlp asks for twice the GPU in its forward (or, with
    ``backward``, in the backward of that MLP)."""
    torch.zeros(1, device="cuda")  # the program starts CUDA ...
    time.sleep(1.0)  # ... and an agent sees it within 0.1 s (--trace: the history starts at the first forward)
    model = CausalLM().cuda()
    optimizer = torch.optim.AdamW(model.parameters())
    x = torch.randn(64, 1024, device="cuda")
    for step in range(1, 100):
        if step == 4:
            too_much = 2 * torch.cuda.get_device_properties(0).total_memory
            mlp = model.model.layers[2].mlp
            if backward:
                mlp.ask_in_backward = too_much
            else:
                mlp.ask = too_much
        loss = model(x).pow(2).mean()
        loss.backward()  # THE PROGRAM'S BACKWARD
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        print(f"STEP {step}", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["doubling", "leak", "capped-leak", "layer", "layer-backward"])
    parser.add_argument("--fraction", type=float, default=0.1, help="capped-leak: the process's memory fraction")
    parser.add_argument("--leak-mib", type=int, default=32, help="capped-leak: MiB kept every step")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between steps")
    args = parser.parse_args()
    if args.mode in ("layer", "layer-backward"):
        return in_a_layer(args.mode == "layer-backward")
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
