"""The live monitor starts with Python's garbage collector paused and resumes it once its first
frame is on screen (vramtop.ui.collector). Each check runs in a fresh interpreter: the collector's
state (and gc.freeze) is the whole process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120, cwd=ROOT, env=env)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_resume_undoes_only_its_own_pause():
    result = run_python("""
import gc, json
from vramtop.ui import collector
seen = {}
collector.resume()  # nothing paused: nothing frozen
seen["frozen_without_pause"] = gc.get_freeze_count()
collector.pause()
seen["enabled_while_paused"] = gc.isenabled()
collector.resume()
seen["enabled_after"] = gc.isenabled()
seen["frozen_after"] = gc.get_freeze_count()
gc.disable()  # someone else's choice: left alone
collector.resume()
seen["others_left_off"] = not gc.isenabled()
print(json.dumps(seen))
""")
    assert result == {"frozen_without_pause": 0, "enabled_while_paused": False, "enabled_after": True,
                      "frozen_after": result["frozen_after"], "others_left_off": True}
    assert isinstance(result["frozen_after"], int) and result["frozen_after"] > 0


FIRST_FRAME = """
import asyncio, gc, json
from pathlib import Path
import vramtop.ui.app
from tests.fakes.fake_nvml import two_gpu_box
from vramtop.sources.monitor import MonitorSource
from vramtop.sources.nvml import NvmlSource
from vramtop.ui import collector
from vramtop.ui.app import VramtopApp

seen = {}

class Probe(VramtopApp):
    CSS_PATH = Path(vramtop.ui.app.__file__).with_name(VramtopApp.CSS_PATH)  # a class of a script has no file

    def on_mount(self):
        seen["collecting_at_mount"] = gc.isenabled()
        super().on_mount()

async def first_frame():
    source = MonitorSource(NvmlSource(nvml=two_gpu_box()), None)
    source.open()
    app = Probe(source, interval=60)
    async with app.run_test(size=(160, 48)) as pilot:
        while app.sample is None:
            await pilot.pause(0.01)
        await pilot.pause()
        await pilot.pause()
        seen["drawn"] = str(app.query_one("#detail").render_line(0).text)
        seen["collecting_after_first_frame"] = gc.isenabled()
        seen["frozen"] = gc.get_freeze_count()

collector.pause()  # as the live command does before importing Textual
asyncio.run(first_frame())
print(json.dumps(seen))
"""


def test_the_monitor_collects_again_once_its_first_frame_is_drawn():
    result = run_python(FIRST_FRAME)
    assert str(result["drawn"]).strip().startswith("PID")
    assert result["collecting_at_mount"] is False
    assert result["collecting_after_first_frame"] is True
    assert isinstance(result["frozen"], int) and result["frozen"] > 0  # start-up's objects, left out


FAILED_START = """
import argparse, gc, json
from vramtop.commands import top
from vramtop.errors import VramtopError

seen = {}

class NoDriver:
    def open(self):
        seen["collecting_while_starting"] = gc.isenabled()
        raise VramtopError("no NVIDIA driver", 3)
    def read(self): raise AssertionError("never read")
    def close(self): pass

top.need_terminal = lambda what, instead: None
top.monitor_source = lambda gpus: NoDriver()
args = argparse.Namespace(gpu=None, remote=None, prometheus=None, interval=1.0, margin=10.0, threshold=[])
try:
    top.run(args)
except VramtopError as err:
    seen["error"] = err.message
seen["collecting_after"] = gc.isenabled()
print(json.dumps(seen))
"""


def test_a_live_command_that_fails_to_start_collects_again():
    result = run_python(FAILED_START)
    assert result == {"collecting_while_starting": False, "error": "no NVIDIA driver", "collecting_after": True}
