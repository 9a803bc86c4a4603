"""The one-shot summary: ``vramtop --once`` (text) and ``vramtop --once --json``."""

from __future__ import annotations

import json
from collections.abc import Sequence

from vramtop import __version__
from vramtop.analysis.jobs import job_to_dict, jobs, summary
from vramtop.analysis.join import join
from vramtop.analysis.risk import RiskWarning, warning_to_dict
from vramtop.codec import finite_only
from vramtop.model import GpuSample, ProcessSample, Sample
from vramtop.protocol import sample_document
from vramtop.units import clock, fmt_bytes, fmt_mib, fmt_rate, mib, percent, process_label


def render_json(sample: Sample, warnings: Sequence[RiskWarning] = ()) -> str:
    """The sample document plus ``warnings`` (each: level, kind, gpu_uuid, gpu_index, pid,
    title, evidence, sentence, action, since). Strict JSON: a number that is not finite (damage)
    is written as null."""
    doc = sample_document(sample)
    # Where the join found each agent's NVML row: a process in a container reports its own PID,
    # and readers of the document want the one nvidia-smi shows.
    matches = join(sample).matches
    for agent_doc, agent in zip(doc.get("agents", ()), sample.agents, strict=False):
        rows = {m.row.pid for m in matches if m.agent is agent and m.row is not None}
        if len(rows) == 1:
            agent_doc["host_pid"] = rows.pop()
    doc["warnings"] = [warning_to_dict(w) for w in warnings]
    doc["jobs"] = [job_to_dict(j) for j in jobs(sample)]
    return json.dumps(finite_only(doc), indent=2, allow_nan=False)


def render_text(sample: Sample, warnings: Sequence[RiskWarning] = ()) -> str:
    lines = [_header(sample)]
    if sample.error:
        lines.append(f"! {sample.error}")
    for gpu in sample.gpus:
        lines.extend(_gpu_lines(gpu))
        lines.extend(_agent_lines(sample, gpu))
    lines.extend(job_lines(sample))
    for w in warnings:
        lines.append(f"{w.level.upper()}: {w.title} — {w.sentence} → {w.action}")
    return "\n".join(lines)


def job_lines(sample: Sample) -> list[str]:
    """Each distributed job: its summary, then a line per rank."""
    lines = []
    for job in jobs(sample):
        lines.append(summary(job))
        for r in job.ranks:
            where = f" @{r.host}" if r.host else ""  # another host's rank, from its exporter
            lines.append(f"  rank {r.rank:>3}  GPU {r.gpu_index if r.gpu_index is not None else '?':>2}{where}  "
                         f"PID {r.pid:>7}  peak {fmt_bytes(r.peak):>9}  headroom {fmt_bytes(r.headroom):>9}  "
                         f"step {r.step}")
    return lines


def _agent_lines(sample: Sample, gpu: GpuSample) -> list[str]:
    """The allocator and the bill of each process on this GPU that runs the agent."""
    from vramtop.analysis.bill import SHORT_NAMES, bill_now, not_counted_yet
    from vramtop.analysis.report_processes import find_agent

    lines = []
    for proc in gpu.processes:
        found = find_agent(sample, proc)
        if found is None:
            continue
        agent, device = found
        st = device.stats
        bill = bill_now(device, proc.used_memory)
        lines.append(f"  PID {proc.pid} torch: allocated {fmt_bytes(st.allocated)} / reserved "
                     f"{fmt_bytes(st.reserved)}, retries {st.num_alloc_retries}, OOMs {st.num_ooms}, "
                     f"step {agent.step}")
        lines.append("    bill: " + ", ".join(f"{SHORT_NAMES[name]} {fmt_bytes(value)}"
                                             for name, value in bill.categories()))
        if device.census is None:
            lines.append("    " + not_counted_yet(agent))
    return lines


def _header(sample: Sample) -> str:
    host = sample.host
    when = clock(sample.time, "%Y-%m-%d %H:%M:%S")
    parts = [f"vramtop {__version__}", host.hostname, when]
    if sample.driver_version:
        parts.append(f"driver {sample.driver_version}")
    if sample.cuda_driver_version:
        parts.append(f"CUDA {sample.cuda_driver_version}")
    parts.append(f"RAM {fmt_bytes(host.memory_used)} / {fmt_bytes(host.memory_total)}")
    return "  ".join(parts)


def _gpu_lines(gpu: GpuSample) -> list[str]:
    title = f"GPU {gpu.index}  {gpu.name}  {gpu.uuid}" if not gpu.host else f"GPU {gpu.index} @{gpu.host}  {gpu.uuid}"
    if gpu.error:
        return [title, f"  ! {gpu.error}"]
    pct = percent(gpu.memory_used, gpu.memory_total)
    memory = (
        f"  memory  used {fmt_mib(gpu.memory_used)} / {fmt_mib(gpu.memory_total)}"
        + (f" ({pct:.1f}%)" if pct is not None else "")
        + f"  free {fmt_mib(gpu.memory_free)}  reserved {fmt_mib(gpu.memory_reserved)}"
    )
    activity = (
        f"  util {_pct(gpu.utilization_gpu)}  mem-util {_pct(gpu.utilization_memory)}"
        f"  PCIe TX {fmt_rate(gpu.pcie_tx)} RX {fmt_rate(gpu.pcie_rx)}"
        f"  {_unit(gpu.temperature, 'C')}  power {_watts(gpu.power_usage)} / {_watts(gpu.power_limit)}"
    )
    lines = [title, memory, activity]
    for mig in gpu.mig_devices:
        lines.append(
            f"  MIG {mig.index}  GI {mig.gpu_instance_id} CI {mig.compute_instance_id}  "
            f"used {fmt_mib(mig.memory_used)} / {fmt_mib(mig.memory_total)}  {mig.uuid}"
        )
    if gpu.processes:
        lines.append(f"  {'PID':>8}  {'TYPE':<4} {'USER':<10} {'GPU MEM':>10}  {'HOST RSS':>9}  COMMAND")
        lines.extend(_process_line(p) for p in sorted(gpu.processes, key=_by_memory))
    else:
        lines.append("  no processes")
    return lines


def _process_line(p: ProcessSample) -> str:
    gpu_mem = "N/A" if p.used_memory is None else f"{mib(p.used_memory)} MiB"
    return (
        f"  {p.pid:>8}  {p.kind:<4} {(p.user or '?')[:10]:<10} {gpu_mem:>10}  "
        f"{fmt_bytes(p.host_rss):>9}  {process_label(p)}"
    )


def _by_memory(p: ProcessSample) -> tuple[int, int]:
    return (-(p.used_memory or 0), p.pid)


def _pct(value: int | None) -> str:
    return "N/A" if value is None else f"{value}%"


def _unit(value: int | None, unit: str) -> str:
    return "N/A" if value is None else f"{value} {unit}"


def _watts(milliwatts: int | None) -> str:
    return "N/A" if milliwatts is None else f"{milliwatts / 1000:.0f} W"
