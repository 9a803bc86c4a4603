"""Layer boundaries, checked the way harlequin does: import a module in a fresh interpreter and
look at what came with it. Needs no torch, no GPU, no driver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ANALYSIS = ["vramtop.analysis." + m for m in ("advice", "bill", "diagnosis", "history", "join", "leak",
                                              "postmortem", "report", "report_postmortems",
                                              "report_processes", "risk", "samples")]


def imported(module: str) -> set[str]:
    code = f"import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(out.stdout))


def top(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_the_agent_imports_only_the_standard_library_and_vramtops_data_modules():
    modules = imported("vramtop.agent")
    assert not top(modules) & {"torch", "textual", "rich", "pynvml", "psutil"}
    ours = {m for m in modules if m.startswith("vramtop")}
    allowed = {"vramtop", "vramtop.codec", "vramtop.model", "vramtop.protocol"}
    assert {m for m in ours if not m.startswith("vramtop.agent")} <= allowed, ours


@pytest.mark.parametrize("module", ["vramtop.model", "vramtop.protocol", *ANALYSIS])
def test_data_and_analysis_import_no_ui_no_driver_no_host_library(module):
    assert not top(imported(module)) & {"textual", "rich", "pynvml", "psutil", "torch"}


@pytest.mark.parametrize("module", ["vramtop.ui.app", "vramtop.ui.replay"])
def test_the_ui_imports_no_driver_and_no_agent_socket_code(module):
    modules = imported(module)
    assert "pynvml" not in top(modules)
    assert not modules & {"vramtop.sources.agent", "vramtop.sources.nvml", "vramtop.agent"}
    # Nor the sinks, the report and the reading of recordings:
    # presentation helpers live in vramtop.units, the join in vramtop.analysis.join.
    assert not {m for m in modules if m.startswith("vramtop.sinks")}
    assert not modules & {"vramtop.analysis.report", "vramtop.recording"}


@pytest.mark.parametrize("module", ["vramtop.export.frame", "vramtop.export.collector", "vramtop.export.server"])
def test_the_exporter_reads_samples_never_the_driver_or_the_ui(module):
    assert not top(imported(module)) & {"textual", "rich", "pynvml", "torch"}


def test_building_the_command_line_loads_no_exporter_library():
    # `vramtop --help` builds every subcommand's parser: prometheus_client waits for `export`.
    code = "import sys, json, vramtop.cli as c; c.build_parser(); print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert "prometheus_client" not in top(set(json.loads(out.stdout)))


@pytest.mark.parametrize("module", ["vramtop.commands.top", "vramtop.commands.once"])
def test_the_monitor_of_this_host_loads_no_reader_of_other_hosts(module):
    # The reader of --remote and --prometheus (urllib's HTTP client, the exporter's parsers) is
    # imported when one is asked for: it is not on the way to this host's first frame.
    modules = imported(module)
    assert not modules & {"urllib.request", "http.client", "vramtop.sources.remote"}


# Opened by keys (help, warnings, a signal's confirmation), drawn once an agent or another host's
# process is selected, computed once a process with the agent is seen (its bill, advice, leak fit)
# or after an OOM (the post-mortem): none is on the way to the first frame of a host without agents.
DEFERRED = {"vramtop.ui.screens", "vramtop.processes", "vramtop.ui.widgets.bill", "vramtop.ui.widgets.remote_detail",
            "vramtop.analysis.postmortem", "vramtop.analysis.oom_place", "vramtop.analysis.diagnosis",
            "vramtop.analysis.advice", "vramtop.analysis.bill", "vramtop.analysis.leak"}

FIRST_FRAME = """
import asyncio, json, sys
from tests.fakes.fake_nvml import two_gpu_box
from vramtop.sources.monitor import MonitorSource
from vramtop.sources.nvml import NvmlSource
from vramtop.ui.app import VramtopApp

nvml = two_gpu_box()
at_first_frame = []
after_first_frame = VramtopApp._after_first_frame

def looking(self):
    at_first_frame.append(sorted(sys.modules))  # the first frame is on screen; the rules come next
    after_first_frame(self)

VramtopApp._after_first_frame = looking
if "--idle" in sys.argv:
    for gpu in nvml.gpus:
        gpu.compute = []

async def first_frame():
    source = MonitorSource(NvmlSource(nvml=nvml), None)
    source.open()
    app = VramtopApp(source, interval=60)
    async with app.run_test(size=(160, 48)) as pilot:
        while app.sample is None:
            await pilot.pause(0.01)
        await pilot.pause()
        drawn = str(app.query_one("#detail").render_line(0).text)
        gpus = app.query_one("#gpus")
        screen = "\\n".join(str(gpus.render_line(y).text) for y in range(gpus.size.height))
    return drawn, screen

drawn, screen = asyncio.run(first_frame())
print(json.dumps({"drawn": drawn, "screen": screen, "modules": sorted(sys.modules),
                  "at_first_frame": at_first_frame[0]}))
"""


# Run right after the first frame (its warnings, a job's ranks): not imported for it.
AFTER_FIRST_FRAME = {"vramtop.analysis.risk", "vramtop.analysis.rules", "vramtop.analysis.jobs",
                     "vramtop.analysis.subjects", "vramtop.analysis.latch", "vramtop.analysis.warning"}


def test_the_live_monitors_start_imports_nothing_its_first_frame_does_not_need():
    # What `vramtop` imports before Textual's, then the UI's (the live command's path).
    modules = imported("vramtop.cli, vramtop.commands.top, textual.app, vramtop.ui.app")
    assert not modules & (DEFERRED | AFTER_FIRST_FRAME), modules & (DEFERRED | AFTER_FIRST_FRAME)
    assert not modules & {"vramtop.analysis.report", "vramtop.recording", "vramtop.ui.replay",
                          "vramtop.commands.record", "vramtop.commands.report"}
    assert "psutil" not in top(modules)  # imported when the first GPU process is met


def first_frame(*args: str) -> dict[str, Any]:
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", FIRST_FRAME, *args], capture_output=True, text=True, check=True,
                         timeout=120, cwd=root, env=env)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_the_first_frame_of_a_host_without_agents_draws_without_the_deferred_modules():
    result = first_frame()
    assert result["drawn"].strip().startswith("PID")  # the selected process's details are on screen
    assert not set(result["modules"]) & DEFERRED, set(result["modules"]) & DEFERRED
    assert not set(result["at_first_frame"]) & AFTER_FIRST_FRAME, set(result["at_first_frame"]) & AFTER_FIRST_FRAME
    assert set(result["modules"]) >= AFTER_FIRST_FRAME  # and the rules did run after it
    # The table's labels and plain cells are Text, not markup: rich's emoji names stay unloaded.
    assert "rich._emoji_codes" not in result["modules"]


def test_the_first_frame_of_idle_gpus_draws_without_psutil():
    # psutil (~6 ms to import) tells who a GPU process is; RAM comes from /proc/meminfo.
    result = first_frame("--idle")
    assert "psutil" not in top(set(result["modules"]))
    assert "/81559 MiB" in result["screen"], result["screen"]  # the GPUs' memory figures are drawn
