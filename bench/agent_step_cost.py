"""What the agent costs a launch-bound training loop, per step, without a GPU.

Real CPU torch trains MLPs of several depths (small layers, a small batch: each step is mostly
Python and dispatch, as a launch-bound loop on a GPU is); tests/fakes/fake_cuda.py stands in for
the CUDA allocator, so the agent runs its GPU code paths (device_type "cpu": its census counts the
CPU tensors). Two parts:

- **training thread**: every entry point torch calls into the agent (the optimizer-step hooks,
  the model hooks, the autograd hooks, model discovery's module hooks) is wrapped to add its
  thread CPU time to the step it ran in (the wrapper's own cost, calibrated in a tight loop, is
  taken off). After a warm-up that lets discovery settle, per depth: the median step's agent time
  (the steady state), the mean over all steps, and what the mean is made of: steps that only
  counted, steps with an allocator read, with the census, and measured steps (the model hooks
  on), each amortised over all steps (each kind's time summed, divided by every step: the four
  add up to the mean); the mean as a share of a 2, 5 and 10 ms step. For scale, the
  same loop without the agent, with an empty optimizer-step hook timed the same way: the least
  any hook costs there (its calls run with cold caches, which grow with the depth).
- **sampler thread**: ``Agent.tick()`` timed with thread CPU time (the GIL it holds), the median
  over many ticks, for 0, 1, 4 and 16 connected clients (a child process that says hello and
  reads everything); the server thread's CPU per tick beside it (it writes the frames); and the
  allocator snapshot the sampler takes once a second.

    python bench/agent_step_cost.py [--depths 8,25,50] [--steps 3000] [--clients 0,1,4,16]
    python bench/agent_step_cost.py --cuda      # on a GPU machine: the real allocator, the real GPU

Without ``--cuda`` these are CPU figures, not a GPU's: the fake allocator's counters cost ~5 µs a
read where CUDA's cost ~11-55 µs, so the counts (reads, hook calls per step) say more than the
times about a GPU. With ``--cuda`` the model, its data and the optimizer live on the GPU, the agent
reads the real caching allocator, and the "loop step" is the training thread's CPU time per step
(launch-bound: the host thread is the bottleneck), its wall time beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

import torch  # noqa: E402

from tests.fakes.fake_cuda import FakeCudaTorch  # noqa: E402
from vramtop import protocol  # noqa: E402
from vramtop.agent import _torchstats  # noqa: E402
from vramtop.agent._census_schedule import CensusSchedule  # noqa: E402
from vramtop.agent._discovery import ModelDiscovery  # noqa: E402
from vramtop.agent._phases import StepPhases  # noqa: E402
from vramtop.agent._runtime import Agent  # noqa: E402

MiB = 1 << 20
# Where torch calls into the agent on the training thread (everything else runs inside these).
ENTRY_POINTS: dict[type, tuple[str, ...]] = {
    Agent: ("_after_optimizer_step",),
    StepPhases: ("_optimizer_pre_hook", "_before_forward", "_after_forward", "_backward_started",
                 "_gradient_landed"),
    ModelDiscovery: ("_before_call", "_after_call"),
}


class ReadCounter:
    """Allocator reads per thread, counted around the one function every read goes through."""

    def __init__(self) -> None:
        self.reads_by_thread: dict[int, int] = {}
        read = _torchstats.raw_stats

        def counted(torch: Any, device: int) -> dict[str, Any]:
            me = threading.get_ident()
            self.reads_by_thread[me] = self.reads_by_thread.get(me, 0) + 1
            return read(torch, device)

        _torchstats.raw_stats = counted  # type: ignore[assignment]


READS = ReadCounter()
DEVICE = "cpu"  # "cuda" with --cuda


class StepClock:
    """Thread CPU time spent inside the agent's entry points during the current step."""

    def __init__(self) -> None:
        self.spent = 0.0
        self.calls: Counter[str] = Counter()
        self.census = 0  # census counts taken
        self.bias = 0.0  # what the wrapper itself adds to each call it times
        self._depth = 0  # an entry point called from another (a forward hook from discovery's)

    def wrap(self, label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return function(*args, **kwargs)
            self._depth += 1
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.spent += time.thread_time() - started - self.bias
                self._depth -= 1
                self.calls[label] += 1
        return timed

    def calibrate(self) -> None:
        empty = self.wrap("calibration", lambda: None)
        self.bias, self.spent = 0.0, 0.0
        for _ in range(20000):
            empty()
        self.bias, self.spent = self.spent / 20000, 0.0
        del self.calls["calibration"]

    def take(self) -> float:
        spent, self.spent = self.spent, 0.0
        return spent


def instrument(clock: StepClock) -> None:
    for cls, names in ENTRY_POINTS.items():
        for name in names:
            setattr(cls, name, clock.wrap(f"{cls.__name__}.{name}", getattr(cls, name)))
    take = CensusSchedule.take

    def counted_take(self: CensusSchedule, torch: Any, devices: Any) -> None:
        clock.census += 1
        take(self, torch, devices)

    CensusSchedule.take = counted_take  # type: ignore[method-assign]


def mlp(depth: int, width: int = 64, batch: int = 32) -> tuple[Any, Callable[[], None]]:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
    model = torch.nn.Sequential(*layers).to(DEVICE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, width, device=DEVICE)

    def step() -> None:
        loss = model(x).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step


def started_agent(directory: Path, interval: float) -> tuple[Agent, Any]:
    if DEVICE == "cuda":  # the real thing: CUDA is initialised by the program, as a user's is
        torch.zeros(1, device="cuda")
        agent = Agent(interval=interval, directory=directory)
        agent.start()
        real: Any = torch
        return _until_active(agent), real
    fake = FakeCudaTorch(torch)
    fake.allocator.set(100 * MiB, 128 * MiB)
    agent = Agent(interval=interval, directory=directory, torch=fake, device_type="cpu")
    agent.start()
    fake.initialized = True
    return _until_active(agent), fake


def _until_active(agent: Agent) -> Agent:
    deadline = time.monotonic() + 10
    while not agent.active and time.monotonic() < deadline:
        time.sleep(0.01)
    return agent


KINDS = ("counted only", "allocator read", "census", "measured")


def training_thread(depth: int, steps: int, warmup: int, clock: StepClock, directory: Path) -> dict[str, Any]:
    agent, _ = started_agent(directory, 0.25)
    try:
        _, step = mlp(depth)
        for _ in range(warmup):  # discovery settles, the first measured steps pass
            step()
        clock.take()
        clock.calls.clear()
        me = threading.get_ident()
        agent_s, step_s, wall_s = [], [], []
        by_kind: dict[str, list[float]] = {kind: [] for kind in KINDS}
        for _ in range(steps):
            reads, census, hooked = (READS.reads_by_thread.get(me, 0), clock.census,
                                     clock.calls["StepPhases._before_forward"])
            started, wall = time.thread_time(), time.perf_counter()
            step()
            step_s.append(time.thread_time() - started)
            wall_s.append(time.perf_counter() - wall)
            agent_s.append(clock.take())
            kind = ("measured" if clock.calls["StepPhases._before_forward"] > hooked else
                    "census" if clock.census > census else
                    "allocator read" if READS.reads_by_thread.get(me, 0) > reads else "counted only")
            by_kind[kind].append(agent_s[-1])
        timed = sum(sum(v) for k, v in by_kind.items() if k != "counted only")
        return {"depth": depth, "median_us": statistics.median(agent_s) * 1e6,
                "mean_us": statistics.fmean(agent_s) * 1e6, "step_ms": statistics.median(step_s) * 1e3,
                "wall_ms": statistics.median(wall_s) * 1e3,
                "counted_us": statistics.median(by_kind["counted only"] or [0.0]) * 1e6,
                "timed_share": timed / sum(step_s),
                "kinds": {k: (len(v), sum(v) / steps * 1e6) for k, v in by_kind.items()},
                "calls": dict(clock.calls), "steps": steps}
    finally:
        agent.stop()


def empty_hook(depth: int, steps: int, clock: StepClock) -> float:
    """The median step's time in an empty optimizer-step hook, timed as the agent's are."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(clock.wrap("empty hook", lambda *args: None))
    try:
        _, step = mlp(depth)
        for _ in range(100):
            step()
        clock.take()
        spent = []
        for _ in range(steps):
            step()
            spent.append(clock.take())
        return statistics.median(spent) * 1e6
    finally:
        handle.remove()


CLIENTS = textwrap.dedent("""
    import selectors, socket, sys
    from vramtop.protocol import encode_frame, hello
    path, count = sys.argv[1], int(sys.argv[2])
    selector = selectors.DefaultSelector()
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        sock.sendall(encode_frame(hello("monitor")))
        selector.register(sock, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            if not key.fileobj.recv(1 << 16):
                sys.exit(0)
""")


def sampler_thread(depth: int, clients: int, ticks: int, directory: Path) -> dict[str, float]:
    agent, fake = started_agent(directory, 3600.0)  # its own thread ticks once, then sleeps
    child = None
    try:
        _, step = mlp(depth)
        for _ in range(50):
            step()
        server = agent._server
        assert server is not None
        if clients:
            path = str(protocol.socket_path(os.getpid(), directory))
            child = subprocess.Popen([sys.executable, "-c", CLIENTS, path, str(clients)], stdout=subprocess.PIPE,
                                     env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
            assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
            deadline = time.monotonic() + 10
            while server.client_count < clients and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)  # the hellos read
        server_clock = server_thread_clock()
        per_tick, server_before = [], server_clock()
        for _ in range(ticks):
            started = time.thread_time()
            agent.tick()
            per_tick.append(time.thread_time() - started)
            time.sleep(0.002)  # the server thread writes the frames meanwhile
        time.sleep(0.1)
        server_cpu = (server_clock() - server_before) / ticks
        snapshot = []
        for _ in range(20):
            started = time.thread_time()
            _torchstats.take_snapshot(fake)
            snapshot.append(time.thread_time() - started)
        return {"tick_us": statistics.median(per_tick) * 1e6, "server_us": server_cpu * 1e6,
                "snapshot_us": statistics.median(snapshot) * 1e6, "connected": server.client_count}
    finally:
        if child is not None:
            child.kill()
            child.wait()
        agent.stop()


def server_thread_clock() -> Callable[[], float]:
    """The CPU time of the agent's server thread so far (0 where the OS cannot say)."""
    thread = next((t for t in threading.enumerate() if t.name == "vramtop-agent-server"), None)
    if thread is None or thread.ident is None or not hasattr(time, "pthread_getcpuclockid"):
        return lambda: 0.0
    clock = time.pthread_getcpuclockid(thread.ident)
    return lambda: time.clock_gettime(clock)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="8,25,50")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--clients", default="0,1,4,16")
    parser.add_argument("--ticks", type=int, default=400)
    parser.add_argument("--cuda", action="store_true", help="train on the GPU and read its real allocator")
    args = parser.parse_args()
    if args.cuda:
        global DEVICE
        DEVICE = "cuda"
    depths = [int(d) for d in args.depths.split(",")]
    torch.set_num_threads(1)  # one core for the loop, as a launch-bound GPU loop's host thread
    clock = StepClock()
    instrument(clock)
    clock.calibrate()
    where = torch.cuda.get_device_name(0) if args.cuda else "CPU, fake allocator"
    print(f"torch {torch.__version__}, {where}, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, "
          f"timing wrapper {clock.bias * 1e6:.2f} µs a call (taken off)\n")
    print("| depth | loop step (CPU; wall) | empty hook, median | agent: a step that only counts, median "
          "| agent, mean | "
          + " | ".join(f"{kind} (steps: µs/step)" for kind in KINDS)
          + " | work spaced in time, share of the loop | total at a 2 / 5 / 10 ms step |")
    print("|---:|---:|---:|---:|---:|" + "---:|" * len(KINDS) + "---:|---:|")
    calls = {}
    for depth in depths:
        floor = empty_hook(depth, args.steps // 2, clock)
        with tempfile.TemporaryDirectory() as tmp:
            r = training_thread(depth, args.steps, args.warmup, clock, Path(tmp) / "run")
        # Reads, the census and measurements are spaced in time (their share of the loop's time
        # holds for any step time); what every step pays is the counting step's.
        total = " / ".join(f"{r['counted_us'] / (ms * 10) + r['timed_share'] * 100:.2f}%" for ms in (2, 5, 10))
        kinds = " | ".join(f"{n}: {us:.1f}" for n, us in r["kinds"].values())
        print(f"| {depth} | {r['step_ms']:.2f} ms; {r['wall_ms']:.2f} ms | {floor:.1f} µs | {r['counted_us']:.1f} µs | "
              f"{r['mean_us']:.1f} µs | {kinds} | {r['timed_share'] * 100:.2f}% | {total} |")
        calls[depth] = ", ".join(f"{name.split('.')[-1]} {n / r['steps']:.3g}"
                                 for name, n in sorted(r["calls"].items()))
    print(f"\nEntry points called per step, over {args.steps} steps:")
    for depth, line in calls.items():
        print(f"- depth {depth}: {line}")
    print("\n| depth | clients | sampler tick (thread CPU, median) | server thread CPU per tick | "
          "snapshot summary (≤ 1/s) |")
    print("|---:|---:|---:|---:|---:|")
    for depth in depths[-1:]:
        for clients in (int(c) for c in args.clients.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                s = sampler_thread(depth, clients, args.ticks, Path(tmp) / "run")
            print(f"| {depth} | {s['connected']} | {s['tick_us']:.0f} µs | {s['server_us']:.0f} µs | "
                  f"{s['snapshot_us']:.0f} µs |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
