"""The monitor on a big box, from fakes: 8 GPUs, 64 processes (8 per GPU), 8 of them with an agent.
With ``--scene job``: a training job on screen instead (one process with the agent on GPU 0 of
FakeNvml's two-GPU box, publishing the demo recording's GPT-2 samples at 4 Hz), measured at
refresh 1 s and 0.2 s, with the first-frame and one-shot rows (see bench/README.md).

No GPU needed. Eight small processes each run the agent's real socket server (AgentServer) and
publish a synthetic AgentSample every 0.25 s, as a training rank's agent does; FakeNvml lists
8 GPUs with 8 compute processes each, one of them the agent's. The live TUI runs in a 160x48 pty
through ``bench/monitor_cpu.py`` (CPU of its process tree, which does not include the agents) at
a refresh of 1 s.

    python bench/monitor_scale.py [--scene scale|job] [--seconds 40] [--json-out out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GPUS, PER_GPU, AGENTS = 8, 8, 8
GiB = 1 << 30


def fake_agent(index: int) -> None:
    """One rank's agent: the real server, synthetic figures that move a little every tick."""
    sys.path.insert(0, str(REPO))
    from vramtop.agent._server import AgentServer
    from vramtop.codec import to_dict
    from vramtop.model import AgentDevice, AgentSample, AllocatorStats, StepPeak, TensorCensus
    from vramtop.protocol import AGENT_PROTOCOL_MAX, AGENT_PROTOCOL_MIN

    directory = Path(os.environ["XDG_RUNTIME_DIR"]) / "vramtop"
    started = time.time()
    beacon = {"pid": os.getpid(), "started": started, "protocol": [AGENT_PROTOCOL_MIN, AGENT_PROTOCOL_MAX]}
    server = AgentServer(directory, beacon, lambda request: None)
    server.start()
    census = TensorCensus(parameters_trainable=7 * GiB, parameters_frozen=0, gradients=7 * GiB,
                          optimizer_state=14 * GiB, time=started, seen="1 optimizer (AdamW); 1 model (Llama)")
    step = 0
    while True:
        step += 1
        allocated = 40 * GiB + (step % 17) * (GiB // 16)
        stats = AllocatorStats(allocated=allocated, reserved=48 * GiB, active=allocated, requested=allocated,
                               inactive_split=0, allocated_peak=60 * GiB, reserved_peak=62 * GiB,
                               num_alloc_retries=0, num_ooms=0)
        last = StepPeak(step=step, duration=0.25, peak_allocated=60 * GiB, peak_reserved=62 * GiB,
                        persistent=28 * GiB, exact=True)
        device = AgentDevice(index=0, uuid=f"GPU-{index:08x}-0000-0000-0000-000000000000", name="H100",
                             stats=stats, census=census, last_step=last, peak_step=step)
        sample = AgentSample(pid=os.getpid(), time=time.time(), torch_version="2.11.0", devices=(device,),
                             step=step, phase="backward", rank=index, world_size=AGENTS)
        server.publish({"type": "sample", "sample": to_dict(sample)})
        time.sleep(0.25)


def demo_agent_frames() -> list[dict[str, object]]:
    """The GPT-2 job's agent samples from the demo recording (before its OOM), as the wire has them."""
    import gzip

    frames = []
    with gzip.open(REPO / "vramtop" / "demo" / "gpt2-h100.jsonl.gz", "rt") as f:
        for line in f:
            record = json.loads(line)
            for agent in record.get("sample", {}).get("agents", ()):
                if agent.get("last_oom") is None and agent.get("devices"):
                    frames.append(agent)
    return frames


def fake_job_agent() -> None:
    """A training job's agent: the real server replaying the demo's GPT-2 samples every 0.25 s, on
    FakeNvml's GPU 0 (its UUID), with this process's PID and the current time."""
    sys.path.insert(0, str(REPO))
    from tests.fakes.fake_nvml import two_gpu_box
    from vramtop.agent._server import AgentServer
    from vramtop.protocol import AGENT_PROTOCOL_MAX, AGENT_PROTOCOL_MIN

    uuid = two_gpu_box().gpus[0].uuid
    frames = demo_agent_frames()
    directory = Path(os.environ["XDG_RUNTIME_DIR"]) / "vramtop"
    beacon = {"pid": os.getpid(), "started": time.time(), "protocol": [AGENT_PROTOCOL_MIN, AGENT_PROTOCOL_MAX]}
    server = AgentServer(directory, beacon, lambda request: None)
    server.start()
    for tick in range(1 << 62):
        agent = dict(frames[tick % len(frames)], pid=os.getpid(), time=time.time(), step=tick)
        agent["devices"] = [dict(d, uuid=uuid) for d in agent["devices"]]  # type: ignore[attr-defined]
        server.publish({"type": "sample", "sample": agent})
        time.sleep(0.25)


def job_scene(args: argparse.Namespace, env: dict[str, str]) -> int:
    agent = subprocess.Popen([sys.executable, __file__, "--job-agent"], env=env)
    try:
        time.sleep(2.0)
        env["FAKE_NVML_PIDS"] = str(agent.pid)
        argv = [sys.executable, str(HERE / "monitor_cpu.py"), "--vramtop",
                shlex.join([sys.executable, "-m", "tests.fakes.run_with_fake_nvml"]), "--skip-nvitop",
                "--scenarios", "idle", "--intervals", "1,0.2", "--seconds", str(args.seconds),
                "--warmup", "10", "--repeats", str(args.repeats)]
        argv += [x for only in args.only for x in ("--only", only)]
        if args.json_out:
            argv += ["--json-out", str(args.json_out)]
        return subprocess.run(argv, env=env, cwd=REPO).returncode
    finally:
        agent.kill()
        agent.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--job-agent", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scene", choices=("scale", "job"), default="scale")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--repeats", type=int, default=5, help="first-frame and one-shot runs (job scene)")
    parser.add_argument("--only", action="append", default=[], choices=("cpu", "frame", "once"),
                        help="one measurement only (job scene; repeatable)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if args.agent is not None:
        fake_agent(args.agent)
        return 0
    if args.job_agent:
        fake_job_agent()
        return 0
    with tempfile.TemporaryDirectory() as runtime:
        os.chmod(runtime, 0o700)
        # The repository first; keep any path already there (where textual lives on the GPU machine).
        paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env = {**os.environ, "XDG_RUNTIME_DIR": runtime, "PYTHONPATH": os.pathsep.join(paths)}
        if args.scene == "job":
            return job_scene(args, env)
        agents = [subprocess.Popen([sys.executable, __file__, "--agent", str(i)], env=env) for i in range(AGENTS)]
        try:
            time.sleep(2.0)
            env["FAKE_NVML_SCALE"] = ",".join(str(a.pid) for a in agents)
            # The scene must be what it claims: every agent on its GPU's row.
            once = subprocess.run([sys.executable, "-m", "tests.fakes.run_with_fake_nvml", "--once", "--json"],
                                  env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
            doc = json.loads(once.stdout)
            rows = sum(len(g["processes"]) for g in doc["gpus"])
            matched = sum(1 for a in doc["agents"] if a.get("host_pid"))
            print(f"scene: {len(doc['gpus'])} GPUs, {rows} processes, {matched} agents on their rows", flush=True)
            if (len(doc["gpus"]), rows, matched) != (GPUS, GPUS * PER_GPU, AGENTS):
                raise SystemExit(f"the fake box is not what it should be: {once.stderr[-2000:]}")
            argv = [sys.executable, str(HERE / "monitor_cpu.py"), "--vramtop",
                    shlex.join([sys.executable, "-m", "tests.fakes.run_with_fake_nvml"]), "--skip-nvitop",
                    "--scenarios", "idle", "--only", "cpu", "--intervals", "1", "--seconds", str(args.seconds),
                    "--warmup", "10"]
            if args.json_out:
                argv += ["--json-out", str(args.json_out)]
            return subprocess.run(argv, env=env, cwd=REPO).returncode
        finally:
            for agent in agents:
                agent.kill()
                agent.wait()


if __name__ == "__main__":
    raise SystemExit(main())
