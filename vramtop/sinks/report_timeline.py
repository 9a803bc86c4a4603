"""The series the report's picture is drawn from (report_svg.py): per chart, the times, the
bands stacked bottom to top, NVML's lines and the marks (steps, events, warnings) with their
labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vramtop.analysis.bill import bill_now, non_pytorch_of
from vramtop.analysis.join import join
from vramtop.analysis.report import Report
from vramtop.analysis.report_processes import ProcessSummary
from vramtop.analysis.samples import fresh_samples, gpu_used, process_used
from vramtop.model import AgentDevice, AgentSample, Sample
from vramtop.recording import Event, Recording
from vramtop.sinks.report_words import event_label, logged_events

# The bill's categories, bottom to top of the picture; "allocated (not yet attributed)" stands
# for the allocator's allocated bytes while the agent has not counted the tensors yet.
UNATTRIBUTED = "allocated (not yet attributed)"
STACK_ORDER = (
    "parameters (trainable)",
    "parameters (frozen)",
    "gradients",
    "optimizer state",
    "other persistent",
    "activations & temporaries",
    UNATTRIBUTED,
    "allocator cache",
    "non-PyTorch",
)


@dataclass(frozen=True)
class Layer:
    """One band of a stacked area: bytes per point, None where there is no data."""

    name: str
    values: tuple[int | None, ...]


@dataclass(frozen=True)
class Mark:
    time: float
    kind: str  # "step", or an event kind ("command.started", "oom", "warning", ...)
    label: str


@dataclass(frozen=True)
class Panel:
    """One chart: a GPU, and the process whose bill is stacked (None: the GPU's processes)."""

    gpu_index: int
    gpu_uuid: str
    gpu_name: str
    memory_total: int | None
    pid: int | None
    command: str | None
    times: tuple[float, ...]  # sample times
    layers: tuple[Layer, ...]  # bottom to top
    gpu_used: tuple[int | None, ...]  # NVML memory.used of the GPU
    process_used: tuple[int | None, ...] = ()  # NVML per-process figure of ``pid``
    marks: tuple[Mark, ...] = ()
    zoomed: bool = False  # a close-up of part of the recording


def panels(recording: Recording, report: Report) -> list[Panel]:
    """Charts to draw: one per process with an agent, one per GPU that has none."""
    fresh = fresh_samples(recording.samples)
    times = tuple(s.time for s in fresh)
    out: list[Panel] = []
    for gpu in report.gpus:
        gpu_line = tuple(gpu_used(s, gpu.uuid) for s in fresh)
        events = tuple(_event_marks(logged_events(report), gpu.uuid)) + tuple(_warning_marks(report, gpu.index))
        agents = [p for p in report.processes if p.gpu_uuid == gpu.uuid and p.agent is not None]
        for proc in agents:
            layers, process_line, steps = _bill_layers(fresh, proc)
            out.append(Panel(gpu.index, gpu.uuid, gpu.name, gpu.memory_total, proc.pid, proc.command,
                             times, layers, gpu_line, process_line, steps + events))
        if not agents:
            procs = [p for p in report.processes if p.gpu_uuid == gpu.uuid]
            layers = tuple(
                Layer(f"PID {p.pid} {p.command or ''}".strip(),
                      tuple(process_used(s, p.pid, gpu.uuid) for s in fresh))
                for p in procs
            )
            out.append(Panel(gpu.index, gpu.uuid, gpu.name, gpu.memory_total, None, None,
                             times, layers, gpu_line, (), events))
    return out


def agent_device(sample: Sample, pid: int, uuid: str) -> tuple[AgentSample, AgentDevice] | None:
    """The agent of the process NVML lists as ``pid`` (or, without a row, whose agent says so)
    and its figures for GPU ``uuid`` (analysis/join.py)."""
    match = join(sample).of_pid(pid, uuid)
    return (match.agent, match.device) if match is not None else None


def _bill_layers(fresh: list[Sample], proc: ProcessSummary) -> tuple[tuple[Layer, ...], tuple[int | None, ...],
                                                                      tuple[Mark, ...]]:
    columns: dict[str, list[int | None]] = {name: [] for name in STACK_ORDER}
    process_line: list[int | None] = []
    marks: list[Mark] = []
    last_step: int | None = None
    last_ooms: int | None = None
    non_pytorch: int | None = None  # the last consistent figure
    for s in fresh:
        nvml_used = process_used(s, proc.pid, proc.gpu_uuid)
        process_line.append(nvml_used)
        found = agent_device(s, proc.pid, proc.gpu_uuid)
        if found is None:
            for values in columns.values():
                values.append(None)
            continue
        agent, device = found
        if last_step is not None and agent.step > last_step:
            marks.append(Mark(s.time, "step", f"step {agent.step}"))
        last_step = agent.step
        if last_ooms is not None and device.stats.num_ooms > last_ooms:
            marks.append(Mark(s.time, "oom", f"OOM (the allocator's num_ooms rose to {device.stats.num_ooms})"))
        last_ooms = device.stats.num_ooms
        bill = bill_now(device, nvml_used)
        row = dict(bill.categories())
        if bill.activations is None:  # no census yet: allocated, but not split up
            row[UNATTRIBUTED] = bill.allocated
        if non_pytorch_of(device.stats, nvml_used, gpu_used(s, proc.gpu_uuid)) is not None:
            non_pytorch = bill.non_pytorch
        else:  # NVML's per-process figure lags the allocator: non-PyTorch memory barely changes
            row["non-PyTorch"] = non_pytorch
        for name in STACK_ORDER:
            value = row.get(name)
            columns[name].append(0 if value is None else max(0, value))
    layers = tuple(Layer(name, tuple(values)) for name, values in columns.items()
                   if any(v for v in values))
    return layers, tuple(process_line), tuple(marks)


def _event_marks(events: Sequence[Event], uuid: str) -> list[Mark]:
    out = []
    for e in events:
        gpu = e.data.get("gpu_uuid") or e.data.get("uuid")
        if isinstance(gpu, str) and gpu != uuid:
            continue  # an event about another GPU
        out.append(Mark(e.time, e.kind, event_label(e)))
    return out


def _warning_marks(report: Report, gpu_index: int) -> list[Mark]:
    """The warnings the report lists (raised from the samples with the report's thresholds),
    as marks: the picture and the text say the same, whatever the recorder raised live."""
    return [Mark(w.time, "warning", f"warning ({w.level}): {w.title}")
            for w in report.warnings if w.gpu_index in (None, gpu_index)]
