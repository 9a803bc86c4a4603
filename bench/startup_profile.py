"""Where vramtop's start-up time goes: import times and a profile up to the first frame.

``--fake``: NVML is tests/fakes' two-GPU FakeNvml (no driver needed; the first frame's NVML
calls cost next to nothing, so what is left is vramtop's and Textual's own work)."""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


async def first_frame(fake: bool) -> float:
    from vramtop.sources.agent import AgentSource
    from vramtop.sources.monitor import MonitorSource
    from vramtop.sources.nvml import NvmlSource
    from vramtop.ui.app import VramtopApp

    nvml = None
    if fake:
        from tests.fakes.fake_nvml import two_gpu_box

        nvml = two_gpu_box()
    started = time.perf_counter()
    source = MonitorSource(NvmlSource(nvml=nvml), AgentSource())
    source.open()
    app = VramtopApp(source, interval=1.0)
    async with app.run_test(size=(160, 48)) as pilot:
        while app.sample is None:
            await pilot.pause(0.01)
    return time.perf_counter() - started


def main() -> int:
    fake = "--fake" in sys.argv[1:]
    t0 = time.perf_counter()
    import textual.app  # noqa: F401

    print(f"import textual.app: {time.perf_counter() - t0:.3f} s")
    t0 = time.perf_counter()
    import vramtop.ui.app  # noqa: F401

    print(f"import vramtop.ui.app (after textual): {time.perf_counter() - t0:.3f} s")
    profile = cProfile.Profile()
    profile.enable()
    took = asyncio.run(first_frame(fake))
    profile.disable()
    print(f"open {'FakeNvml' if fake else 'NVML'} + app start + first sample on screen: {took:.3f} s")
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(25)
    print(out.getvalue()[:6000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
