"""One host's exporter page (docs/exporter.md, the reference for every name and label read here)
turned into what the monitor shows: that host's GPUs and process rows, and its processes with the
agent as read-only figures (``AgentSample.remote``). Shared by ``--remote`` (the page itself) and
``--prometheus`` (the same series, from a Prometheus server's API).

The exporter's torch series are labelled {gpu, pid, rank} (the GPU's NVML index on that host, its
host PID), ``vramtop_step`` {pid, rank}, ``vramtop_warning`` {kind, level, gpu, pid} and
``vramtop_job_info`` {pid, rank, world_size, run_id, master}.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from vramtop.model import AgentSample, GpuSample, Launch, ProcessSample, RemoteDevice, RemoteFigures, Sample
from vramtop.sources.prometheus_text import Metric

OLD_AFTER_S = 60.0  # a host's last sample older than this is said (Prometheus serves the last for 5 min)
GPU_FIELDS = {"total": "memory_total", "used": "memory_used", "free": "memory_free", "reserved": "memory_reserved"}
# vramtop_torch_* and friends, labelled {gpu, pid, rank}: the RemoteDevice field each fills.
TORCH_FIELDS = {
    "vramtop_torch_memory_allocated_bytes": "allocated",
    "vramtop_torch_memory_reserved_bytes": "reserved",
    "vramtop_torch_memory_requested_bytes": "requested",
    "vramtop_torch_fragmentation_ratio": "fragmentation",
    "vramtop_torch_largest_free_block_bytes": "largest_free_block",
    "vramtop_torch_alloc_retries_total": "alloc_retries",
    "vramtop_torch_ooms_total": "ooms",
    "vramtop_headroom_bytes": "headroom",
    "vramtop_step_peak_bytes": "step_peak",
}


@dataclass(frozen=True)
class HostPage:
    """What one host's exporter says."""

    host: str
    gpus: tuple[GpuSample, ...]
    agents: tuple[AgentSample, ...]
    up: bool  # vramtop_up: False when that host's NVML did not answer (its figures are old)
    as_of: float | None  # vramtop_last_sample_timestamp_seconds


@dataclass
class _Series:
    """The page's series by name."""

    by_name: dict[str, list[Metric]] = field(default_factory=dict)

    def named(self, name: str) -> list[Metric]:
        return self.by_name.get(name, [])


def host_page(metrics: Iterable[Metric], fallback_host: str) -> HostPage:
    series = _Series()
    for m in metrics:
        if math.isfinite(m.value):  # +Inf, NaN: no figure (a byte count cannot be one)
            series.by_name.setdefault(m.name, []).append(m)
    named = (m for name in ("vramtop_gpu_up", "vramtop_gpu_memory_total_bytes") for m in series.named(name))
    host = next((m.labels["hostname"] for m in named if m.labels.get("hostname")), fallback_host)
    as_of = next((m.value for m in series.named("vramtop_last_sample_timestamp_seconds")), None)
    gpus = _gpus(series, host)
    agents = _agents(series, host, as_of, gpus)
    gpus = _with_agent_rows(gpus, agents)
    up = any(m.value == 1 for m in series.named("vramtop_up"))
    return HostPage(host, gpus, agents, up, as_of)


def _gpus(series: _Series, host: str) -> tuple[GpuSample, ...]:
    """Each GPU the page names (``vramtop_gpu_up``; a page from before it: the memory series)."""
    memory: dict[str, dict[str, int]] = {}
    index: dict[str, int] = {}
    failed: set[str] = set()
    for m in series.named("vramtop_gpu_up"):
        uuid = m.labels.get("uuid")
        if uuid:
            memory.setdefault(uuid, {})
            index[uuid] = _index(m.labels.get("gpu"))
            if m.value == 0:
                failed.add(uuid)
    for name, attribute in GPU_FIELDS.items():
        for m in series.named(f"vramtop_gpu_memory_{name}_bytes"):
            uuid = m.labels.get("uuid")
            if uuid:
                memory.setdefault(uuid, {})[attribute] = int(m.value)
                index.setdefault(uuid, _index(m.labels.get("gpu")))
    processes: dict[str, list[ProcessSample]] = {}
    for m in series.named("vramtop_process_gpu_memory_bytes"):
        uuid, pid = m.labels.get("uuid", ""), _int(m.labels.get("pid"))
        if uuid in memory and pid is not None:
            processes.setdefault(uuid, []).append(ProcessSample(
                pid=pid, gpu_uuid=uuid, used_memory=int(m.value), kind="C",
                command=m.labels.get("command") or None, user=m.labels.get("user") or None))
    out = [GpuSample(index=index[uuid], uuid=uuid, name="", host=host, processes=tuple(processes.get(uuid, ())),
                     error=f"vramtop on {host} could not read this GPU" if uuid in failed else None,
                     memory_total=figures.get("memory_total"), memory_used=figures.get("memory_used"),
                     memory_free=figures.get("memory_free"), memory_reserved=figures.get("memory_reserved"))
           for uuid, figures in memory.items()]
    return tuple(sorted(out, key=lambda g: g.index))


def _device_figures(series: _Series) -> dict[tuple[str, str], dict[str, object]]:
    """The RemoteDevice fields of each (pid, gpu) label pair of the torch and bill series."""
    devices: dict[tuple[str, str], dict[str, object]] = {}
    for name, attribute in TORCH_FIELDS.items():
        for m in series.named(name):
            key = (m.labels.get("pid", ""), m.labels.get("gpu", ""))
            devices.setdefault(key, {})[attribute] = m.value if attribute == "fragmentation" else int(m.value)
    bills: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for m in series.named("vramtop_bill_bytes"):
        bills.setdefault((m.labels.get("pid", ""), m.labels.get("gpu", "")), []).append(
            (m.labels.get("category", "?"), int(m.value)))
    for key, bill in bills.items():
        devices.setdefault(key, {})["bill"] = tuple(bill)
    return devices


def _agents(series: _Series, host: str, as_of: float | None, gpus: tuple[GpuSample, ...]) -> tuple[AgentSample, ...]:
    """Each process with the agent: its devices' figures, step, rank and launcher."""
    by_index = {str(g.index): g for g in gpus}
    devices = _device_figures(series)
    ranks = {m.labels.get("pid", ""): m.labels["rank"]
             for name in TORCH_FIELDS for m in series.named(name) if m.labels.get("rank")}
    steps = {m.labels.get("pid", ""): (int(m.value), m.labels.get("rank", "")) for m in series.named("vramtop_step")}
    jobs = {m.labels.get("pid", ""): m.labels for m in series.named("vramtop_job_info")}
    warnings: dict[str, list[str]] = {}
    for m in series.named("vramtop_warning"):
        warnings.setdefault(m.labels.get("pid", ""), []).append(
            f"{m.labels.get('level', '?')} {m.labels.get('kind', '?')}")
    out = []
    for pid_text in sorted({pid for pid, _ in devices} | set(steps), key=_index):
        pid = _int(pid_text)
        if pid is None:
            continue
        own = []
        for (p, gpu_text), fields in sorted(devices.items()):
            if p == pid_text:
                gpu = by_index.get(gpu_text)
                own.append(RemoteDevice(_int(gpu_text), gpu.uuid if gpu else None,
                                        limit=gpu.memory_total if gpu else None, **fields))  # type: ignore[arg-type]
        step, step_rank = steps.get(pid_text, (0, ""))
        rank = _int(ranks.get(pid_text) or step_rank or None)
        launch = _launch(jobs.get(pid_text), rank)
        figures = RemoteFigures(host, as_of, tuple(own), tuple(warnings.get(pid_text, ())))
        out.append(AgentSample(pid=pid, time=as_of or 0.0, torch_version="", step=step, rank=rank,
                               world_size=launch.world_size if launch else None, launch=launch, remote=figures))
    return tuple(out)


def _launch(labels: dict[str, str] | None, rank: int | None) -> Launch | None:
    """The launcher's environment as ``vramtop_job_info`` publishes it."""
    if labels is None:
        return None
    return Launch(rank=rank, world_size=_int(labels.get("world_size")), run_id=labels.get("run_id") or None,
                  master=labels.get("master") or None)


def _with_agent_rows(gpus: tuple[GpuSample, ...], agents: tuple[AgentSample, ...]) -> tuple[GpuSample, ...]:
    """A process row for each agent device the page has no row for (the exporter lists rows only
    with ``--per-process``): its figure is the bill's sum, which the exporter makes equal to
    NVML's for the process; without a bill it is not known."""
    out = []
    for gpu in gpus:
        rows = list(gpu.processes)
        listed = {p.pid for p in rows}
        for agent in agents:
            for device in agent.remote.devices if agent.remote else ():
                if device.gpu_uuid == gpu.uuid and agent.pid not in listed:
                    used = sum(v for _, v in device.bill) if device.bill else None
                    rows.append(ProcessSample(pid=agent.pid, gpu_uuid=gpu.uuid, used_memory=used, kind="C"))
                    listed.add(agent.pid)
        out.append(replace(gpu, processes=tuple(rows)) if len(rows) != len(gpu.processes) else gpu)
    return tuple(out)


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdecimal() else None


def _index(text: str | None) -> int:
    """A GPU index or PID label; -1 when there is none (a torch series of a GPU left out)."""
    value = _int(text)
    return -1 if value is None else value


def merge_pages(sample: Sample, pages: Iterable[HostPage]) -> Sample:
    """``sample`` (this host's) with other hosts' GPUs after its own and their agents in
    ``remote_agents``; a host whose figures are stale is said in ``problems``. A GPU already
    shown (this host's own exporter, or a host given twice) is shown once."""
    gpus, agents, problems = list(sample.gpus), list(sample.remote_agents), list(sample.problems)
    for page in pages:
        known = {g.uuid for g in gpus}
        new = [g for g in page.gpus if g.uuid not in known]
        gpus.extend(new)
        uuids = {g.uuid for g in new}
        agents.extend(a for a in page.agents if a.remote and any(d.gpu_uuid in uuids for d in a.remote.devices))
        if not page.up:
            problems.append(f"{page.host}: its exporter serves old figures (NVML there did not answer)")
        elif page.as_of is not None and sample.time - page.as_of > OLD_AFTER_S:
            problems.append(f"{page.host}: its figures are {sample.time - page.as_of:.0f} s old")
    return replace(sample, gpus=tuple(gpus), remote_agents=tuple(agents), problems=tuple(problems))
