"""Property-based fuzzing of everything that reads input vramtop does not control: agent frames
(both directions), the handshake, recordings (through report and replay's analysis), other
hosts' exporter pages (through --once's output), the command line's value parsers and
addresses, and the numbers the agent reads from its environment. Each may refuse its input with
its documented clear error, and nothing else: no other exception, no hang. And one writer:
`--once --json`, whatever the sample holds, prints strict JSON.

CI runs a short version; ``VRAMTOP_FUZZ_EXAMPLES=10000 python -m pytest tests/test_fuzz.py``
runs the published one (bench/RESULTS.md, RELIABILITY).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import struct

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from vramtop.commands.options import bounded  # noqa: E402
from vramtop.commands.record import _duration  # noqa: E402
from vramtop.errors import VramtopError  # noqa: E402
from vramtop.protocol import FRAME_MAX_BYTES, FrameDecoder, ProtocolError, SchemaError, check_hello  # noqa: E402

EXAMPLES = int(os.environ.get("VRAMTOP_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


@FUZZ
@given(st.binary(max_size=4096))
def test_any_bytes_into_the_frame_decoder(data):
    with contextlib.suppress(ProtocolError):
        FrameDecoder(max_bytes=65536).feed(data)


@FUZZ
@given(json_values, st.integers(min_value=0, max_value=2000))
def test_any_json_and_any_nesting_in_a_frame(value, depth):
    payload = ("[" * depth + json.dumps(value) + "]" * depth).encode()
    try:
        for message in FrameDecoder().feed(frame(payload)):
            assert isinstance(message, dict) and isinstance(message["type"], str)
    except ProtocolError:
        pass


@FUZZ
@given(st.integers(min_value=FRAME_MAX_BYTES + 1, max_value=(1 << 32) - 1))
def test_an_oversized_length_is_refused_before_any_allocation(length):
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match="announced"):
        decoder.feed(struct.pack(">I", length) + b"{")
    assert len(decoder._buffer) <= 5


@FUZZ
@given(st.dictionaries(st.sampled_from(["type", "protocol", "role", "vramtop"]), json_values, max_size=4))
def test_any_handshake(message):
    try:
        version = check_hello(message)
        assert isinstance(version, int)
    except ProtocolError:
        pass


@FUZZ
@given(st.text(max_size=40))
def test_value_parsers_refuse_clearly(text):
    for parse in (bounded(0.05, 3600, "seconds"), bounded(0.25, 32), _duration):
        try:
            value = parse(text)
            assert value == value and value != float("inf")  # finite, not NaN
        except argparse.ArgumentTypeError:
            pass
    from vramtop.analysis.thresholds import Thresholds
    from vramtop.commands.options import with_overrides

    for name in ("raise_after", "frag_ratio", "leak_min_growth", "event_hold"):
        with contextlib.suppress(ValueError):
            with_overrides(Thresholds(), [f"{name}={text}"])


RECORD_KINDS = st.sampled_from(["header", "sample", "event", "end", "nonsense"])


@st.composite
def recordings(draw):
    """A header, then records of every type with fields drawn from anything JSON can hold."""
    lines = [json.dumps({"type": "header", "schema": "vramtop.recording", "version": 1,
                         "started": draw(json_values), "interval": draw(json_values)})]
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        kind = draw(RECORD_KINDS)
        record = {"type": kind, "time": draw(json_values)}
        if kind == "sample":
            record["sample"] = draw(st.fixed_dictionaries(
                {"time": json_values, "host": st.fixed_dictionaries(
                    {"hostname": st.text(max_size=5), "memory_total": json_values, "memory_used": json_values}),
                 "gpus": st.lists(st.fixed_dictionaries(
                     {"index": json_values, "uuid": st.text(max_size=5), "name": st.text(max_size=5),
                      "memory_total": json_values, "memory_used": json_values}), max_size=2),
                 "agents": st.lists(json_values, max_size=2)}))
        elif kind == "event":
            record.update(kind=draw(st.sampled_from(["oom", "warning", "command.exited"])), pid=draw(json_values),
                          data=draw(json_values))
        else:
            record["samples"] = draw(json_values)
        try:
            lines.append(json.dumps(record))
        except (TypeError, ValueError):
            lines.append("{broken")
    if draw(st.booleans()):
        lines.append(draw(st.text(max_size=30)))  # a torn or foreign last line
    return "\n".join(lines) + "\n"


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(recordings())
def test_any_recording_through_report_and_replay(tmp_path_factory, text):
    from vramtop.analysis.report import summarize
    from vramtop.analysis.risk import warnings_over
    from vramtop.recording import read_recording
    from vramtop.sinks.report_json import render_json
    from vramtop.sinks.report_svg import render_svg
    from vramtop.sinks.report_text import render_text
    from vramtop.sinks.report_timeline import panels

    path = tmp_path_factory.mktemp("fuzz") / "r.jsonl"
    path.write_text(text)
    try:
        recording = read_recording(path)
    except (SchemaError, VramtopError):
        return
    report = summarize(recording)
    render_text(report)
    json.loads(render_json(report))
    render_svg(panels(recording, report), report)
    warnings_over(recording.samples_with_events())


# -- the `--once --json` encoder ---------------------------------------------------------------
#
# Samples as damaged as the model's types let them be: None wherever a field is optional, integers
# past 64 bits, NaN and infinities in every float, any text, many GPUs, processes and agents.
# (st.builds draws every other field from its type: `float` includes NaN and infinities, `int`
# is unbounded, `str` is any text.) PIDs and UUIDs come from small pools too, so agents join
# NVML rows and the risk rules fire.

def _odd_floats():
    return st.floats(allow_nan=True, allow_infinity=True)


def _pools():
    from vramtop.model import AgentDevice, AgentSample, GpuSample, ProcessSample

    pids = st.integers(min_value=1, max_value=6) | st.integers()
    uuids = st.sampled_from(["GPU-0", "GPU-1", "GPU-2"]) | st.text(max_size=12)
    processes = st.builds(ProcessSample, pid=pids, gpu_uuid=uuids)
    gpus = st.builds(GpuSample, uuid=uuids, processes=st.lists(processes, max_size=40).map(tuple))
    devices = st.builds(AgentDevice, uuid=st.none() | uuids)
    agents = st.builds(AgentSample, pid=pids, host_pid=st.none() | pids,
                       devices=st.lists(devices, max_size=4).map(tuple))
    return gpus, agents


@st.composite
def odd_samples(draw):
    from vramtop.model import AgentEvent, HostSample, Sample

    gpus, agents = _pools()
    return draw(st.builds(Sample, time=_odd_floats(), host=st.builds(HostSample),
                          gpus=st.lists(gpus, max_size=16).map(tuple),
                          agents=st.lists(agents, max_size=12).map(tuple),
                          events=st.lists(st.builds(AgentEvent), max_size=3).map(tuple),
                          stale_since=st.none() | _odd_floats()))


def _refuse_constant(token):
    raise AssertionError(f"{token} in the --once --json output: not JSON")


@FUZZ
@given(odd_samples())
def test_once_json_is_always_strict_json(sample):
    from vramtop.analysis.risk import assess
    from vramtop.sinks.once import render_json, render_text

    warnings = assess(sample)
    text = render_json(sample, warnings)
    doc = json.loads(text, parse_constant=_refuse_constant)  # strict: no NaN, no Infinity
    assert doc["schema"] == "vramtop.sample" and len(doc["gpus"]) == len(sample.gpus)
    assert len(doc["agents"]) == len(sample.agents) and len(doc["warnings"]) == len(warnings)
    render_text(sample, warnings)


@FUZZ
@given(st.text(max_size=30))
@example("node2:²").via("a digit int() does not take")
@example("²").via("a digit int() does not take")
@example("[x").via("an IPv6 host left open: urlsplit raised ValueError")
@example("prom:99999").via("a port past 65535")
def test_addresses_and_environment_numbers_refuse_clearly(text):
    from vramtop.agent._launch import launch_env
    from vramtop.agent._trace import entries_from_env
    from vramtop.commands.options import process_id
    from vramtop.export.server import parse_listen
    from vramtop.sources.prometheus_api import parse_server
    from vramtop.sources.remote import parse_address

    with contextlib.suppress(argparse.ArgumentTypeError):
        assert 0 < process_id(text) < 2**31
    for parse in (parse_listen, parse_address, parse_server):
        with contextlib.suppress(VramtopError):  # "²" passed isdigit() and raised ValueError in int()
            parse(text)
    launch = launch_env({"RANK": text, "LOCAL_RANK": text, "WORLD_SIZE": text, "MASTER_PORT": text}, parent_pid=1)
    assert launch is None or launch.rank is None or launch.rank >= 0
    entries = entries_from_env({"VRAMTOP_AGENT_TRACE": text})
    assert entries is None or entries > 0


PAGE_NAMES = ("vramtop_up", "vramtop_last_sample_timestamp_seconds", "vramtop_gpu_up",
              "vramtop_gpu_memory_total_bytes", "vramtop_gpu_memory_used_bytes", "vramtop_process_gpu_memory_bytes",
              "vramtop_torch_memory_reserved_bytes", "vramtop_torch_fragmentation_ratio", "vramtop_bill_bytes",
              "vramtop_step_peak_bytes", "vramtop_headroom_bytes", "vramtop_step", "vramtop_job_info",
              "vramtop_warning")
PAGE_LABELS = ("gpu", "uuid", "pid", "rank", "hostname", "category", "world_size", "run_id", "master", "kind")
label_values = st.sampled_from(["0", "1", "7", "GPU-a", "", "²", "-1", "x"]) | st.text(max_size=6)
page_values = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(1 << 70), 1 << 70).map(float)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(PAGE_NAMES), st.dictionaries(st.sampled_from(PAGE_LABELS), label_values,
                                                                        max_size=5), page_values), max_size=25))
@example([("vramtop_gpu_memory_total_bytes", {"uuid": "GPU-a", "gpu": "0"}, float("inf"))]).via("+Inf")
@example([("vramtop_process_gpu_memory_bytes", {"uuid": "GPU-a", "pid": "²"}, 1.0),
          ("vramtop_gpu_up", {"uuid": "GPU-a", "gpu": "0"}, 1.0)]).via("a label int() does not take")
def test_any_exporter_page_becomes_gpus_and_agents_that_render(series):
    # What another host's exporter (or a Prometheus server) serves is read, never trusted: its
    # figures and labels may be anything a page can hold, and this host's output must not fail.
    from tests.test_ui import box
    from vramtop.analysis.risk import assess
    from vramtop.sinks.once import render_json, render_text
    from vramtop.sources.prometheus_text import Metric
    from vramtop.sources.remote_page import host_page, merge_pages

    page = host_page([Metric(name, labels, value) for name, labels, value in series], "node2:9400")
    sample = merge_pages(box(), [page])
    warnings = assess(sample)
    json.loads(render_json(sample, warnings), parse_constant=_refuse_constant)
    render_text(sample, warnings)
