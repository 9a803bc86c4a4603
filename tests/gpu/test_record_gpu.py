"""`vramtop record --pid` against a real driver: one process's rows, the GPU's own figures, and
the end of the recording when that process exits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOLD = ("import sys, time, torch; x = torch.empty({gib} << 30, dtype=torch.uint8, device='cuda'); "
        "print('READY', flush=True); time.sleep(float(sys.argv[1]))")


def holder(gib: int, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(gib=gib), str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
    return proc


def test_record_pid_keeps_one_process_and_ends_with_it(tmp_path):
    watched, other = holder(2, 6), holder(1, 60)
    out = tmp_path / "one.jsonl"
    try:
        smi = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True).stdout
        used = {int(p): int(m) for p, m in (line.split(",") for line in smi.strip().splitlines())}
        result = subprocess.run([sys.executable, "-m", "vramtop", "record", "--pid", str(watched.pid), "-o", str(out),
                                 "-i", "0.2"], cwd=REPO, capture_output=True, text=True, timeout=60,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        assert result.returncode == 0, result.stderr
    finally:
        watched.kill()
        other.kill()
    from vramtop.recording import read_recording
    from vramtop.units import mib

    rec = read_recording(out)
    assert rec.end is not None and rec.end.reason == f"process {watched.pid} exited"
    assert rec.header.pid == watched.pid and "torch" in " ".join(rec.header.command)
    rows = [p for s in rec.samples for g in s.gpus for p in g.processes]
    assert rows and {p.pid for p in rows} == {watched.pid}  # the other holder is left out
    assert mib(rows[0].used_memory) == used[watched.pid]  # as nvidia-smi lists it
    # The GPU's own figure still counts everyone: both holders' memory is in memory.used.
    assert rec.samples[0].gpus[0].memory_used > rows[0].used_memory + (1 << 30)
