"""Layer boundaries, checked the way harlequin does: import a module in a fresh interpreter and
look at what came with it. Needs no torch, no GPU, no driver."""

from __future__ import annotations

import json
import subprocess
import sys

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
