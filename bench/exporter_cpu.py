#!/usr/bin/env python3
"""What `vramtop export` costs: CPU of the exporter process while Prometheus scrapes it.

Two exporters run side by side over the same window, so they see the same machine: one scraped
every ``--scrape-every`` seconds (5 s by default: what a tight Prometheus job does), one never
scraped (the cost of sampling alone). CPU time is user + sys of each exporter process from
/proc, counted after a warm-up; each scrape's wall time and size are kept too.

``--fake``: FakeNvml as pynvml (tests/fakes/run_with_fake_nvml.py) with a CPU training process
running the real agent over a fake CUDA allocator (tests/fakes/fake_trainer.py), so the bill is
exported: runs anywhere, measures vramtop's own work (not NVML's). Without ``--fake``: the real
driver, with whatever is training on the GPUs.

Results: a Markdown table on stdout; ``--json-out FILE`` writes the same data (schema
``vramtop.bench.exporter_cpu``, version 1). Linux only (/proc). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

SCHEMA = "vramtop.bench.exporter_cpu"
REPO_ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (and its waited-for children), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / CLK_TCK


def start_exporter(args: argparse.Namespace, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    head = [sys.executable, "-m", "tests.fakes.run_with_fake_nvml"] if args.fake else [sys.executable, "-m", "vramtop"]
    extra = ["--per-process"] if args.per_process else []
    extra += ["--dcgm-compat"] if args.dcgm_compat else []
    cmd = [*head, "export", "--listen", "127.0.0.1:0", "-i", str(args.interval), *extra]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        found = re.search(r"serving metrics on (http://\S+)", line)
        if found:
            return proc, found[1]
    raise SystemExit(f"the exporter did not start: {' '.join(cmd)}")


def scrape(url: str) -> tuple[float, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as response:
        size = len(response.read())
    return time.perf_counter() - started, size


def measure(args: argparse.Namespace) -> dict[str, Any]:
    runtime = tempfile.mkdtemp(prefix="vramtop-bench-")
    os.chmod(runtime, 0o700)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "XDG_RUNTIME_DIR": runtime}
    trainer = None
    if args.fake:
        trainer = subprocess.Popen([sys.executable, "-m", "tests.fakes.fake_trainer"], cwd=REPO_ROOT, env=env,
                                   stdout=subprocess.PIPE, text=True)
        assert trainer.stdout is not None and trainer.stdout.readline().strip() == "READY"
        env["FAKE_NVML_PIDS"] = str(trainer.pid)
    scraped, scraped_url = start_exporter(args, env)
    alone, _ = start_exporter(args, env)
    try:
        log(f"warm-up {args.warmup:g} s")
        time.sleep(args.warmup)
        start = {p.pid: cpu_seconds(p.pid) for p in (scraped, alone)}
        began = time.monotonic()
        times, sizes = [], []
        log(f"measuring {args.seconds:g} s, a scrape every {args.scrape_every:g} s")
        while time.monotonic() - began < args.seconds:
            took, size = scrape(scraped_url)
            times.append(took)
            sizes.append(size)
            time.sleep(max(0.0, args.scrape_every - took))
        wall = time.monotonic() - began
        used = {p.pid: cpu_seconds(p.pid) - start[p.pid] for p in (scraped, alone)}
    finally:
        for proc in (scraped, alone, trainer):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=15)
    return {
        "schema": SCHEMA, "version": 1, "fake": args.fake, "interval": args.interval,
        "scrape_every": args.scrape_every, "seconds": round(wall, 1), "per_process": args.per_process,
        "dcgm_compat": args.dcgm_compat, "machine": platform.node(), "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "scraped": {"cpu_percent": 100 * used[scraped.pid] / wall, "scrapes": len(times),
                    "scrape_ms_median": 1000 * statistics.median(times), "scrape_ms_max": 1000 * max(times),
                    "bytes": statistics.median(sizes)},
        "not_scraped": {"cpu_percent": 100 * used[alone.pid] / wall},
    }


def report(result: dict[str, Any]) -> str:
    s, a = result["scraped"], result["not_scraped"]
    source = "FakeNvml + a CPU trainer with the agent" if result["fake"] else "NVML"
    return "\n".join([
        f"`vramtop export -i {result['interval']:g}` over {source}, {result['seconds']:g} s, "
        f"{result['cpus']} CPUs ({result['machine']})",
        "",
        "| exporter | CPU (% of a core) | scrape median / max | exposition |",
        "|---|---|---|---|",
        f"| scraped every {result['scrape_every']:g} s | {s['cpu_percent']:.2f} | "
        f"{s['scrape_ms_median']:.1f} / {s['scrape_ms_max']:.1f} ms | {s['bytes'] / 1024:.1f} KiB |",
        f"| never scraped | {a['cpu_percent']:.2f} | | |",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fake", action="store_true", help="FakeNvml and a fake-CUDA trainer (no GPU needed)")
    parser.add_argument("--seconds", type=float, default=120, help="measured window (default 120)")
    parser.add_argument("--warmup", type=float, default=5, help="seconds before measuring (default 5)")
    parser.add_argument("--interval", type=float, default=1.0, help="the exporter's -i (default 1)")
    parser.add_argument("--scrape-every", type=float, default=5.0, help="seconds between scrapes (default 5)")
    parser.add_argument("--per-process", action="store_true")
    parser.add_argument("--dcgm-compat", action="store_true")
    parser.add_argument("--json-out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args()
    result = measure(args)
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
