"""`vramtop record` where it cannot write: a read-only directory, a disk that fills up while it
records, a file or a directory made unwritable while it records. Each through the real CLI with
FakeNvml (no GPU needed), a sample every 50 ms.

- read-only directory: a tmpfs mounted read-only (in a user and mount namespace, `unshare -rm`,
  so root's privilege to write anyway does not hide the error);
- disk full: a 12 KiB tmpfs that fills after a few samples (same namespace);
- the file made immutable while recording, the directory made immutable before `--compress`
  packs the file: `chattr +i` (needs root on a file system with attributes; skipped otherwise).

For each: the exit code, stderr (one clear line, no traceback), the samples the recorder says it
saved, and the samples the reader gets back from what is on disk.

    python bench/record_faults.py

tests/test_record_faults.py runs the same cases and asserts on them.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RECORD = [sys.executable, "-m", "tests.fakes.run_with_fake_nvml", "record", "-i", "0.05"]


def namespaces_work() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def chattr_works(work: Path) -> bool:
    probe = work / "probe"
    probe.write_text("")
    try:
        ok = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
    subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
    probe.unlink()
    return ok


def in_tmpfs(work: Path, mount_options: str, record_args: list[str]) -> subprocess.CompletedProcess[str]:
    """``vramtop record -o <tmpfs>/r.jsonl ...`` on a tmpfs of its own; what it left is copied out
    to ``work``/r.jsonl (the tmpfs goes with the namespace)."""
    script = (f"mkdir -p {work}/mnt && mount -t tmpfs -o {mount_options} tmpfs {work}/mnt && "
              f"{shlex.join([*RECORD, '-o', f'{work}/mnt/r.jsonl', *record_args])}; rc=$?; "
              f"[ -e {work}/mnt/r.jsonl ] && cat {work}/mnt/r.jsonl > {work}/r.jsonl; exit $rc")
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def with_chattr(work: Path, target: str, after: float, record_args: list[str]) -> subprocess.CompletedProcess[str]:
    """Records into ``work``; ``after`` seconds in, ``chattr +i`` the file (``target`` "file") or
    the directory ("dir"); undone once the recorder has exited."""
    path = work / "r.jsonl"
    victim = path if target == "file" else work
    proc = subprocess.Popen([*RECORD, "-o", str(path), *record_args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(after, lambda: subprocess.run(["chattr", "+i", str(victim)], check=True))
    timer.start()
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        timer.join()
        subprocess.run(["chattr", "-i", str(victim)], capture_output=True)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def outcome(case: str, result: subprocess.CompletedProcess[str], path: Path) -> dict[str, Any]:
    import re

    from vramtop.recording import read_recording

    said = re.search(r"(\d+) samples saved", result.stderr)
    readable = len(read_recording(path).samples) if path.exists() and path.stat().st_size else 0
    complete = 0
    if path.exists():
        complete = sum(1 for line in path.read_bytes().split(b"\n")[:-1] if b'"type":"sample"' in line)
    return {"case": case, "rc": result.returncode, "stderr": result.stderr.strip().splitlines(),
            "traceback": "Traceback" in result.stderr, "said_saved": int(said[1]) if said else None,
            "complete_lines": complete, "readable": readable, "file_left": path.exists()}


def run_cases(work: Path) -> list[dict[str, Any]]:
    rows = []
    if namespaces_work():
        rows.append(outcome("read-only directory (tmpfs, ro)",
                            in_tmpfs(work, "size=1m,ro", ["--duration", "1"]), work / "r.jsonl"))
        (work / "r.jsonl").unlink(missing_ok=True)
        rows.append(outcome("disk full mid-recording (12 KiB tmpfs)",
                            in_tmpfs(work, "size=12k", ["--duration", "3"]), work / "r.jsonl"))
        (work / "r.jsonl").unlink(missing_ok=True)
    if chattr_works(work):
        for case, target, args in (("the file made immutable mid-recording", "file", ["--duration", "3"]),
                                   ("the directory made immutable before --compress", "dir",
                                    ["--duration", "2", "--compress"])):
            sub = work / target
            sub.mkdir()
            rows.append(outcome(case, with_chattr(sub, target, 1.0, args), sub / "r.jsonl"))
            shutil.rmtree(sub)
    return rows


def main(argv: list[str] | None = None) -> int:
    work = Path(tempfile.mkdtemp(prefix="vramtop-rofaults-"))
    started = time.monotonic()
    rows = run_cases(work)
    print("| case | rc | stderr | saved (said) | complete lines on disk | readable |")
    print("|---|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['rc']} | {' / '.join(r['stderr'])} | {r['said_saved']} | "
              f"{r['complete_lines']} | {r['readable']} |")
    print(f"{len(rows)} cases in {time.monotonic() - started:.1f} s")
    shutil.rmtree(work, ignore_errors=True)
    bad = [r for r in rows if r["traceback"] or r["rc"] != 1 or r["readable"] != r["complete_lines"]]
    return 1 if bad or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
