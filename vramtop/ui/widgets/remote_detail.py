"""Details of a process on another host (``--remote``, ``--prometheus``): the figures its host's
exporter published, said as such. What a remote row cannot have is said too: it is never
signalled, its post-mortem, advice and allocator history stay on its host, and its figures are
as old as that host's last sample."""

from __future__ import annotations

from rich.text import Text

from vramtop.model import AgentSample, ProcessSample, RemoteDevice, Sample
from vramtop.units import clock, fmt_bytes, process_label

# Bill categories as the exporter labels them (docs/exporter.md), as the monitor names them.
CATEGORY_NAMES = {
    "parameters_trainable": "parameters (trainable)",
    "parameters_frozen": "parameters (frozen)",
    "gradients": "gradients",
    "optimizer_state": "optimizer state",
    "other_persistent": "other persistent",
    "activations": "activations & temporaries (derived)",
    "allocator_cache": "allocator cache",
    "non_pytorch": "non-PyTorch",
}


def remote_agent(sample: Sample, host: str, pid: int, uuid: str) -> tuple[AgentSample, RemoteDevice] | None:
    """The remote agent of process ``pid`` on ``host`` and its device on GPU ``uuid``."""
    for agent in sample.remote_agents:
        if agent.remote is None or agent.remote.host != host or agent.pid != pid:
            continue
        device = next((d for d in agent.remote.devices if d.gpu_uuid == uuid), None)
        if device is not None:
            return agent, device
    return None


def render_remote(sample: Sample, row: ProcessSample, host: str) -> Text:
    t = Text("\n")
    if row.command:
        t.append(process_label(row) + "\n")
    found = remote_agent(sample, host, row.pid, row.gpu_uuid)
    if found is None:
        t.append(f"A process on {host}, read from its exporter: shown, never signalled; it runs no vramtop "
                 f"agent there (or the exporter publishes no torch figures), so there is no bill.", style="dim")
        return t
    agent, device = found
    t.append(f" {host} ", style="bold reverse magenta")
    t.append(f" step {agent.step}" + (f" · rank {agent.rank}" if agent.rank is not None else ""))
    as_of = agent.remote.as_of if agent.remote else None
    if as_of is not None:
        t.append(f" · as of {clock(as_of)} there ({max(0.0, sample.time - as_of):.0f} s before this sample)",
                 style="dim")
    t.append("\n")
    t.append_text(_allocator(device))
    t.append_text(_bill(device))
    if agent.remote and agent.remote.warnings:
        t.append("warnings there: " + ", ".join(agent.remote.warnings) + "\n", style="yellow")
    t.append(f"Read from {host}'s exporter: never signalled here; its OOM post-mortem, the bill at its step "
             f"peak and advice are shown by vramtop on {host}.", style="dim")
    return t


def _allocator(d: RemoteDevice) -> Text:
    t = Text()
    t.append(f"allocated {fmt_bytes(d.allocated)}  reserved {fmt_bytes(d.reserved)}  "
             f"requested {fmt_bytes(d.requested)}")
    if d.fragmentation is not None:
        t.append(f"  fragmentation {d.fragmentation:.2f}")
    if d.largest_free_block is not None:
        t.append(f"  largest free block {fmt_bytes(d.largest_free_block)}")
    if d.alloc_retries or d.ooms:
        t.append(f"  retries {d.alloc_retries or 0}  OOMs {d.ooms or 0}", style="yellow")
    t.append("\n")
    if d.headroom is not None:
        room = f"{fmt_bytes(d.headroom)} left" if d.headroom >= 0 else f"{fmt_bytes(-d.headroom)} short"
        t.append(f"headroom {room} at the projected step peak", style="green" if d.headroom >= 0 else "bold red")
        if d.step_peak is not None:
            t.append(f" (own peak {fmt_bytes(d.step_peak)} of {fmt_bytes(d.limit)})", style="dim")
        t.append("\n")
    return t


def _bill(d: RemoteDevice) -> Text:
    t = Text()
    if not d.bill:
        t.append("no bill yet (before the agent's first census there)\n", style="dim")
        return t
    t.append(f"bill now: {fmt_bytes(sum(v for _, v in d.bill))}\n", style="bold")
    for category, value in d.bill:
        t.append(f"  {CATEGORY_NAMES.get(category, category):<38}{fmt_bytes(value):>10}\n")
    return t
