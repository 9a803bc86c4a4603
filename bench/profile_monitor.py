"""Where the live monitor's CPU goes with a training job on screen, from fakes: cProfile of the
real TUI (FakeNvml, one agent server replaying the demo's GPT-2 samples at 4 Hz, as
``monitor_scale.py --scene job`` sets up) for ``--seconds``, in a pseudo-terminal.

    python bench/profile_monitor.py [--interval 0.2] [--seconds 30] [--sort tottime] [--lines 40]

Prints the top of one profile of every thread: the main one and, from their start, the others
(the poller, the agent readers; ``threading.setprofile``), added together.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def child(seconds: float, interval: float, out: Path) -> int:
    """Inside the pty: the fake-NVML CLI under cProfile; the app exits after ``seconds``."""
    sys.path.insert(0, str(REPO))
    from tests.fakes import run_with_fake_nvml
    from vramtop.ui import app as app_module

    started = app_module.VramtopApp.on_mount

    def on_mount(self: app_module.VramtopApp) -> None:
        started(self)
        self.set_timer(seconds, self.exit)

    app_module.VramtopApp.on_mount = on_mount  # type: ignore[method-assign]
    profiles: list[cProfile.Profile] = []

    def thread_profile(*_: object) -> None:
        profile = cProfile.Profile()
        profiles.append(profile)
        profile.enable()  # profiles the thread that called the hook, from here on

    threading.setprofile(thread_profile)  # type: ignore[arg-type]
    main = cProfile.Profile()
    main.enable()
    sys.argv = ["vramtop", "-i", str(interval)]
    run_with_fake_nvml.main()
    main.disable()
    stats = pstats.Stats(main)
    for profile in profiles:
        profile.disable()
        stats.add(profile)
    stats.dump_stats(str(out))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--lines", type=int, default=40)
    parser.add_argument("--stats-out", type=Path, help="keep the pstats file here")
    args = parser.parse_args()
    if args.child:
        return child(args.seconds, args.interval, args.child)
    with tempfile.TemporaryDirectory() as runtime:
        os.chmod(runtime, 0o700)
        env = {**os.environ, "XDG_RUNTIME_DIR": runtime, "PYTHONPATH": str(REPO), "TERM": "xterm-256color"}
        env.pop("COLUMNS", None)
        env.pop("LINES", None)
        agent = subprocess.Popen([sys.executable, str(HERE / "monitor_scale.py"), "--job-agent"], env=env)
        try:
            time.sleep(2.0)
            env["FAKE_NVML_PIDS"] = str(agent.pid)
            out = args.stats_out or Path(runtime) / "monitor.pstats"
            inner = [sys.executable, __file__, "--child", str(out), "--seconds", str(args.seconds),
                     "--interval", str(args.interval)]
            # script(1) gives the TUI a real pty of a fixed size; its output is thrown away.
            command = f"stty cols 160 rows 48; exec {' '.join(inner)}"
            subprocess.run(["script", "-q", "-e", "-c", command, "/dev/null"], env=env, cwd=REPO,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
            text = io.StringIO()
            pstats.Stats(str(out), stream=text).sort_stats(args.sort).print_stats(args.lines)
            print(text.getvalue())
        finally:
            agent.kill()
            agent.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
