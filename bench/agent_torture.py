"""A live agent in a real training process, attacked the ways a socket can be: does training
notice, does the process grow, is a real monitor still served?

The training process is a CPU loop (a small MLP, real torch) with the agent on and FakeCudaTorch
standing in for the CUDA allocator (what the agent reads; everything else, the socket server
included, is the real one). It logs every step's duration with a CLOCK_MONOTONIC stamp, so each
attack's window can be cut out of the log afterwards. Attacks, one after another, each a few
seconds: connect/disconnect cycles, many concurrent clients, slowloris clients (connect, say
half a frame, hold), a request flood, garbage and oversized frames, and a subscriber that never
reads. During each, a real monitor (AgentSource) connects and times its first sample. The quick
attacks (cycles, floods, garbage) repeat as fast as they can for 5 s: a window of a few dozen
steps has no p99 (it is the window's slowest step); the table says how many connections or
frames each attack made.

Each attack runs in several rounds, each right after a quiet window (no client) of the same
length: an attack's steps are compared with the quiet windows next to its own runs, so a drift
of the machine (the step time moves by ±15% over a minute with no client at all) is not read as
the attack's cost. Where the machine has cores to spare the trainer is pinned to two physical
cores (with their SMT siblings) and the attackers to the others: what is measured is what the
agent's threads cost the training thread, not an attacker process sharing the trainer's core.

    python bench/agent_torture.py                     # the published run (bench/RESULTS.md)
    python bench/agent_torture.py --scale 0.1         # a short one

Each window also counts the CPU time of the trainer's threads other than the training thread (the
agent's sampler and server): on a small shared machine, where the step p99 is the scheduler's
noise, that is the figure that shows what an attack makes the agent do.

Prints a markdown table and, with --json-out, the figures. tests/test_agent_torture.py runs a
short version and asserts only behaviour (the monitor served, the process alive and back to its
fds and threads), never timings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vramtop.protocol import encode_frame, hello, socket_path  # noqa: E402
from vramtop.sources.agent import AgentSource  # noqa: E402

TRAINER = textwrap.dedent("""
    import os, struct, sys, time, torch
    if os.environ.get("VRAMTOP_CPUS"):
        os.sched_setaffinity(0, {int(c) for c in os.environ["VRAMTOP_CPUS"].split(",")})
    sys.path.insert(0, os.environ["VRAMTOP_ROOT"])
    from tests.fakes.fake_cuda import FakeCudaTorch
    torch.set_num_threads(1)
    model = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(8)])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)  # before the swap: it imports torch._dynamo
    x = torch.randn(64, 256)
    fake = FakeCudaTorch(torch)
    fake.allocator.set(512 << 20, 1 << 30)
    sys.modules["torch"] = fake  # the agent finds this "torch" and its fake CUDA allocator
    import vramtop.agent as agent
    agent.start(interval=0.05, directory=os.environ["VRAMTOP_DIR"])
    fake.initialized = True
    log = open(os.environ["VRAMTOP_STEPS"], "wb", buffering=0)
    deadline = time.monotonic() + float(os.environ["VRAMTOP_SECONDS"])
    while time.monotonic() < deadline:
        started = time.monotonic()
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        log.write(struct.pack("dd", started, time.monotonic() - started))
""")


class Trainer:
    def __init__(self, directory: Path, seconds: float, cpus: set[int]) -> None:
        self.directory = directory
        self.steps = directory.parent / "steps.bin"
        env = {**os.environ, "VRAMTOP_ROOT": str(ROOT), "VRAMTOP_DIR": str(directory),
               "VRAMTOP_STEPS": str(self.steps), "VRAMTOP_SECONDS": str(seconds), "PYTHONPATH": str(ROOT),
               "VRAMTOP_CPUS": ",".join(map(str, sorted(cpus)))}
        self.proc = subprocess.Popen([sys.executable, "-c", TRAINER], env=env)
        self.path = socket_path(self.proc.pid, directory)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.path.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the agent never came up")
            time.sleep(0.05)
        time.sleep(1.0)

    def resources(self) -> dict[str, float]:
        import psutil

        p = psutil.Process(self.proc.pid)
        return {"rss_mib": p.memory_info().rss / 2**20, "fds": p.num_fds(), "threads": p.num_threads()}

    def agent_cpu_s(self) -> float:
        """CPU seconds the trainer's threads other than the training thread have run (the agent's
        sampler and server, whatever else the process started), from the scheduler's own count
        in nanoseconds. The figure a shared machine can measure: a step's p99 there is the
        scheduler's noise."""
        total = 0
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*"):
            if task.name == str(self.proc.pid):
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9

    def step_times(self, start: float, end: float) -> list[float]:
        data = self.steps.read_bytes()
        pairs = struct.iter_unpack("dd", data[: len(data) // 16 * 16])
        return [d for t, d in pairs if start <= t < end]


def connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    return s


def monitor_latency(directory: Path, pid: int) -> float:
    """Seconds until a real monitor has its first sample (inf if it never does within 10 s)."""
    started = time.monotonic()
    source = AgentSource(directory, pids={pid})
    try:
        while time.monotonic() - started < 10:
            if source.poll():
                return time.monotonic() - started
            time.sleep(0.01)
        return float("inf")
    finally:
        source.close()


Attack = Callable[[], int]  # runs the attack; returns how many connections or frames it made


def cycles(path: Path, seconds: float) -> Attack:
    def run() -> int:
        made = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            s = connect(path)
            s.sendall(encode_frame(hello("monitor")))
            s.recv(65536)  # its hello: a whole exchange, not just a connect
            s.close()
            made += 1
        return made
    return run


def concurrent(path: Path, n: int, hold: float) -> Attack:
    def run() -> int:
        clients = []
        for _ in range(n):
            try:
                s = connect(path)
                s.sendall(encode_frame(hello("monitor")))
                s.setblocking(False)
                clients.append(s)
            except OSError:
                pass
        end = time.monotonic() + hold
        while time.monotonic() < end:  # they read, as monitors do
            for s in clients:
                with contextlib.suppress(OSError):
                    s.recv(65536)
            time.sleep(0.05)
        for s in clients:
            s.close()
        return len(clients)
    return run


def slowloris(path: Path, n: int, hold: float) -> Attack:
    def run() -> int:
        clients = []
        for _ in range(n):
            try:
                s = connect(path)
                s.sendall(b"\x00\x00")  # half a length prefix, then nothing
                clients.append(s)
            except OSError:
                pass
        time.sleep(hold)
        for s in clients:
            s.close()
        return len(clients)
    return run


def flood_once(path: Path, n: int, end: float) -> int:
    """Say hello, then send ``n`` requests (until ``end`` at the latest) and never read; requests
    sent (the agent reads its share of them and leaves the rest in the socket, where the flood
    waits)."""
    s = connect(path)
    request = encode_frame({"type": "request", "what": "sample"})
    s.setblocking(False)
    greeting = encode_frame(hello("monitor"))
    payload = greeting + request * n
    sent = 0
    while sent < len(payload) and time.monotonic() < end:
        try:
            sent += s.send(payload[sent:])
        except BlockingIOError:
            # Send again the moment the agent has read something: as fast as a spinning loop,
            # without taking a shared machine's CPU from the trainer while it waits.
            select.select([], [s], [], max(0.0, min(0.1, end - time.monotonic())))
        except OSError:
            break
    time.sleep(1.0)  # never reads
    s.close()
    return max(0, sent - len(greeting)) // len(request)


def flood(path: Path, n: int, seconds: float) -> Attack:
    def run() -> int:
        made = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            made += flood_once(path, n, end)
        return made
    return run


def garbage(path: Path, seconds: float) -> Attack:
    def run() -> int:
        frames = [b"\xff" * 64, struct.pack(">I", 1 << 31) + b"{",
                  encode_frame(hello("monitor")) + b"\x00\x00\x00\x05{{{{{",
                  struct.pack(">I", 3000) + b"[" * 1500 + b"]" * 1500]
        made = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                s = connect(path)
                s.sendall(frames[made % len(frames)])
                s.close()
            except OSError:
                pass
            made += 1
        return made
    return run


def never_reads(path: Path, hold: float) -> Attack:
    def run() -> int:
        s = connect(path)
        s.sendall(encode_frame(hello("monitor")))
        time.sleep(hold)  # the agent keeps publishing; this client reads nothing
        s.close()
        return 1
    return run


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Sink:
    """A socket outside the training process that accepts and never reads: the same flood sent
    there costs the host what a flood costs it (the flooder's sends, the kernel's buffers) and the
    agent nothing, so the training step's answer to it is the part of a flood that is not the
    agent's."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(64)
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.held = [*[c for c in self.held if c.fileno() != -1][-16:], conn]


def build_attacks(path: Path, k: float, sink: Path | None = None) -> list[tuple[str, Attack]]:
    quick = max(2.0, 5 * k)  # how long the quick attacks repeat
    hold = max(2.0, 8 * k)
    control = ([(f"control: the same floods into a socket outside the training process for {quick:.0f} s",
                 flood(sink, int(200_000 * k), quick))] if sink else [])
    return [
        *control,
        (f"connect/disconnect cycles for {quick:.0f} s", cycles(path, quick)),
        (f"{int(100 * k) or 1} concurrent monitors", concurrent(path, int(100 * k) or 1, quick)),
        ("16 slowloris clients", slowloris(path, 16, hold)),
        (f"floods of {int(200_000 * k)} requests, never read, for {quick:.0f} s",
         flood(path, int(200_000 * k), quick)),
        (f"garbage and oversized frames for {quick:.0f} s", garbage(path, quick)),
        ("a subscriber that never reads", never_reads(path, hold)),
    ]


def split_cpus() -> tuple[set[int], set[int]]:
    """The trainer's CPUs and the attackers': two physical cores (and their SMT siblings) for the
    trainer when at least eight CPUs are there; else everything for both (the VM, CI)."""
    available = set(os.sched_getaffinity(0))
    if len(available) < 8:
        return available, available
    trainer: set[int] = set()
    cores = 0
    for cpu in sorted(available):
        if cpu not in trainer and cores < 2:
            siblings = cpu_list(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"))
            trainer |= ({cpu} | siblings) & available
            cores += 1
    return trainer, available - trainer


def cpu_list(path: Path) -> set[int]:
    """'0,8' or '0-1' from sysfs; empty when unreadable."""
    try:
        text = path.read_text().strip()
    except OSError:
        return set()
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def run_window(trainer: Trainer, name: str, attack: Attack) -> dict[str, Any]:
    """One attack (or a quiet pause) with a real monitor connecting while it is under way."""
    started = time.monotonic()
    failures: list[str] = []
    made: list[int] = []

    def guarded() -> None:
        try:
            made.append(attack())
        except Exception as err:  # an attack cut short is reported, not hidden
            failures.append(f"{type(err).__name__}: {err}")

    cpu_before = trainer.agent_cpu_s()
    thread = threading.Thread(target=guarded, daemon=True)
    thread.start()
    time.sleep(0.3)  # the attack under way
    latency = monitor_latency(trainer.directory, trainer.proc.pid)
    thread.join(timeout=120)
    ended = time.monotonic()
    return {"attack": name, "made": made[0] if made else 0, "seconds": ended - started,
            "agent_cpu_s": trainer.agent_cpu_s() - cpu_before,
            "steps": trainer.step_times(started, ended), "monitor_s": latency,
            "alive": trainer.proc.poll() is None, "attack_error": failures[0] if failures else None}


def summarise(name: str, runs: list[dict[str, Any]], quiet_runs: list[dict[str, Any]]) -> dict[str, Any]:
    steps = [d for r in runs for d in r["steps"]]
    quiet = [d for r in quiet_runs for d in r["steps"]]
    seconds = sum(r["seconds"] for r in runs)
    quiet_seconds = sum(r["seconds"] for r in quiet_runs)
    return {"agent_cpu_ms_per_s": 1e3 * sum(r["agent_cpu_s"] for r in runs) / seconds if seconds else float("nan"),
            "quiet_agent_cpu_ms_per_s": (1e3 * sum(r["agent_cpu_s"] for r in quiet_runs) / quiet_seconds
                                         if quiet_seconds else float("nan")),
            "attack": name, "made": sum(r["made"] for r in runs), "seconds": sum(r["seconds"] for r in runs),
            "steps": len(steps), "p50_ms": 1e3 * statistics.median(steps) if steps else float("nan"),
            "p99_ms": 1e3 * percentile(steps, 0.99), "quiet_steps": len(quiet),
            "quiet_p50_ms": 1e3 * statistics.median(quiet) if quiet else float("nan"),
            "quiet_p99_ms": 1e3 * percentile(quiet, 0.99),
            "monitor_s": max(r["monitor_s"] for r in runs), "alive": all(r["alive"] for r in runs),
            "attack_error": next((r["attack_error"] for r in runs if r["attack_error"]), None)}


def print_table(rows: list[dict[str, Any]], before: dict[str, float], after: dict[str, float]) -> None:
    print("| attack | connections or frames | seconds | steps | step p50 | step p99 | quiet p99 next to it "
          "| p99 vs quiet | a real monitor's first sample (slowest) | agent threads' CPU | the same, quiet |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['attack']} | {r['made']} | {r['seconds']:.1f} | {r['steps']} | "
              f"{r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | {r['quiet_p99_ms']:.2f} ms | "
              f"{(r['p99_ms'] / r['quiet_p99_ms'] - 1) * 100:+.1f}% | {r['monitor_s'] * 1e3:.0f} ms | "
              f"{r['agent_cpu_ms_per_s']:.1f} ms/s | {r['quiet_agent_cpu_ms_per_s']:.1f} ms/s |"
              + (f" (the attack stopped: {r['attack_error']})" if r["attack_error"] else ""))
    print(f"\ntraining process before → after: RSS {before['rss_mib']:.1f} → {after['rss_mib']:.1f} MiB, "
          f"fds {before['fds']} → {after['fds']}, threads {before['threads']} → {after['threads']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="shrink every attack (0.1: a short run)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each attack, each after a quiet window")
    parser.add_argument("--only", action="append", metavar="WORDS",
                        help="run only the attacks whose name contains WORDS (repeatable)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="vramtop-torture-"))
    trainer_cpus, attacker_cpus = split_cpus()
    os.sched_setaffinity(0, attacker_cpus)
    trainer = Trainer(work / "run", seconds=3600, cpus=trainer_cpus)
    try:
        trainer.wait_ready()
        sink = Sink(work / "sink.sock")
        attacks = [(name, attack) for name, attack in build_attacks(trainer.path, args.scale, sink.path)
                   if not args.only or any(words in name for words in args.only)]
        before = trainer.resources()
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in attacks}
        quiet: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in attacks}
        for _ in range(args.rounds):
            for name, attack in attacks:
                window = max(2.0, 5 * args.scale)
                quiet[name].append(run_window(trainer, "quiet", lambda w=window: int(time.sleep(w) or 0)))
                runs[name].append(run_window(trainer, name, attack))
        time.sleep(2.0)  # let the server drop what it holds
        after = trainer.resources()
    finally:
        trainer.proc.kill()
        trainer.proc.wait()
    rows = [summarise(name, runs[name], quiet[name]) for name, _ in attacks]
    print(f"trainer on CPUs {sorted(trainer_cpus)}, attackers on {sorted(attacker_cpus)}, {args.rounds} rounds\n")
    print_table(rows, before, after)
    if args.json_out:
        args.json_out.write_text(json.dumps({"rows": rows, "before": before, "after": after,
                                             "trainer_cpus": sorted(trainer_cpus)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
