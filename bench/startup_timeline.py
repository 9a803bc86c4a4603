"""Where the live monitor's first frame goes, as a timeline: milestones of ``vramtop`` and of the
Textual floor (``textual_floor.py``) in milliseconds since each was spawned, in a 160x48 pty,
medians over ``--runs`` rounds (the two take turns). Unlike a profile, nothing is slowed: each
milestone is one clock read where the live command passes it, on whichever thread passes it (the
NVML open and first read run on their own thread while Textual is imported, and only the later
of "first read done" and "app mounted" holds the first frame back).

    python bench/startup_timeline.py [--runs 5] [--fake]

``--fake``: NVML is tests/fakes' two-GPU FakeNvml (no driver needed).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FIGURES = "MiB"  # the first write that holds GPU memory figures is the first frame (monitor_cpu.py's marker)


class Marks:
    """Milestones as (ms since spawn, name, thread), written as JSON when the app exits."""

    def __init__(self, spawned: float, out: Path) -> None:
        self.spawned, self.out, self.seen = spawned, out, []  # type: list[tuple[float, str, str]]

    def __call__(self, name: str) -> None:
        if all(seen != name for _, seen, _ in self.seen):  # the first time only
            self.seen.append(((time.time() - self.spawned) * 1e3, name, threading.current_thread().name))

    def save(self) -> None:
        self.out.write_text(json.dumps(self.seen))


def wrap(owner: Any, name: str, before: str | None, after: str | None, mark: Marks) -> None:
    original = getattr(owner, name)

    def marked(*args: Any, **kwargs: Any) -> Any:
        if before:
            mark(before)
        result = original(*args, **kwargs)
        if after:
            mark(after)
        return result

    setattr(owner, name, marked)


def child(which: str, fake: bool, spawned: float, out: Path, nvml_after: bool = False) -> None:
    """Inside the pty: the live command (or the floor), marked, leaving 0.5 s after mounting."""
    mark = Marks(spawned, out)
    mark("interpreter started")

    def watch_the_terminal() -> None:
        """Textual's writer thread puts the frames out: mark when the first one reaches the terminal."""
        from textual.drivers import _writer_thread

        class File:
            def __init__(self, file: Any) -> None:
                self.file, self.pending = file, False

            def write(self, text: str) -> None:
                self.pending = self.pending or FIGURES in text
                self.file.write(text)

            def flush(self) -> None:
                self.file.flush()
                if self.pending:
                    mark("first frame on the terminal")

            def __getattr__(self, name: str) -> Any:
                return getattr(self.file, name)

        init = _writer_thread.WriterThread.__init__

        def watched(self: Any, file: Any) -> None:
            init(self, File(file))

        _writer_thread.WriterThread.__init__ = watched  # type: ignore[method-assign]

    def mounted(app: Any) -> None:
        mark("app mounted")
        write = app._driver.write

        def writing(data: str) -> None:
            if FIGURES in data:
                mark("first frame handed to the writer thread")
            write(data)

        app._driver.write = writing
        app.set_timer(0.5, app.exit)

    if which == "floor":
        sys.path.insert(0, str(HERE))
        import textual_floor

        mark("Textual and the floor imported")
        watch_the_terminal()

        class Floor(textual_floor.Floor):
            def on_mount(self) -> None:
                mounted(self)

        Floor().run()
        mark.save()
        return
    sys.path.insert(0, str(REPO))
    if fake:
        from tests.fakes import run_with_fake_nvml
    import vramtop.cli

    mark("vramtop.cli imported")
    import vramtop.commands.top  # what the command line imports once it has parsed
    import vramtop.sources.monitor as monitor
    import vramtop.sources.poller as poller

    mark("vramtop.commands.top and the sources imported")
    wrap(monitor.MonitorSource, "open", "NVML open started", "NVML opened", mark)
    wrap(monitor.MonitorSource, "read", None, "first sample read", mark)
    opening = poller.DeadlineReader.open_in_background

    def open_in_background(self: Any, *args: Any, **kwargs: Any) -> Any:
        mark("arguments parsed")
        if nvml_after:  # nothing on another thread while Textual is imported: NVML after it
            source = self.source

            def opened() -> None:
                source.open()
        else:
            opened = opening(self, *args, **kwargs)
        import vramtop.ui.app as app  # what the live command imports next, in the same order

        mark("Textual and vramtop.ui.app imported")
        watch_the_terminal()
        mounting = app.VramtopApp.on_mount

        def on_mount(self: Any) -> None:
            mounted(self)
            mounting(self)

        app.VramtopApp.on_mount = on_mount  # type: ignore[method-assign]
        wrap(app.VramtopApp, "on_sample_arrived", "first sample on the app", None, mark)
        return opened

    poller.DeadlineReader.open_in_background = open_in_background  # type: ignore[method-assign]
    sys.argv = ["vramtop", "-i", "1"]
    if fake:
        run_with_fake_nvml.main()
    else:
        vramtop.cli.main()
    mark.save()


def one_run(which: str, fake: bool, scratch: Path, nvml_after: bool = False) -> list[tuple[float, str, str]]:
    out = scratch / f"{which}.json"
    out.unlink(missing_ok=True)
    inner = [sys.executable, str(Path(__file__).resolve()), "--child", which, "--out", str(out),
             *(["--fake"] if fake else []), *(["--nvml-after"] if nvml_after else [])]
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "TERM": "xterm-256color", "PYTHONPATH": path}
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    env["STARTUP_SPAWNED"] = repr(time.time())
    # script(1) gives the child a real pty of a fixed size; what it draws is thrown away.
    subprocess.run(["script", "-q", "-e", "-c", f"stty cols 160 rows 48; exec {shlex.join(inner)}", "/dev/null"],
                   env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True, timeout=60)
    return [tuple(m) for m in json.loads(out.read_text())]  # type: ignore[misc]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--fake", action="store_true", help="FakeNvml instead of the driver")
    parser.add_argument("--nvml-after", action="store_true",
                        help="open NVML after the UI is imported, not on a thread meanwhile (what that overlap costs)")
    parser.add_argument("--child", choices=["vramtop", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.fake, float(os.environ["STARTUP_SPAWNED"]), args.out, args.nvml_after)
        return 0
    runs: dict[str, list[list[tuple[float, str, str]]]] = {"vramtop": [], "floor": []}
    with tempfile.TemporaryDirectory() as scratch:
        os.chmod(scratch, 0o700)
        os.environ["XDG_RUNTIME_DIR"] = scratch  # no agent of this machine's jobs joins the runs
        for r in range(args.runs):
            for which in (("vramtop", "floor") if r % 2 == 0 else ("floor", "vramtop")):
                runs[which].append(one_run(which, args.fake, Path(scratch), args.nvml_after))
    for which, done in runs.items():
        names = [name for _, name, _ in done[0]]
        print(f"\n{which} ({'FakeNvml' if args.fake else 'NVML'}; ms since spawn, median of {len(done)})")
        for name in names:
            times = [t for run in done for t, n, _ in run if n == name]
            thread = next(th for _, n, th in done[0] if n == name)
            print(f"  {statistics.median(times):7.1f}  {name}" + ("" if thread == "MainThread" else f"  [{thread}]"))
    if args.json_out:
        args.json_out.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
