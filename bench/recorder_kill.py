"""`vramtop record` killed with SIGKILL at random moments, compression included: is anything lost
beyond the sample being written?

Each round records with FakeNvml (no GPU needed) every 50 ms for a short duration with
`--compress` and is killed with SIGKILL: every other round at a random moment while it records,
the others within 150 ms of its end record, while the file is being packed. Then what is on disk is checked:

- a compressed file under the final name is complete (its end record is there), or absent: never
  half-written (it is written under a temporary name and renamed);
- otherwise the plain file is there, and the reader gives back every complete sample line in it
  (the torn last line, if any, is the only thing lost).

    python bench/recorder_kill.py --rounds 100

Prints the counts and exits 1 if any round lost data. tests/test_record_cli.py kills once.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vramtop.recording import read_recording  # noqa: E402


def one_round(work: Path, rng: random.Random, duration: float, packing: bool) -> dict[str, object]:
    """One recording killed at a random moment: while it records, or (``packing``) within 150 ms
    of its end record, while the file is being compressed."""
    path = work / "r.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.run_with_fake_nvml", "record", "-o", str(path),
                             "-i", "0.05", "--duration", str(duration), "--compress"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    if packing:
        while proc.poll() is None and not (path.exists() and b'"type":"end"' in path.read_bytes()[-300:]):
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.15))
    else:
        time.sleep(rng.uniform(0.3, duration + 0.3))
    delay = time.monotonic() - started
    finished = proc.poll() is not None
    if not finished:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    packed = work / "r.jsonl.xz"
    result: dict[str, object] = {"delay": round(delay, 3), "finished_before_kill": finished, "packing": packing}
    if packed.exists():
        rec = read_recording(packed)
        result.update(where="compressed", samples=len(rec.samples),
                      ok=rec.end is not None and rec.end.samples == len(rec.samples) and not rec.problems)
    elif path.exists():
        raw = path.read_bytes()
        lines = raw.split(b"\n")[:-1]  # complete lines only
        written = sum(1 for line in lines if json.loads(line).get("type") == "sample")
        rec = read_recording(path)
        result.update(where="plain", samples=len(rec.samples), written=written, ok=len(rec.samples) == written)
    else:
        result.update(where="nothing", samples=0, ok=delay < 1.0)  # killed before the first write
    for leftover in work.iterdir():
        leftover.unlink()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--duration", type=float, default=1.5, help="seconds each round records")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="vramtop-kill-"))
    rounds = [one_round(work, rng, args.duration, packing=i % 2 == 1) for i in range(args.rounds)]
    bad = [r for r in rounds if not r["ok"]]
    killed = [r for r in rounds if not r["finished_before_kill"]]
    places = {w: sum(1 for r in killed if r["where"] == w) for w in ("plain", "compressed", "nothing")}
    in_packing = [r for r in killed if r["packing"]]
    print(f"{len(rounds)} rounds, {len(killed)} killed ({len(killed) - len(in_packing)} while recording, "
          f"{len(in_packing)} after the end record, while packing; the rest had finished): "
          f"{places['plain']} left the plain file, {places['compressed']} a complete compressed one, "
          f"{places['nothing']} nothing yet; {len(bad)} of all rounds lost data beyond the line being written")
    for r in bad:
        print("  LOST:", r)
    if args.json_out:
        args.json_out.write_text(json.dumps(rounds, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
