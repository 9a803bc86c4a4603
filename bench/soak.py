"""Soak: agent + monitor + recorder side by side at 0.1 s for a long time. Does any of them grow?

Three real processes, one socket directory:

- the agent, inside a real training process (a small MLP on the CPU, real torch; the fake CUDA
  allocator of tests/fakes stands in for the GPU's, its figures moving every step), sampling
  every 0.1 s;
- the monitor, the real Textual app (headless, 120x40) over FakeNvml (whose busy GPU lists the
  training process) and the real agent connection, polling every 0.1 s, a key pressed every
  second (sort, GPU, all GPUs, pause, help...);
- the recorder, ``vramtop record -i 0.1`` over FakeNvml, writing a real file.

Every ``--every`` seconds (60 by default) the RSS, open fds and threads of each are sampled
(psutil) and appended to ``--log`` as one JSON line, so a run cut short still leaves its figures.

    python bench/soak.py --minutes 60 --log /tmp/soak.jsonl     # the published run
    python bench/soak.py --minutes 0.34 --every 2                 # about 20 s
    python bench/soak.py --cuda --minutes 8 --every 30            # on a GPU machine: all real

With ``--cuda`` nothing is faked: the trainer is an MLP on the GPU (its real caching allocator,
figures moving every step) and the monitor and the recorder read the real NVML.

Prints a markdown table (each process: RSS first/last/max, fds and threads min/max) and exits 1
if a process died. tests/test_soak.py runs 20 s and asserts flat fds and threads, bounded RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TRAINER = textwrap.dedent("""
    import os, sys, time, torch
    sys.path.insert(0, os.environ["VRAMTOP_ROOT"])
    from tests.fakes.fake_cuda import FakeCudaTorch
    torch.set_num_threads(1)
    model = torch.nn.Sequential(*[torch.nn.Linear(128, 128) for _ in range(4)])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(32, 128)
    fake = FakeCudaTorch(torch)
    fake.allocator.set(512 << 20, 1 << 30)
    sys.modules["torch"] = fake  # the agent finds this "torch" and its fake CUDA allocator
    import vramtop.agent as agent
    agent.start(interval=0.1)
    fake.initialized = True
    step = 0
    deadline = time.monotonic() + float(os.environ["SOAK_SECONDS"])
    while time.monotonic() < deadline:
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        fake.allocator.set((512 + step % 200) << 20, (1024 + step % 50) << 20)
        time.sleep(0.02)  # a step of a few tens of ms; the machine is shared
""")

TRAINER_CUDA = textwrap.dedent("""
    import os, sys, time, torch
    sys.path.insert(0, os.environ["VRAMTOP_ROOT"])
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(8)]).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    import vramtop.agent as agent
    agent.start(interval=0.1)
    step = 0
    deadline = time.monotonic() + float(os.environ["SOAK_SECONDS"])
    while time.monotonic() < deadline:
        x = torch.randn(64 + 32 * (step % 8), 1024, device="cuda")  # batch sizes vary: the cache moves
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step % 50 == 0:
            torch.cuda.synchronize()
        time.sleep(0.005)
""")

MONITOR = textwrap.dedent("""
    import asyncio, os, sys, time
    sys.path.insert(0, os.environ["VRAMTOP_ROOT"])
    if not os.environ.get("SOAK_REAL"):
        from tests.fakes.fake_nvml import FakeProc, MiB, two_gpu_box
        fake = two_gpu_box()
        fake.gpus[0].compute = [FakeProc(int(os.environ["SOAK_TRAINER_PID"]), 39800 * MiB)]
        sys.modules["pynvml"] = fake
    from vramtop.sources.monitor import monitor_source
    from vramtop.sources.poller import open_with_deadline
    from vramtop.ui.app import VramtopApp

    KEYS = ["s", "g", "g", "G", "space", "space", "s", "down", "up", "question_mark", "escape", "pagedown"]

    async def main():
        source = monitor_source(None)
        open_with_deadline(source)
        app = VramtopApp(source, interval=0.1)
        deadline = time.monotonic() + float(os.environ["SOAK_SECONDS"])
        async with app.run_test(size=(120, 40)) as pilot:
            i = 0
            while time.monotonic() < deadline:
                await pilot.press(KEYS[i % len(KEYS)])
                i += 1
                await pilot.pause(1.0)
        source.close()

    asyncio.run(main())
""")


def start(work: Path, seconds: float, trainer_pid: int | None, kind: str, out: Path,
          cuda: bool = False) -> subprocess.Popen[bytes]:
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "VRAMTOP_ROOT": str(ROOT), "PYTHONPATH": path, "XDG_RUNTIME_DIR": str(work),
           "SOAK_SECONDS": str(seconds), "SOAK_TRAINER_PID": str(trainer_pid or 0),
           "FAKE_NVML_PIDS": str(trainer_pid or ""), **({"SOAK_REAL": "1"} if cuda else {})}
    if kind == "agent":
        cmd = [sys.executable, "-c", TRAINER_CUDA if cuda else TRAINER]
    elif kind == "monitor":
        cmd = [sys.executable, "-c", MONITOR]
    else:
        runner = ["vramtop"] if cuda else ["tests.fakes.run_with_fake_nvml"]
        cmd = [sys.executable, "-m", *runner, "record", "-o", str(out), "-i", "0.1", "--duration", f"{seconds:g}"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(work / f"{kind}.err", "wb"))


def wait_ready(work: Path, agent_pid: int, recording: Path, timeout: float = 120) -> None:
    """Until the agent's socket is there and the recorder has written a sample with its figures."""
    from vramtop.protocol import socket_path

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if socket_path(agent_pid, work / "vramtop").exists() and recording.exists() \
                and b'"agents":[{' in recording.read_bytes()[-20000:]:
            return
        time.sleep(0.2)
    raise RuntimeError("the agent or the recorder never came up")


def resources(pid: int) -> dict[str, float] | None:
    import psutil

    try:
        p = psutil.Process(pid)
        with p.oneshot():
            return {"rss_mib": round(p.memory_info().rss / 2**20, 2), "fds": p.num_fds(), "threads": p.num_threads()}
    except psutil.Error:
        return None


def summarize(points: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Per process: RSS at the first point (after warm-up), at the last, its maximum; fds and
    threads min and max."""
    rows = []
    for name in names:
        seen = [p[name] for p in points if p.get(name)]
        if not seen:
            rows.append({"process": name, "points": 0})
            continue
        rss = [s["rss_mib"] for s in seen]
        rows.append({"process": name, "points": len(seen), "rss_first": rss[0], "rss_last": rss[-1],
                     "rss_max": max(rss), "rss_growth": round(rss[-1] - rss[0], 2),
                     "fds": (min(s["fds"] for s in seen), max(s["fds"] for s in seen)),
                     "threads": (min(s["threads"] for s in seen), max(s["threads"] for s in seen))})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| process | points | RSS first | RSS last | RSS max | growth | fds min–max | threads min–max |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if not r["points"]:
            lines.append(f"| {r['process']} | 0 | – | – | – | – | – | – |")
            continue
        lines.append(f"| {r['process']} | {r['points']} | {r['rss_first']:.1f} MiB | {r['rss_last']:.1f} MiB | "
                     f"{r['rss_max']:.1f} MiB | {r['rss_growth']:+.1f} MiB | {r['fds'][0]}–{r['fds'][1]} | "
                     f"{r['threads'][0]}–{r['threads'][1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--every", type=float, default=60.0, help="seconds between resource samples")
    parser.add_argument("--warmup", type=float, default=None, help="seconds after all three are up "
                        "before the first sample (default: --every, at most 60)")
    parser.add_argument("--log", type=Path, help="append each sample here as a JSON line")
    parser.add_argument("--json-out", type=Path, help="the summary as JSON")
    parser.add_argument("--cuda", action="store_true", help="a real GPU trainer, the real NVML (a GPU machine)")
    args = parser.parse_args(argv)
    seconds = args.minutes * 60
    warmup = min(args.every, 60.0) if args.warmup is None else args.warmup
    work = Path(tempfile.mkdtemp(prefix="vramtop-soak-"))
    recording = work / "soak.jsonl"
    # Each process outlives the last sample (their clocks start before the wait for readiness);
    # they are ended at the end anyway.
    run_for = seconds + warmup + 300
    agent = start(work, run_for, None, "agent", recording, args.cuda)
    procs = {"agent": agent,
             "monitor": start(work, run_for, agent.pid, "monitor", recording, args.cuda),
             "recorder": start(work, run_for, agent.pid, "recorder", recording, args.cuda)}
    names = list(procs)
    log = args.log.open("a") if args.log else None
    points: list[dict[str, Any]] = []
    wait_ready(work, agent.pid, recording)
    began = time.monotonic()
    time.sleep(warmup)
    try:
        while True:
            point: dict[str, Any] = {"t": round(time.monotonic() - began - warmup, 1),
                                     "utc": time.strftime("%H:%M:%S", time.gmtime())}
            point.update({name: resources(p.pid) for name, p in procs.items()})
            points.append(point)
            if log:
                log.write(json.dumps(point) + "\n")
                log.flush()
            if point["t"] >= seconds - 1 or any(p.poll() is not None for p in procs.values()):
                break
            time.sleep(max(0.0, args.every - (time.monotonic() - began - warmup - point["t"])))
    finally:
        died = {name: p.poll() for name, p in procs.items() if p.poll() is not None}
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            p.wait(30)
    from vramtop.recording import read_recording

    samples = len(read_recording(recording).samples) if recording.exists() else 0
    with_agent = 0
    if recording.exists():
        for line in recording.open():
            record = json.loads(line) if line.strip().startswith("{") else {}
            with_agent += bool(record.get("type") == "sample" and record["sample"].get("agents"))
    rows = summarize(points, names)
    print(table(rows))
    print(f"{len(points)} points over {points[-1]['t'] if points else 0:.0f} s; the recording holds {samples} "
          f"samples ({with_agent} with the agent's figures); died early: {died or 'none'}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"rows": rows, "points": points, "samples": samples,
                                             "with_agent": with_agent, "died": died}, indent=1))
    if log:
        log.close()
    return 1 if died else 0


if __name__ == "__main__":
    sys.exit(main())
