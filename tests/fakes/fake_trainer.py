"""A training loop on the CPU with the real vramtop agent over a fake CUDA allocator: a process
whose bill an exporter or a monitor can read without a GPU. Prints READY once the agent runs.

Usage: python -m tests.fakes.fake_trainer [seconds]   (default: until killed)
FAKE_NVML_HOST: as run_with_fake_nvml's, for a trainer on the "other host".
"""

from __future__ import annotations

import os
import sys
import time
from types import SimpleNamespace


def main() -> int:
    import torch

    from tests.fakes.fake_cuda import FakeCudaTorch
    from vramtop.agent._runtime import Agent

    torch.set_num_threads(1)
    model = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(2)])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(8, 64)
    fake = FakeCudaTorch(torch)
    fake.allocator.set(512 << 20, 1 << 30)
    other_host = os.environ.get("FAKE_NVML_HOST", "")
    if other_host:  # the GPU of run_with_fake_nvml's "other host" (its UUID starts GPU-<FAKE_NVML_HOST>)
        shown = fake.cuda.get_device_properties(0)
        uuid = other_host + shown.uuid[len(other_host):]
        fake.cuda.get_device_properties = lambda i: SimpleNamespace(name=shown.name, uuid=uuid,
                                                                    total_memory=shown.total_memory)
    # The fake allocator, and the CPU tensors counted as if they were on the GPU (the census).
    Agent(interval=0.1, torch=fake, device_type="cpu").start()
    fake.initialized = True
    print("READY", flush=True)
    end = time.monotonic() + float(sys.argv[1]) if len(sys.argv) > 1 else float("inf")
    while time.monotonic() < end:
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main())
