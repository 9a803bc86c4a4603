"""Run the vramtop CLI with FakeNvml installed as ``pynvml``: for driving the real TUI in tmux
on machines without a GPU. Usage: python -m tests.fakes.run_with_fake_nvml [vramtop args...]"""

from __future__ import annotations

import os
import sys

from tests.fakes.fake_nvml import FakeProc, MiB, two_gpu_box


def main() -> int:
    fake = two_gpu_box()
    # FAKE_NVML_PIDS=1,2: the busy GPU's compute processes (a soak's real training process).
    pids = [int(p) for p in os.environ.get("FAKE_NVML_PIDS", "").split(",") if p]
    if pids:
        fake.gpus[0].compute = [FakeProc(pid, 39800 * MiB // len(pids)) for pid in pids]
    # A memory figure that changes from read to read, so the sparkline and refresh are visible.
    real = type(fake).nvmlDeviceGetMemoryInfo
    reads = {"n": 0}

    def growing(self, handle, version=None):  # type: ignore[no-untyped-def]
        reads["n"] += 1
        if handle.index == 0 and os.environ.get("FAKE_NVML_GROW"):
            fake.gpus[0].used = min(fake.gpus[0].total - fake.gpus[0].reserved, 20000 * MiB + reads["n"] * 997 * MiB)
        return real(self, handle, version)

    type(fake).nvmlDeviceGetMemoryInfo = growing  # type: ignore[method-assign]
    sys.modules["pynvml"] = fake  # type: ignore[assignment]
    from vramtop.cli import main as vramtop_main

    return vramtop_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
