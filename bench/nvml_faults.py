"""The NVML fault matrix: every way NVML can fail the monitor, through the real UI.

The real Textual app (headless, driven by its pilot) over the real NvmlSource, poller and deadline
reader, with FakeNvml (tests/fakes) in place of the driver. For each fault: inject it while the
monitor runs, press keys throughout (``s``: sort, whose effect is checked after every press) and
time each press from its delivery (as the terminal driver delivers it) until its action has
run; wait for the fault's message on screen; heal NVML; wait until fresh figures are back with
no message. Faults:

- every NVML error code (all of pynvml's NVML_ERROR_*) raised by every per-GPU read call;
- a read that hangs (nvmlDeviceGetMemoryInfo never returns until released);
- the library vanishing mid-run (every call fails; once back, it must be initialised again),
  then coming back hung in nvmlInit, or hung in nvmlDeviceGetCount;
- at start-up, before the UI exists: a hang in nvmlInit and in nvmlDeviceGetCount (the command
  ends with a clear message after the open deadline).

    python bench/nvml_faults.py                  # the published run: deadlines as shipped (5 s, 10 s)
    python bench/nvml_faults.py --deadline 0.3   # a quick one
    python bench/nvml_faults.py --real           # on a GPU machine: the real driver, faults injected

With ``--real`` nothing in Python is faked: the monitor runs on the real pynvml and driver, and
the faults are injected beneath pynvml by bench/fault_nvml.py (a library loaded in place of
libnvidia-ml.so.1 that forwards every call to the driver's, unless told to fail or hang). It
needs gcc; the script builds the library and starts itself again with it on LD_LIBRARY_PATH.

Prints a markdown table. tests/test_nvml_faults.py runs the same matrix and asserts behaviour
(message shown, stale marked, keys handled, recovery), never timings.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import fault_nvml  # noqa: E402
import pynvml  # noqa: E402

from tests.fakes.fake_nvml import FakeNvml, two_gpu_box  # noqa: E402
from vramtop.sources.hostinfo import HostInfo  # noqa: E402
from vramtop.sources.nvml import NvmlSource, describe_nvml_error  # noqa: E402

FRESH = "40124/81559 MiB"  # GPU 0's memory line while NVML answers
STALE = "showing data from"  # the banner over data that is not fresh
HUNG = "driver hung?"
SIZE = (160, 50)

READ_CALLS = ("nvmlDeviceGetMemoryInfo", "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetTemperature",
              "nvmlDeviceGetPowerUsage", "nvmlDeviceGetPcieThroughput", "nvmlDeviceGetMigMode",
              *(f"nvmlDevice{kind}RunningProcesses{v}" for kind in ("GetCompute", "GetGraphics")
                for v in ("_v3", "_v2", "")))
CODES = sorted({getattr(pynvml, n) for n in dir(pynvml) if n.startswith("NVML_ERROR_")})


def code_name(code: int) -> str:
    return next(n for n in dir(pynvml) if n.startswith("NVML_ERROR_") and getattr(pynvml, n) == code)[11:]


@dataclass
class Step:
    """Do ``act`` to the fake, then expect ``shows`` on screen (and the stale banner if ``stale``)."""

    act: Callable[[FakeNvml], None]
    shows: str
    stale: bool


@dataclass
class Fault:
    name: str
    steps: list[Step]
    heal: Callable[[FakeNvml], None]


@dataclass
class Outcome:
    name: str
    shown_s: list[float] = field(default_factory=list)  # per step: injection -> message on screen
    messages: list[str] = field(default_factory=list)  # the screen line that showed it
    stale_marked: list[bool] = field(default_factory=list)
    keys_ms: list[float] = field(default_factory=list)
    keys_handled: bool = True
    recovered_s: float | None = None
    error: str | None = None


def _fail_reads(code: int) -> Callable[[FakeNvml], None]:
    def act(fake: FakeNvml) -> None:
        fake.fail.update({name: code for name in READ_CALLS})
    return act


def _hang(*names: str) -> Callable[[FakeNvml], None]:
    def act(fake: FakeNvml) -> None:
        fake.release.clear()
        fake.hang_in.update(names)
    return act


def _heal(fake: FakeNvml) -> None:
    fake.fail.clear()
    fake.hang_in.clear()
    fake.release.set()
    if fake.vanished:
        fake.come_back()


def _back_hung_in(name: str) -> Callable[[FakeNvml], None]:
    def act(fake: FakeNvml) -> None:
        _hang(name)(fake)
        fake.come_back()
    return act


def faults() -> list[Fault]:
    out = [Fault(f"{code_name(c)} ({c}) in every read", [Step(_fail_reads(c), _shown(c), False)], _heal)
           for c in CODES]
    out.append(Fault("a read hangs (memory info)", [Step(_hang("nvmlDeviceGetMemoryInfo"), HUNG, True)], _heal))
    gone = Step(lambda fake: fake.vanish(), "driver not found", True)
    out.append(Fault("the library vanishes mid-run", [gone], _heal))
    out.append(Fault("… and comes back hung in nvmlInit", [gone, Step(_back_hung_in("nvmlInit"), HUNG, True)], _heal))
    out.append(Fault("… and comes back hung in nvmlDeviceGetCount",
                     [gone, Step(_back_hung_in("nvmlDeviceGetCount"), HUNG, True)], _heal))
    return out


def _shown(code: int) -> str:
    """What the GPU's line must say: the start of the description (the line may be cut)."""
    return describe_nvml_error(pynvml.NVMLError(code))[:30]


def screen_text(app: Any) -> str:
    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), record=True, force_terminal=True,
                      color_system="truecolor", legacy_windows=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return str(console.export_text())


KEY_GIVE_UP_S = 2.0


async def key_latency_ms(app: Any, key: str, handled: Callable[[], bool]) -> float:
    """A key as the terminal driver delivers it, timed until its action has run (``handled``).
    Not the pilot's ``press``: that also waits until the whole app is idle (tens of ms of
    sleeps), which is not what a user waits for."""
    from textual import events

    event = events.Key(key, key)
    event.set_sender(app)
    started = time.perf_counter()
    app._driver.send_message(event)
    while not handled() and time.perf_counter() - started < KEY_GIVE_UP_S:
        await asyncio.sleep(0.0005)
    return (time.perf_counter() - started) * 1000


async def _press_until(pilot: Any, outcome: Outcome, done: Callable[[], bool], timeout: float) -> float | None:
    """Press ``s`` every 50 ms until ``done``: each press timed, its effect checked. Seconds
    until done, or None at the timeout."""
    app = pilot.app
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if done():
            return time.monotonic() - started
        outcome.keys_ms.append(await key_latency_ms(app, "s", lambda before=app.sort: app.sort != before))
        outcome.keys_handled &= outcome.keys_ms[-1] < KEY_GIVE_UP_S * 1000
        await pilot.pause(0.05)
    return None


async def run_matrix(matrix: list[Fault], *, interval: float, deadline: float, timeout: float,
                     real: fault_nvml.ShimControl | None = None) -> list[Outcome]:
    """``real``: the control of the shim the real NVML is loaded through (the real driver);
    FakeNvml's two-GPU box when None."""
    from vramtop.ui.app import VramtopApp

    fake: Any
    fresh = FRESH
    if real is None:
        fake = two_gpu_box()
        source = NvmlSource(nvml=fake, host=HostInfo(holds_gpu=lambda pid: True))
    else:
        fake, source = real, NvmlSource(gpus=["0"])
        fresh = f"/{real_total_mib()} MiB"  # GPU 0's memory line: used/total
    app = VramtopApp(source, interval=interval, deadline=deadline)
    outcomes = []
    async with app.run_test(size=SIZE) as pilot:
        for fault in matrix:
            outcome = Outcome(fault.name)
            outcomes.append(outcome)
            if await _press_until(pilot, outcome, lambda: fresh in screen_text(app), timeout) is None:
                outcome.error = "never fresh before the fault"
                _heal(fake)
                continue
            outcome.keys_ms.clear()
            for step in fault.steps:
                step.act(fake)
                shown = await _press_until(pilot, outcome, lambda s=step: s.shows in screen_text(app), timeout)
                if shown is None:
                    outcome.error = f"{step.shows!r} never shown"
                    break
                text = screen_text(app)
                outcome.shown_s.append(shown)
                outcome.messages.append(next(line.strip() for line in text.splitlines() if step.shows in line))
                outcome.stale_marked.append(STALE in text)
            fault.heal(fake)
            outcome.recovered_s = await _press_until(
                pilot, outcome, lambda: fresh in (t := screen_text(app)) and STALE not in t and " ! " not in t,
                timeout + deadline)
    await asyncio.sleep(0)
    return outcomes


def real_total_mib() -> int:
    """GPU 0's total memory as nvidia-smi prints it (MiB)."""
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}  # nvidia-smi: not through the shim
    out = subprocess.run(["nvidia-smi", "-i", "0", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True, env=env).stdout
    return int(out.strip())


def startup_hangs(deadline: float, real: fault_nvml.ShimControl | None = None) -> list[dict[str, Any]]:
    """A hang in nvmlInit or the device count before the UI exists: the command's open deadline."""
    from vramtop.errors import VramtopError
    from vramtop.sources.poller import open_with_deadline

    rows = []
    for name in ("nvmlInit", "nvmlDeviceGetCount"):
        fake: Any = two_gpu_box() if real is None else real
        fake.release.clear()
        fake.hang_in.add(name)
        started = time.monotonic()
        try:
            source = (NvmlSource(nvml=fake, host=HostInfo(holds_gpu=lambda pid: True)) if real is None
                      else NvmlSource(gpus=["0"]))
            open_with_deadline(source, deadline)
            rows.append({"name": f"hang in {name} at start", "message": None, "exit_code": None, "seconds": None})
        except VramtopError as err:
            rows.append({"name": f"hang in {name} at start", "message": err.message, "exit_code": err.exit_code,
                         "seconds": round(time.monotonic() - started, 3)})
        fake.hang_in.clear()
        fake.release.set()
    return rows


def main(argv: list[str] | None = None) -> int:
    from vramtop.sources.poller import OPEN_DEADLINE_S

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=float, default=0.1, help="the monitor's refresh (s)")
    parser.add_argument("--deadline", type=float, default=5.0, help="the read deadline (s); the app's default is 5")
    parser.add_argument("--open-deadline", type=float, default=OPEN_DEADLINE_S)
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--real", action="store_true",
                        help="the real driver with faults injected beneath pynvml (needs gcc and a GPU)")
    args = parser.parse_args(argv)
    real = None
    if args.real:
        if fault_nvml.CONTROL_ENV not in os.environ:
            return _again_through_the_shim(sys.argv[1:] if argv is None else argv)
        real = fault_nvml.ShimControl(Path(os.environ[fault_nvml.CONTROL_ENV]))
        # The driver's own words for a code exist once the library is loaded: the messages
        # expected on screen (faults() below) are worded as the monitor will word them.
        pynvml.nvmlInit()
    timeout = args.deadline + 5.0
    outcomes = asyncio.run(run_matrix(faults(), interval=args.interval, deadline=args.deadline, timeout=timeout,
                                      real=real))
    starts = startup_hangs(args.open_deadline, real)
    print("| fault | message on screen | stale marked | shown after | keys: p50 / max | recovered after |")
    print("|---|---|---|---:|---:|---:|")
    for o in outcomes:
        keys = f"{statistics.median(o.keys_ms):.1f} / {max(o.keys_ms):.1f} ms" if o.keys_ms else "–"
        shown = " → ".join(f"{s:.2f} s" for s in o.shown_s)
        message = " → ".join(m[:70] for m in o.messages) or o.error
        marked = " → ".join("yes" if m else "no" for m in o.stale_marked)
        recovered = f"{o.recovered_s:.2f} s" if o.recovered_s is not None else "NO"
        print(f"| {o.name} | {message} | {marked} | {shown} | {keys}{'' if o.keys_handled else ' (MISSED)'} | "
              f"{recovered} |")
    for r in starts:
        print(f"| {r['name']} | {r['message']} (exit {r['exit_code']}) | no UI yet | {r['seconds']} s | – | – |")
    every = [k for o in outcomes for k in o.keys_ms]
    print(f"{len(every)} key presses: p50 {statistics.median(every):.1f} ms, max {max(every):.1f} ms")
    if args.json_out:
        args.json_out.write_text(json.dumps({"outcomes": [o.__dict__ for o in outcomes], "startup": starts},
                                            indent=1))
    bad = [o for o in outcomes if o.error or o.recovered_s is None or not o.keys_handled]
    return 1 if bad or any(r["message"] is None for r in starts) else 0


def _again_through_the_shim(argv: list[str]) -> int:
    """Build the shim, then run this script again with the loader finding it first."""
    work = Path(tempfile.mkdtemp(prefix="vramtop-fault-nvml-"))
    library = fault_nvml.build(work / "lib")
    env = fault_nvml.environment(library.parent, work / "faults")
    return subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv], env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
