"""What `vramtop attach` costs a running training job: its step time before and after the attach.

A training loop (an MLP, AdamW) is started plainly, in a clean environment without vramtop; it
prints the time of every step. After ``--before`` seconds the agent is injected (as `vramtop
attach --yes` does); the loop runs ``--after`` seconds more. Reported: the median step time
before and after (the first ``--settle`` seconds after the attach apart: the agent's first
census and model discovery happen there), the longest step around the attach (the pause: the
thread is stopped for the injection, then runs the bootstrap), and how long the attach took
until the agent served.

    python bench/attach_step_time.py                       # CUDA when there is a GPU
    python bench/attach_step_time.py --device cpu          # CPU; CUDA faked so the agent activates
    python bench/attach_step_time.py --json-out attach.json

On the CPU the figures say nothing about a GPU job (no CUDA, a faked allocator): they check the
script and show the order of magnitude of the pause only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vramtop.inject import attach_agent  # noqa: E402 - after the path
from vramtop.protocol import runtime_dir  # noqa: E402

# argv: device, seconds, fake-cuda file ("" for none), width, depth, batch
TARGET = textwrap.dedent("""
    import sys, time
    device, seconds, fake_file = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    width, depth, batch = map(int, sys.argv[4:7])
    import torch
    torch.manual_seed(0)
    if device == "cpu":
        torch.set_num_threads(1)  # steadier step times on a shared machine
    layers = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
    model = torch.nn.Sequential(*layers).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, width, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        model(x).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    if fake_file:  # CPU only: a fake CUDA allocator, so that the agent has something to serve
        import importlib.util
        spec = importlib.util.spec_from_file_location("fake_cuda", fake_file)
        fake_cuda = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fake_cuda)
        fake = fake_cuda.FakeCudaTorch(torch)
        fake.allocator.set(64 << 20, 128 << 20)
        sys.modules["torch"] = fake
        fake.initialized = True
    print("ready", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sync()
        started = time.perf_counter()
        step()
        sync()
        now = time.perf_counter()
        print("step", started, now - started, flush=True)
""")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None,
                        help="default: cuda when torch sees a GPU, else cpu")
    parser.add_argument("--before", type=float, default=10.0, help="seconds of steps before the attach")
    parser.add_argument("--after", type=float, default=20.0, help="seconds of steps after it")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds after the attach left out of 'after'")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    device = args.device or _default_device()
    result = measure(device, args)
    print(json.dumps(result, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def measure(device: str, args: argparse.Namespace) -> dict[str, Any]:
    fake = str(REPO / "tests" / "fakes" / "fake_cuda.py") if device == "cpu" else ""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "CUDA_VISIBLE_DEVICES")}
    argv = [sys.executable, "-c", TARGET, device, str(args.before + args.after), fake,
            str(args.width), str(args.depth), str(args.batch)]
    target = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True, cwd=tempfile.gettempdir())
    assert target.stdout is not None
    lines: list[str] = []
    try:
        if target.stdout.readline().strip() != "ready":
            raise SystemExit("the training loop did not start")
        # Read as it comes: a full pipe would block the loop's main thread in write(), and the
        # agent's start waits for that thread to run Python again.
        reader = threading.Thread(target=lambda: lines.extend(target.stdout or ()), daemon=True)
        reader.start()
        time.sleep(args.before)
        attach_started = time.perf_counter()
        attach_agent(target.pid, runtime_dir())
        attach_done = time.perf_counter()
        target.wait(timeout=args.after + 120)
        reader.join(timeout=10)
    finally:
        if target.poll() is None:
            target.kill()
            target.wait()
    steps = [(float(s), float(d)) for kind, s, d in (line.split() for line in lines) if kind == "step"]
    return summarise(steps, attach_started, attach_done, args.settle, device)


def summarise(steps: list[tuple[float, float]], attach_started: float, attach_done: float, settle: float,
              device: str) -> dict[str, Any]:
    """Medians before and after (perf_counter is system-wide on Linux: the two processes agree)."""
    before = [d for s, d in steps if s + d < attach_started]
    around = [d for s, d in steps if attach_started <= s + d and s < attach_done + settle]
    after = [d for s, d in steps if s >= attach_done + settle]
    median_before, median_after = statistics.median(before), statistics.median(after)
    return {
        "device": device,
        "machine": platform.node(),
        "python": platform.python_version(),
        "steps": {"before": len(before), "around": len(around), "after": len(after)},
        "median_step_ms": {"before": median_before * 1e3, "after": median_after * 1e3},
        "overhead_pct": (median_after / median_before - 1) * 100,
        "longest_step_around_attach_ms": max(around, default=0.0) * 1e3,
        "attach_until_serving_s": attach_done - attach_started,
        "note": "CPU with a faked CUDA allocator: not a GPU figure" if device == "cpu" else "",
    }


def _default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


if __name__ == "__main__":
    sys.exit(main())
