"""Where the agent's time on the training thread goes, in a launch-bound loop (the MLP workload).

agent_costs.py times each operation alone, in a tight loop with warm caches; here each is timed
inside real training steps, where the hook runs once per ~2 ms step with its code and data out of
the CPU's caches. Three runs of 4000 steps: one agent that stays on (steady state), an empty
optimizer-step hook (the least any step detector costs), and no hook at all. Prints, per timed
function: calls, total, per step, mean and max. Usage: python3 bench/hook_profile.py [--steps N]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import torch  # noqa: E402
import workloads  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402

import vramtop.agent as agent  # noqa: E402
from vramtop.agent import _torchstats  # noqa: E402
from vramtop.agent._census_schedule import CensusSchedule  # noqa: E402
from vramtop.agent._discovery import ModelDiscovery  # noqa: E402
from vramtop.agent._phases import StepPhases  # noqa: E402
from vramtop.agent._runtime import Agent  # noqa: E402


class Profile:
    """Seconds and calls per label, counted only while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.total: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.longest: Counter[str] = Counter()
        self._inside = threading.local()
        self._gc_started = 0.0

    def add(self, label: str, seconds: float) -> None:
        if self.on:
            self.total[label] += seconds
            self.calls[label] += 1
            self.longest[label] = max(self.longest[label], seconds)

    def timed(self, label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            self._inside.depth = getattr(self._inside, "depth", 0) + 1
            try:
                return function(*args, **kwargs)
            finally:
                self._inside.depth -= 1
                self.add(label, time.perf_counter() - started)
        return call

    def gc_callback(self, phase: str, info: dict[str, Any]) -> None:
        """Collections the hooks' allocations set off land inside the hooks' time: say so."""
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            where = "inside a timed call" if getattr(self._inside, "depth", 0) else "elsewhere"
            self.add(f"gc generation {info['generation']}, {where}", time.perf_counter() - self._gc_started)

    def run(self, title: str, work: workloads.Workload, steps: int) -> None:
        workloads.timed_steps(work, 200)
        self.total.clear(), self.calls.clear(), self.longest.clear()
        torch.cuda.synchronize()
        self.on, started = True, time.perf_counter()
        for _ in range(steps):
            work.step()
        torch.cuda.synchronize()
        elapsed, self.on = time.perf_counter() - started, False
        print(f"\n{title}: {elapsed / steps * 1e3:.3f} ms per step")
        print("| timed | calls | total ms | per step µs | mean µs | max µs |\n|---|---:|---:|---:|---:|---:|")
        for label in sorted(self.total):
            total, calls = self.total[label], self.calls[label]
            print(f"| {label} | {calls} | {total * 1e3:.2f} | {total / steps * 1e6:.2f} | "
                  f"{total / calls * 1e6:.1f} | {self.longest[label] * 1e6:.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4000)
    args = parser.parse_args()
    profile = Profile()
    for name in ("_after_optimizer_step", "_rescan_devices"):
        setattr(Agent, name, profile.timed(f"Agent.{name}", getattr(Agent, name)))
    CensusSchedule.take = profile.timed("CensusSchedule.take", CensusSchedule.take)  # type: ignore[method-assign]
    for name in ("_before_call", "_after_call"):  # model discovery's module-call hooks
        setattr(ModelDiscovery, name, profile.timed(f"ModelDiscovery.{name}", getattr(ModelDiscovery, name)))
    for name in ("_before_forward", "_after_forward", "_backward_started", "_gradient_landed", "before_optimizer",
                 "after_optimizer"):  # the step's phases (the bill at the peak)
        setattr(StepPhases, name, profile.timed(f"StepPhases.{name}", getattr(StepPhases, name)))
    _torchstats.raw_stats = profile.timed("allocator counters (raw_stats)", _torchstats.raw_stats)  # type: ignore[assignment]
    gc.callbacks.append(profile.gc_callback)
    work = workloads.mlp()
    print(f"GPU: {torch.cuda.get_device_name(0)}  torch {torch.__version__}  "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")

    profile.run("no hook", work, args.steps)

    def empty_hook(optimizer: Any, args: Any, kwargs: Any) -> None:
        pass

    handle = register_optimizer_step_post_hook(profile.timed("empty optimizer-step hook", empty_hook))
    profile.run("an empty optimizer-step hook", work, args.steps)
    handle.remove()

    agent.start(directory=Path(tempfile.mkdtemp()) / "run")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (agent.current() and agent.current().active):
        time.sleep(0.01)
    profile.run("the agent, on at its default rate", work, args.steps)
    agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
