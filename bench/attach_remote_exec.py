"""How long `vramtop attach` takes on each route: ``sys.remote_exec`` for a Python 3.14+ target,
ptrace for this Python's own.

Each round starts a fresh target (a loop in a clean environment that never imports vramtop, CUDA
faked on a bare namespace so that the agent serves at once) and attaches to it. Reported per
route: the helper's time (the target's interpreter started, ``sys.remote_exec`` done; remote_exec
only) and the time from the call of ``attach_agent`` until the agent serves its socket (medians,
min, max over the rounds).

    python bench/attach_remote_exec.py --python python3.14 --rounds 10
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fakes.fake_cuda import bare_namespace_source  # noqa: E402 - after the path
from vramtop.inject import attach_agent  # noqa: E402

TARGET = bare_namespace_source(1 << 20, 2 << 20) + textwrap.dedent("""
    print("ready", flush=True)
    end = time.monotonic() + 30
    while time.monotonic() < end:
        sum(range(1000))
        time.sleep(0.001)
""")


def one_round(python: str, directory: Path) -> tuple[str, float | None, float]:
    proc = subprocess.Popen([python, "-c", TARGET], stdout=subprocess.PIPE, text=True,
                            env={"PATH": "/usr/bin:/bin"}, cwd=tempfile.gettempdir())
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("ready")
        begun = time.monotonic()
        attached = attach_agent(proc.pid, directory, wait=30)
        return attached.route, attached.helper_s, time.monotonic() - begun
    finally:
        proc.kill()
        proc.wait()


def summary(values: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(values) * 1000, 1), "min_ms": round(min(values) * 1000, 1),
            "max_ms": round(max(values) * 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", required=True, help="a Python 3.14+ interpreter for the remote_exec targets")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp()) / "vramtop"
    release = subprocess.run([args.python, "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, check=True).stdout.strip()
    result: dict[str, object] = {"vramtop_python": platform.python_version(), "target_python": release,
                                 "rounds": args.rounds}
    for python in (args.python, sys.executable):
        helper, serving, route = [], [], ""
        for _ in range(args.rounds):
            route, helper_s, total = one_round(python, directory)
            serving.append(total)
            if helper_s is not None:
                helper.append(helper_s)
        result[route] = {"attach_to_serving": summary(serving), **({"helper": summary(helper)} if helper else {})}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
