"""``vramtop report``: the summary, its JSON, the page and the picture, on a real recording
(GPT-2 training on an H100) and on synthetic ones (damage, no agent, events, long runs)."""

from __future__ import annotations

import gzip
import json
import math
import statistics
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from vramtop.analysis.postmortem import postmortem_of
from vramtop.analysis.report import summarize
from vramtop.cli import main
from vramtop.errors import EXIT_FAILURE, EXIT_USAGE, VramtopError
from vramtop.model import (
    AgentDevice,
    AgentSample,
    AllocatorStats,
    GpuSample,
    HostSample,
    ProcessSample,
    Sample,
    StepPeak,
    TensorCensus,
)
from vramtop.recording import header_record, read_recording
from vramtop.sinks import report_png
from vramtop.sinks.recorder import Recorder
from vramtop.sinks.report_svg import render_svg
from vramtop.sinks.report_svg_style import CATEGORY_COLOURS
from vramtop.sinks.report_timeline import Layer, Mark, Panel, panels
from vramtop.units import mib

ROOT = Path(__file__).resolve().parent.parent
# A recording made by an older agent (H100, no bill measured at the peak, no step figures in its
# OOM report): the one `vramtop demo` replays. H200 is the screenshots' newer one.
GPT2 = Path(tempfile.mkdtemp(prefix="vramtop-test-")) / "gpt2-training.jsonl"  # plain: some tests edit its bytes
GPT2.write_bytes(gzip.decompress((ROOT / "vramtop" / "demo" / "gpt2-h100.jsonl.gz").read_bytes()))
H200 = ROOT / "screenshots" / "data" / "gpt2-training.jsonl"
MiB = 1 << 20
GiB = 1 << 30
SVG = "{http://www.w3.org/2000/svg}"


def mib_up(n: int) -> int:
    return math.ceil(n / MiB)


def raw_records(path: Path) -> list[dict]:
    """The recording's lines as plain JSON, read without vramtop's reader."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def report_json(capsys, *args: str) -> dict:
    assert main(["report", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# -- the real recording ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2() -> dict:
    """What the raw lines of the real recording say, computed here without vramtop."""
    records = raw_records(GPT2)
    header = records[0]
    samples = [r["sample"] for r in records if r["type"] == "sample"]
    uuid = header["gpus"][0]["uuid"]
    used = [(s["time"], g["memory_used"]) for s in samples for g in s["gpus"] if g["uuid"] == uuid]
    peak = max(u for _, u in used)
    proc_peak = max(p["used_memory"] for s in samples for g in s["gpus"] for p in g["processes"])
    devices = [(s, a, d) for s in samples for a in s["agents"] for d in a["devices"]]
    allocated_peak = max(d["stats"]["allocated_peak"] for _, _, d in devices)
    at_peak = [(s, d) for s, _, d in devices if d["stats"]["allocated_peak"] == allocated_peak]
    durations = {d["last_step"]["step"]: d["last_step"]["duration"] / d["last_step"].get("steps", 1)
                 for _, _, d in devices if d["last_step"]}
    return {
        "header": header,
        "samples": samples,
        "peak_mib": mib_up(peak),
        "peak_offset": next(t for t, u in used if u == peak) - header["started"],
        "average_mib": mib_up(round(statistics.fmean(u for _, u in used))),
        "proc_peak_mib": mib_up(proc_peak),
        "allocated_peak": allocated_peak,
        "at_peak": at_peak,
        "steps": max(a["step"] for _, a, _ in devices),
        "ooms": max(d["stats"]["num_ooms"] for _, _, d in devices),
        "step_time": statistics.median(durations.values()),
        "events": [r for r in records if r["type"] == "event"],
        "end": records[-1] if records[-1]["type"] == "end" else None,
    }


def test_text_report_on_the_real_recording(gpt2, capsys):
    assert main(["report", str(GPT2)]) == 0
    out = capsys.readouterr().out
    header = gpt2["header"]
    assert f"command   {' '.join(header['command'])}" in out
    assert f"host      {header['host']}   driver {header['driver']}" in out
    assert f"{len(gpt2['samples'])} samples every {header['interval']:g} s" in out
    assert f"ended     {gpt2['end']['reason']}" in out
    assert f"memory.used  peak {gpt2['peak_mib']} MiB" in out
    assert f"at +{gpt2['peak_offset']:.1f} s" in out
    assert f"average {gpt2['average_mib']} MiB over {len(gpt2['samples'])} samples" in out
    assert f"{gpt2['proc_peak_mib']} MiB" in out
    assert f"allocated {mib_up(gpt2['allocated_peak'])} MiB" in out
    assert f"steps           {gpt2['steps']} seen, {gpt2['step_time']:.3g} s per step" in out
    assert "command started: " + " ".join(header["command"]) in out
    (exited,) = [e for e in gpt2["events"] if e["kind"] == "command.exited"]
    assert f"command exited with {exited['data']['returncode']}" in out
    assert "none: the file is complete and undamaged" in out
    ooms = gpt2["ooms"]
    assert f"{ooms} OOM{'' if ooms == 1 else 's'}" in out
    assert "Traceback" not in out


def test_the_bill_at_the_peak_adds_up_to_nvml_in_the_same_sample(gpt2, capsys):
    doc = report_json(capsys, str(GPT2))
    (proc,) = [p for p in doc["processes"] if p["agent"]]
    agent = proc["agent"]
    assert agent["peak_allocated"] == gpt2["allocated_peak"]
    bill = agent["bill_at_peak"]
    # The bill comes from a sample showing the highest peak, with the agent's census, whose NVML
    # per-process figure covers what the allocator reserved and fits in the GPU's memory.used
    # (NVML's process list lags memory after a jump).
    sample, device = next((s, d) for s, d in gpt2["at_peak"] if s["time"] == bill["time"])
    (gpu,) = [g for g in sample["gpus"] if g["uuid"] == proc["gpu_uuid"]]
    (row,) = [p for p in gpu["processes"] if p["pid"] == proc["pid"]]
    stats, census = device["stats"], device["census"]
    assert census is not None
    assert stats["reserved"] <= row["used_memory"] <= gpu["memory_used"]
    assert bill["nvml_used"] == row["used_memory"]
    non_pytorch = row["used_memory"] - stats["reserved"]
    assert bill["total"] == stats["reserved_peak"] + non_pytorch
    categories = bill["categories"]
    assert sum(categories.values()) == bill["total"]
    assert categories["parameters (trainable)"] == census["parameters_trainable"]
    assert categories["gradients"] == census["gradients_peak"]
    assert categories["optimizer state"] == census["optimizer_state"]
    assert categories["allocator cache"] == stats["reserved_peak"] - stats["allocated_peak"]
    assert categories["non-PyTorch"] == non_pytorch
    assert bill["allocated"] == gpt2["allocated_peak"]
    # No earlier sample with the same peak qualified.
    for s, d in gpt2["at_peak"]:
        if s["time"] >= bill["time"]:
            break
        rows = [p["used_memory"] for g in s["gpus"] for p in g["processes"] if p["pid"] == proc["pid"]]
        used = next(g["memory_used"] for g in s["gpus"] if g["uuid"] == proc["gpu_uuid"])
        assert d["census"] is None or not rows or not d["stats"]["reserved"] <= rows[0] <= used


def test_json_report_schema_and_numbers(gpt2, capsys):
    doc = report_json(capsys, str(GPT2))
    assert doc["schema"] == "vramtop.report" and doc["version"] == 1
    assert set(doc) >= {"run", "gpus", "processes", "events", "problems", "file", "compressed"}
    run = doc["run"]
    assert run["samples"] == len(gpt2["samples"]) and run["writer_died"] is False
    assert run["end_reason"] == gpt2["end"]["reason"] and run["command"] == gpt2["header"]["command"]
    assert run["started"] == gpt2["header"]["started"]
    assert run["duration"] == pytest.approx(gpt2["end"]["time"] - gpt2["header"]["started"])
    (gpu,) = doc["gpus"]
    assert gpu["peak_used_mib"] == gpt2["peak_mib"] and gpu["average_used_mib"] == gpt2["average_mib"]
    assert gpu["peak_offset"] == pytest.approx(gpt2["peak_offset"])
    assert [e["kind"] for e in doc["events"]] == [e["kind"] for e in gpt2["events"]]
    assert doc["problems"] == []
    agent = next(p["agent"] for p in doc["processes"] if p["agent"])
    assert agent["steps"] == gpt2["steps"] and agent["step_time"] == pytest.approx(gpt2["step_time"])


def test_a_truncated_copy_reports_up_to_the_damage(gpt2, tmp_path, capsys):
    data = GPT2.read_bytes()
    cut = len(data) * 3 // 4
    assert data[cut - 1:cut] != b"\n"
    path = tmp_path / "cut.jsonl"
    path.write_bytes(data[:cut])
    whole_lines = data[:cut].split(b"\n")[:-1]
    expected = sum(1 for line in whole_lines if json.loads(line)["type"] == "sample")

    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{expected} samples" in out
    assert "no end record: the writer died" in out
    problems = out.split("PROBLEMS\n", 1)[1]
    assert f"line {len(whole_lines) + 1}: the last line is cut off" in problems
    assert "Traceback" not in out

    doc = report_json(capsys, str(path))
    assert doc["run"]["writer_died"] is True and doc["run"]["samples"] == expected
    assert any("cut off" in p for p in doc["problems"])


def test_a_corrupt_line_in_the_middle_is_named_and_skipped(tmp_path, capsys):
    lines = GPT2.read_bytes().split(b"\n")
    lines[10] = b'{"type":"sample","sample":{"time": oops'
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines))
    doc = report_json(capsys, str(path))
    assert "line 11: not a JSON line: skipped" in doc["problems"]
    assert doc["run"]["writer_died"] is False


def test_a_gzip_copy_gives_the_same_report(tmp_path, capsys):
    path = tmp_path / "gpt2.jsonl.gz"
    path.write_bytes(gzip.compress(GPT2.read_bytes()))
    plain, packed = report_json(capsys, str(GPT2)), report_json(capsys, str(path))
    assert packed["compressed"] is True and plain["compressed"] is False
    for key in ("run", "gpus", "processes", "events", "problems"):
        assert packed[key] == plain[key]
    assert main(["report", str(path)]) == 0
    assert "(compressed)" in capsys.readouterr().out.splitlines()[0]


def test_a_newer_schema_is_refused_with_one_line(tmp_path, capsys):
    lines = GPT2.read_text().splitlines(keepends=True)
    header = json.loads(lines[0])
    header["version"] = 99
    path = tmp_path / "new.jsonl"
    path.write_text(json.dumps(header) + "\n" + "".join(lines[1:]))
    assert main(["report", str(path)]) == EXIT_FAILURE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "version 99" in captured.err and "upgrade vramtop" in captured.err


def test_not_a_recording_and_missing_files_fail_with_one_line(tmp_path, capsys):
    other = tmp_path / "other.jsonl"
    other.write_text('{"type":"header","schema":"something.else","version":1}\n')
    for path in (other, tmp_path / "missing.jsonl"):
        assert main(["report", str(path)]) == EXIT_FAILURE
        err = capsys.readouterr().err
        assert err.startswith("vramtop: ") and err.count("\n") == 1 and "Traceback" not in err


def test_an_empty_file_reports_that_it_is_empty(tmp_path, capsys):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    assert main(["report", str(path), "--html", str(tmp_path / "e.html")]) == 0
    out = capsys.readouterr().out
    assert "0 samples" in out and "empty recording: no header" in out
    assert "<svg" in (tmp_path / "e.html").read_text()


# -- synthetic recordings -------------------------------------------------------------------

T0 = 1_800_000_000.0


def gpu(index: int, used: int, processes: tuple[ProcessSample, ...] = ()) -> GpuSample:
    return GpuSample(index=index, uuid=f"GPU-{index}", name="Test GPU", memory_total=40 * GiB,
                     memory_used=used, processes=processes)


def agent_sample(t: float, step: int, allocated: int, reserved: int, *, peak: int,
                 census: bool = True) -> AgentSample:
    stats = AllocatorStats(allocated=allocated, reserved=reserved, active=allocated, requested=allocated,
                           inactive_split=0, allocated_peak=peak, reserved_peak=reserved,
                           num_alloc_retries=0, num_ooms=0)
    device = AgentDevice(
        index=0, uuid="GPU-0", name="Test GPU", stats=stats,
        census=TensorCensus(parameters_trainable=2 * GiB, parameters_frozen=0, gradients=2 * GiB,
                            optimizer_state=4 * GiB, time=t, seen="1 optimizer", gradients_peak=2 * GiB)
        if census else None,
        last_step=StepPeak(step=step, duration=0.5, peak_allocated=peak, peak_reserved=reserved,
                           persistent=9 * GiB, exact=True) if step else None,
    )
    return AgentSample(pid=100, time=t, torch_version="2.13.0", devices=(device,), step=step)


def write(path: Path, samples: list[Sample], events: list[tuple[float, str, dict]] = (), *,
          close: bool = True) -> Path:
    recorder = Recorder(path, header_record(samples[0], interval=1.0, command=["python", "train.py"]))
    pending = sorted(events)
    for sample in samples:
        while pending and pending[0][0] <= sample.time:
            t, kind, data = pending.pop(0)
            recorder.write_event(kind, data, pid=100, time=t)
        recorder.write_sample(sample)
    for t, kind, data in pending:
        recorder.write_event(kind, data, pid=100, time=t)
    if close:
        recorder.close("command exited with 1")
    return path


def training(n: int = 12) -> list[Sample]:
    """Process 100 with the agent on GPU 0 (a census from the third sample), 200 without on GPU 1."""
    out = []
    for i in range(n):
        t = T0 + i
        allocated = (10 + i % 3) * GiB
        reserved = 16 * GiB
        nvml = reserved + 512 * MiB
        agents = (agent_sample(t, i, allocated, reserved, peak=(12 + i // 4) * GiB, census=i >= 2),) if i else ()
        procs0 = (ProcessSample(100, "GPU-0", nvml, "C", command="python train.py"),) if i else ()
        procs1 = (ProcessSample(200, "GPU-1", (3 + i) * GiB, "C", command="python serve.py"),)
        out.append(Sample(time=t, host=HostSample("box", 64 * GiB, 8 * GiB), driver_version="580.1",
                          gpus=(gpu(0, nvml + 300 * MiB if i else 300 * MiB, procs0),
                                gpu(1, (3 + i) * GiB + 300 * MiB, procs1)),
                          agents=agents))
    return out


def test_a_recording_without_agents(tmp_path, capsys):
    samples = [Sample(time=T0 + i, host=HostSample("box", 64 * GiB, 8 * GiB),
                      gpus=(gpu(0, (1 + i) * GiB, (ProcessSample(7, "GPU-0", i * GiB, "C", command="python a.py"),)),))
               for i in range(5)]
    path = write(tmp_path / "plain.jsonl", samples)
    assert main(["report", str(path), "--html", str(tmp_path / "p.html")]) == 0
    out = capsys.readouterr().out
    assert "memory.used  peak 5120 MiB (12.5%) at +4.0 s   average 3072 MiB over 5 samples" in out
    assert "agent (torch" not in out and "bill at the peak" not in out
    assert "python a.py" in out
    rec = read_recording(path)
    (panel,) = panels(rec, summarize(rec))
    assert panel.pid is None and [layer.name for layer in panel.layers] == ["PID 7 python a.py"]
    assert "PID 7 python a.py" in (tmp_path / "p.html").read_text()


def test_events_warnings_and_ooms_are_listed_and_drawn(tmp_path, capsys):
    events = [
        (T0 + 0.1, "command.started", {"argv": ["python", "train.py"]}),
        (T0 + 5.5, "warning", {"level": "high", "message": "persistent memory grows", "gpu_uuid": "GPU-0"}),
        # As an agent writes it: the whole report (a partial one is damage, dropped by the rules).
        (T0 + 9.5, "oom", {"time": T0 + 9.5, "device": 0, "requested": 2 * GiB, "device_limit": 80 * GiB,
                           "device_free": 512 * MiB, "allocated": 70 * GiB, "reserved": 72 * GiB, "step": 3,
                           "phase": "forward", "gpu_uuid": "GPU-0"}),
        (T0 + 12, "command.exited", {"returncode": 1}),
    ]
    path = write(tmp_path / "ev.jsonl", training(), events)
    assert main(["report", str(path), "--html", str(tmp_path / "ev.html")]) == 0
    out = capsys.readouterr().out
    # The recorder's warning event stays in the file and the JSON; the text lists warnings in full
    # in WARNINGS (raised again from the samples), not twice.
    assert "warning (high): persistent memory grows" not in out.split("EVENTS")[1]
    assert main(["report", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert any(e["kind"] == "warning" and e["data"]["message"] == "persistent memory grows" for e in doc["events"])
    assert "+9.5 s  OOM, requested 2048 MiB, device free 512 MiB  (PID 100)" in out
    assert "command exited with 1" in out
    rec = read_recording(path)
    charts = panels(rec, summarize(rec))
    gpu0 = next(p for p in charts if p.gpu_uuid == "GPU-0")
    gpu1 = next(p for p in charts if p.gpu_uuid == "GPU-1")
    assert {m.kind for m in gpu0.marks} >= {"warning", "oom", "step", "command.started"}
    assert not {"warning", "oom"} & {m.kind for m in gpu1.marks}  # they were about GPU 0
    page = (tmp_path / "ev.html").read_text()
    assert "OOM, requested 2048 MiB" in page and "<h2>Warnings</h2>" in page


def test_a_post_mortem_says_where_in_text_json_and_html(tmp_path, capsys):
    oom = {"time": T0 + 9.5, "device": 0, "requested": 2 * GiB, "device_limit": 80 * GiB, "device_free": 512 * MiB,
           "allocated": 70 * GiB, "reserved": 72 * GiB, "step": 3, "phase": "backward",
           "module": "model.layers.1.mlp.up", "module_class": "Linear", "module_near": True,
           "autograd_node": "MmBackward0",
           "frames": [{"file": "/home/me/train.py", "line": 42, "function": "step", "library": False},
                      {"file": "/home/me/train.py", "line": 90, "function": "main", "library": False}]}
    path = write(tmp_path / "where.jsonl", training(), [(T0 + 9.5, "oom", oom)])
    assert main(["report", str(path), "--html", str(tmp_path / "where.html")]) == 0
    out = capsys.readouterr().out
    place = "backward near model.layers.1.mlp.up (Linear; running MmBackward0) at train.py:42 in step()"
    assert f"OOM at step 3 in {place}, on cuda:0" in out
    assert "Stack, innermost first: train.py:42 in step() ← train.py:90 in main()." in out
    assert place in (tmp_path / "where.html").read_text()
    (pm,) = report_json(capsys, str(path))["postmortems"]
    assert pm["where"] == place and pm["oom"]["frames"][0]["line"] == 42


def test_the_agent_chart_stacks_the_bill_in_the_tui_colours(tmp_path):
    path = write(tmp_path / "t.jsonl", training())
    rec = read_recording(path)
    report = summarize(rec)
    gpu0 = next(p for p in panels(rec, report) if p.gpu_uuid == "GPU-0")
    assert gpu0.pid == 100
    names = [layer.name for layer in gpu0.layers]
    assert names == ["parameters (trainable)", "gradients", "optimizer state", "other persistent",
                     "activations & temporaries", "allocated (not yet attributed)", "allocator cache",
                     "non-PyTorch"]
    # With a census, the bands add up to NVML's per-process figure at every sample.
    for i in range(2, len(gpu0.times)):
        assert sum(layer.values[i] for layer in gpu0.layers) == gpu0.process_used[i]
    assert gpu0.layers[0].values[0] is None  # no agent yet: a gap, not zeros
    svg = render_svg(panels(rec, report), report)
    ET.fromstring(svg)  # well-formed XML
    for name in names:
        assert f'fill="{CATEGORY_COLOURS[name]}"' in svg
    assert "memory (GiB)" in svg and "time since the start of the recording (s)" in svg
    assert "memory.total 40960 MiB" in svg


def ceiling_label_anchors(svg: str) -> list[str]:
    """The anchor of each chart's memory.total label, top chart first."""
    return [e.get("text-anchor", "") for e in ET.fromstring(svg).iter(f"{SVG}text")
            if (e.text or "").startswith("memory.total ")]


def test_the_ceiling_label_sits_at_the_end_the_data_leaves_clear(tmp_path):
    # The demo run climbs to the ceiling at its end: the label goes to the left.
    rec = read_recording(GPT2)
    report = summarize(rec)
    assert ceiling_label_anchors(render_svg(panels(rec, report), report)) == ["start"]
    # A run that starts near the ceiling and then settles: the label goes to the right.
    samples = training()
    samples[:3] = [replace(s, gpus=(replace(s.gpus[0], memory_used=39 * GiB), s.gpus[1])) for s in samples[:3]]
    path = write(tmp_path / "high-first.jsonl", samples)
    rec = read_recording(path)
    report = summarize(rec)
    assert ceiling_label_anchors(render_svg(panels(rec, report), report))[0] == "end"  # GPU 0's chart


def test_every_tui_category_has_a_colour():
    from vramtop.ui.widgets.bill import CATEGORY_STYLES

    assert set(CATEGORY_STYLES) <= set(CATEGORY_COLOURS)


def test_stale_samples_are_left_out_of_peaks_and_named(tmp_path, capsys):
    samples = training(6)
    stale = Sample(time=T0 + 6, host=samples[0].host, gpus=(gpu(0, 39 * GiB), gpu(1, 0)),
                   error="NVML has not answered for 5 s", stale_since=T0 + 5)
    path = write(tmp_path / "s.jsonl", [*samples, stale])
    doc = report_json(capsys, str(path))
    assert doc["run"]["stale_samples"] == 1
    assert doc["gpus"][0]["peak_used"] < 39 * GiB
    assert any("1 of 7 samples are stale" in p for p in doc["problems"])


def test_ooms_counted_by_the_allocator_are_dated_and_drawn(tmp_path, capsys):
    samples = training(8)
    oom_at = 5
    for i in range(oom_at, len(samples)):
        (agent,) = samples[i].agents
        (device,) = agent.devices
        stats = replace(device.stats, num_ooms=1)
        samples[i] = replace(samples[i], agents=(replace(agent, devices=(replace(device, stats=stats),)),))
    path = write(tmp_path / "oom.jsonl", samples)
    assert main(["report", str(path)]) == 0
    assert f"1 OOM (seen at +{oom_at:.1f} s)" in capsys.readouterr().out
    rec = read_recording(path)
    gpu0 = next(p for p in panels(rec, summarize(rec)) if p.gpu_uuid == "GPU-0")
    assert [m.time for m in gpu0.marks if m.kind == "oom"] == [T0 + oom_at]


def test_a_lagging_process_list_does_not_draw_fake_non_pytorch_memory(tmp_path):
    samples = training(6)
    # The program freed its cache; NVML's process list still shows the old figure, more than
    # the whole GPU now uses.
    last = samples[-1]
    (agent,) = last.agents
    (device,) = agent.devices
    freed = replace(device, stats=replace(device.stats, allocated=2 * GiB, reserved=3 * GiB))
    gpus = (replace(last.gpus[0], memory_used=4 * GiB), last.gpus[1])
    samples[-1] = replace(last, gpus=gpus, agents=(replace(agent, devices=(freed,)),))
    rec = read_recording(write(tmp_path / "lag.jsonl", samples))
    gpu0 = next(p for p in panels(rec, summarize(rec)) if p.gpu_uuid == "GPU-0")
    non_pytorch = next(layer for layer in gpu0.layers if layer.name == "non-PyTorch").values
    assert non_pytorch[-1] == non_pytorch[-2] == 512 * MiB  # the last consistent figure


@pytest.mark.parametrize(("rows", "why"), [
    ("none", "NVML gave no per-process figure for this process"),
    ("lagging", "NVML's per-process figure was older than the allocator's at the peak"),
])
def test_a_bill_at_the_peak_without_a_consistent_nvml_figure_says_why(tmp_path, capsys, rows, why):
    samples = []
    for s in training():
        # No row for the agent's process, or one smaller than what its allocator reserved.
        procs = () if rows == "none" else tuple(replace(p, used_memory=GiB) for p in s.gpus[0].processes)
        samples.append(replace(s, gpus=(replace(s.gpus[0], processes=procs), s.gpus[1])))
    path = write(tmp_path / f"{rows}.jsonl", samples)
    doc = report_json(capsys, str(path))
    (agent,) = [p["agent"] for p in doc["processes"] if p["agent"]]
    bill = agent["bill_at_peak"]
    assert bill["note"].startswith(why) and bill["total"] is None and bill["categories"]["non-PyTorch"] is None
    assert main(["report", str(path)]) == 0
    assert f"note: {why}" in capsys.readouterr().out


def test_sample_errors_and_unknown_records_are_named_as_problems(tmp_path, capsys):
    samples = training(4)
    samples[2] = replace(samples[2], error="NVML: GPU is lost")
    path = write(tmp_path / "e.jsonl", samples)
    with path.open("a") as f:
        f.write('{"type":"marker","time":1800000100.0}\n')
    doc = report_json(capsys, str(path))
    assert doc["problems"] == ["1 samples carry an error, e.g. NVML: GPU is lost",
                               "1 record of an unknown type ignored (from a newer vramtop, or not vramtop's)"]


def test_gpu_selection(tmp_path, capsys):
    path = write(tmp_path / "t.jsonl", training())
    doc = report_json(capsys, str(path), "--gpu", "1")
    assert [g["index"] for g in doc["gpus"]] == [1]
    assert [p["pid"] for p in doc["processes"]] == [200]


def test_a_single_sample_still_gets_a_readable_time_axis(tmp_path):
    rec = read_recording(write(tmp_path / "one.jsonl", training(1), close=False))
    report = summarize(rec)
    root = ET.fromstring(render_svg(panels(rec, report), report))
    ticks = [t.text for t in root.iter(f"{SVG}text") if t.get("text-anchor") == "middle"]
    assert "0.5" in ticks and "1" in ticks


def test_a_long_recording_is_thinned_to_the_picture_width():
    n = 20_000
    times = tuple(T0 + i for i in range(n))
    wave = tuple((5 + (i % 7)) * GiB for i in range(n))
    panel = Panel(0, "GPU-0", "Test GPU", 40 * GiB, 100, "python train.py", times,
                  (Layer("activations & temporaries", wave), Layer("allocator cache", (GiB,) * n)),
                  wave, wave, (Mark(T0 + 10, "oom", "OOM"),))
    report = summarize(read_recording_stub())
    svg = render_svg([panel], report)
    assert len(svg) < 300_000
    root = ET.fromstring(svg)
    polygons = [poly.get("points", "").split() for poly in root.iter(f"{SVG}polygon")]
    assert polygons and all(len(points) <= 2 * 1000 for points in polygons)
    # Each pixel column keeps its highest sample: the 12 GiB peaks are still drawn. The y axis's
    # labels say where 0 and 10 GiB are.
    labels = {t.text: float(t.get("y")) - 4 for t in root.iter(f"{SVG}text") if t.get("text-anchor") == "end"}
    per_gib = (labels["0"] - labels["10"]) / 10
    top = min(float(point.split(",")[1]) for points in polygons for point in points)
    assert (labels["0"] - top) / per_gib == pytest.approx(12, abs=0.05)


def read_recording_stub():
    from vramtop.recording import Recording

    return Recording(path="x.jsonl", header=None, samples=(), events=(), end=None, problems=())


# -- the page and the picture ---------------------------------------------------------------


def test_the_html_page_is_self_contained(tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(GPT2), "--html", str(out)]) == 0
    assert f"vramtop: wrote {out}" in capsys.readouterr().err
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "</svg>" in page
    lowered = page.lower()
    assert "http://" not in lowered and "https://" not in lowered
    for outside in ("<script", "<link", "<img", "src=", "@import", "url(http"):
        assert outside not in lowered
    assert "peak memory.used" in page and "bill at the allocator" in page.lower()


def test_the_real_runs_warnings_and_post_mortem_are_listed(capsys):
    # The H100 run leaks 32 MiB a step, has a fragmented cache (that harms nothing: no warning)
    # and ends in a caught OOM.
    assert main(["report", str(GPT2)]) == 0
    out = capsys.readouterr().out
    warnings = out.split("\nWARNINGS")[1].split("\nPOST-MORTEM")[0]
    assert "CRITICAL GPU 0: persistent memory of PID" in warnings and "grows 32 MiB/step" in warnings
    assert "fragmented allocator cache" not in warnings and "out of memory in PID" in warnings
    assert "Bill at the failure:" in out
    # Diagnosis first: the leak ate 8.4 GiB (more than the OOM was short), then the 8x evaluation
    # batch; a lever on the batch is not the first thing to say.
    assert "A leak: memory still allocated after each step grew by 8.4 GiB from step 4" in out
    assert "Also: A spike" in out and "First thing to do (leak)" in out and "First thing to try" not in out
    # The recorder raised the same kinds of warning live, with the same rules (this file was
    # recorded before a fragmented cache needed evidence of harm to be a warning).
    rec = read_recording(GPT2)
    live = {e.data["kind"] for e in rec.events if e.kind == "warning"}
    assert live - {"fragmentation"} == {w.kind for w in summarize(rec).warnings}
    # The post-mortem's bill is the allocator's state at the failure, to the byte.
    (pm,) = summarize(rec).postmortems
    bill = postmortem_of(pm.oom).bill
    assert bill is not None and bill.allocated == pm.oom.allocated and bill.reserved == pm.oom.reserved
    counted = (bill.parameters_trainable, bill.parameters_frozen, bill.gradients, bill.optimizer_state,
               bill.other_persistent, bill.activations)
    assert sum(counted) == pm.oom.allocated and bill.cache == pm.oom.reserved - pm.oom.allocated
    assert pm.oom.phase == "forward" and pm.oom.requested == 1536 << 20
    # Recorded before the agent said where: nothing about it, and the first line as it was.
    assert pm.oom.module is None and pm.oom.frames == () and pm.oom.trace_path is None
    assert pm.lines[0].startswith("OOM at step") and " in forward on cuda:0" in pm.lines[0]


def test_thresholds_from_the_command_line_change_the_reports_warnings(capsys):
    assert main(["report", str(GPT2), "--threshold", "leak_min_growth=64GiB"]) == 0
    warnings = capsys.readouterr().out.split("\nWARNINGS")[1].split("\nPOST-MORTEM")[0]
    assert "persistent memory of PID" not in warnings and "out of memory in PID" in warnings
    assert main(["report", str(GPT2), "--threshold", "frag_ratio=lots"]) == EXIT_USAGE
    assert "--threshold: 'frag_ratio=lots': frag_ratio takes a number" in capsys.readouterr().err


def test_the_svg_alone_is_well_formed_with_axes_and_legend():
    rec = read_recording(GPT2)
    report = summarize(rec)
    svg = render_svg(panels(rec, report), report)
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    for text in ("memory (GiB)", "GPU memory.used (NVML)", "memory.total", "steps",
                 "activations &amp; temporaries (derived)"):
        assert text in svg


def test_the_picture_zooms_on_the_agent_when_it_ran_for_a_small_part_of_the_recording():
    # The recorder ran on for ten minutes after the training process ended.
    rec = read_recording(GPT2)
    last = rec.samples[-1]
    tail = tuple(replace(last, time=last.time + 10 * k, agents=(), gpus=tuple(
        replace(g, processes=()) for g in last.gpus)) for k in range(1, 61))
    rec = replace(rec, samples=rec.samples + tail, end=None)
    report = summarize(rec)
    svg = render_svg(panels(rec, report), report)
    assert "zoomed to" in svg
    plain = read_recording(GPT2)
    assert "zoomed to" not in render_svg(panels(plain, summarize(plain)), summarize(plain))


def test_png_works_out_of_the_box_and_is_the_svgs_picture(tmp_path, capsys):
    # resvg-py is a dependency: no converter program, no system library.
    png, svg = tmp_path / "r.png", tmp_path / "r.svg"
    assert main(["report", str(GPT2), "--png", str(png), "--svg", str(svg)]) == 0
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    root = ET.fromstring(svg.read_text())
    assert (width, height) == (2 * int(float(root.get("width"))), 2 * int(float(root.get("height"))))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.png", "r.svg"]  # no temporary file left


def test_png_without_any_rasteriser_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    for module in ("resvg_py", "cairosvg"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails
    monkeypatch.setattr(report_png.shutil, "which", lambda name: None)
    png = tmp_path / "r.png"
    assert main(["report", str(GPT2), "--png", str(png)]) == EXIT_FAILURE
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "resvg-py" in captured.err and "--svg and --html" in captured.err
    assert "POST-MORTEM" in captured.out  # the text report came first
    assert not png.exists()
    with pytest.raises(VramtopError):
        report_png.svg_to_png("<svg/>")


@pytest.mark.skipif(report_png.shutil.which("rsvg-convert") is None, reason="rsvg-convert not installed")
def test_png_with_rsvg_convert_where_resvg_has_no_wheel(tmp_path, monkeypatch, capsys):
    for module in ("resvg_py", "cairosvg"):
        monkeypatch.setitem(sys.modules, module, None)
    png = tmp_path / "r.png"
    assert main(["report", str(GPT2), "--png", str(png)]) == 0
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and int.from_bytes(data[16:20], "big") == 2000


@pytest.mark.parametrize("suffix", ["", ".xz", ".gz"])
def test_the_documented_pandas_recipe_reads_the_real_recording(tmp_path, suffix):
    """docs/report.md's pandas lines, on the H100 recording, plain and compressed."""
    pd = pytest.importorskip("pandas")
    import lzma

    path = tmp_path / f"run.jsonl{suffix}"
    data = GPT2.read_bytes()
    path.write_bytes(lzma.compress(data) if suffix == ".xz" else gzip.compress(data) if suffix == ".gz" else data)
    df = pd.read_json(path, lines=True)
    samples = df.loc[df["type"] == "sample", "sample"].tolist()
    rec = read_recording(GPT2)
    assert len(samples) == len(rec.samples)
    gpus = pd.json_normalize(samples, record_path="gpus", meta=["time"], meta_prefix="sample.")
    peak_mib = int(-(-gpus.groupby("index")["memory_used"].max() // 2**20).iloc[0])
    assert peak_mib == mib(summarize(rec).gpus[0].peak_used)
    agents = pd.json_normalize(samples, record_path=["agents", "devices"], meta=["time"], meta_prefix="sample.")
    assert agents["stats.allocated"].max() == max(d.stats.allocated for s in rec.samples for a in s.agents
                                                  for d in a.devices)
    events = df.loc[df["type"] == "event", ["time", "kind", "pid", "data"]]
    assert list(events["kind"]) == [e.kind for e in rec.events]


def test_a_recording_with_the_measured_bill_reports_its_phase_and_its_spike(capsys):
    # H200, GPT-2 small leaking 32 MiB a step, then an evaluation at 8x the batch: the OOM is a
    # spike (4.6x the steps' peak) and the leak, smaller than what was missing, comes after it.
    rec = read_recording(H200)
    (pm,) = summarize(rec).postmortems
    assert pm.lines[1].startswith("A spike: this request would have taken allocated memory to 150 GiB, 4.6x")
    assert pm.lines[2].startswith("Also: A leak") and "less than the 13.4 GiB missing" in pm.lines[2]
    assert any(line.startswith("First thing to do (spike)") for line in pm.lines)
    peaks = [d.peak for s in rec.samples for a in s.agents for d in a.devices if d.peak is not None]
    assert peaks and all(p.measured or p.basis_step for p in peaks)
    assert {p.phase for p in peaks} == {"backward"} and peaks[-1].gradients == 0


def test_the_picture_and_the_text_list_the_same_warnings_whatever_the_thresholds(tmp_path, capsys):
    # One warnings policy: report raises the warnings again from the samples with its own
    # --threshold and both the text and the picture show those (the picture once drew the
    # recorder's live warnings, so a changed threshold made them disagree).
    for extra, leak in (([], True), (["--threshold", "leak_min_growth=64GiB"], False)):
        svg_path = tmp_path / f"{leak}.svg"
        assert main(["report", str(GPT2), "--svg", str(svg_path), *extra]) == 0
        text = capsys.readouterr().out.split("\nWARNINGS")[1].split("\nPOST-MORTEM")[0]
        svg = svg_path.read_text()
        assert ("persistent memory of PID" in text) is leak
        assert ("persistent memory of PID" in svg or "persistent m" in svg) is leak
        assert "out of memory in PID" in text and "out of memory in PID" in svg
