"""Details of the selected process: everything known about it, across all its GPUs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.cells import cell_len
from rich.text import Text

from vramtop.analysis.join import join
from vramtop.model import MISMATCH, NOT_VISIBLE, AgentDevice, AgentSample, GpuSample, ProcessSample, Sample
from vramtop.ui.widgets.panel import Panel
from vramtop.ui.widgets.warnings import render_advice
from vramtop.units import fmt_bytes, mib, process_label

if TYPE_CHECKING:
    from vramtop.analysis.advice import Advice


def render_detail(sample: Sample, key: str | None, width: int = 80, narrow: bool = True,
                  advice: tuple[Advice, ...] = (), live: bool = True) -> Text:
    if key is None:
        return Text("no process selected", style="dim")
    pid, on_gpus, first = _selected(sample, key)
    if first is None:
        return Text(f"PID {pid} is no longer on any GPU", style="dim")
    t = Text()
    t.append(f"PID {pid}", style="bold")
    t.append(f"  user {first.user or '?'}  host RSS {fmt_bytes(first.host_rss)}  ")
    spread = ", ".join(
        f"GPU {g.index}: {'N/A' if p.used_memory is None else f'{mib(p.used_memory)} MiB'}"
        + (f" (MIG GI {p.gpu_instance_id} CI {p.compute_instance_id})" if p.gpu_instance_id is not None else "")
        for g, p in on_gpus
    )
    t.append(spread, style="cyan")
    gpu = sample.gpu(first.gpu_uuid)
    match = join(sample).of_row(first)
    if gpu is not None and gpu.host:  # another host's process: its exporter's figures only
        from vramtop.ui.widgets.remote_detail import render_remote

        t.append_text(render_remote(sample, first, gpu.host))
    elif match is not None:
        t.append_text(_with_agent(sample, match.agent, match.device, first, width, narrow, advice, live))
    else:
        t.append_text(_without_agent(first, live))
    return t


def _selected(sample: Sample, key: str) -> tuple[int, list[tuple[GpuSample, ProcessSample]], ProcessSample | None]:
    """The process of the row ``key`` ("<gpu uuid>:<pid>"): its PID, its place on every GPU, and
    the one on the row's GPU (else its first; None once it left every GPU)."""
    uuid, _, pid_text = key.rpartition(":")
    pid = int(pid_text)
    on_gpus = [(g, p) for g in sample.gpus for p in g.processes if p.pid == pid]
    first = next((p for g, p in on_gpus if g.uuid == uuid), on_gpus[0][1] if on_gpus else None)
    return pid, on_gpus, first


def _with_agent(sample: Sample, agent: AgentSample, device: AgentDevice, first: ProcessSample, width: int,
                narrow: bool, advice: tuple[Advice, ...], live: bool) -> Text:
    """The agent's view: its title, an OOM's post-mortem if it had one, the bill, the advice."""
    # Imported once an agent is seen: the bill's drawing and the post-mortem are not on the way
    # to the first frame of a host without one.
    from vramtop.analysis.bill import non_pytorch_of
    from vramtop.analysis.diagnosis import CAPACITY, diagnose
    from vramtop.ui.widgets.bill import agent_title, oom_headline, render_agent, render_oom

    t = Text("\n")
    t.append_text(agent_title(agent, device, sample.time))
    t.append("  ")
    room = width - cell_len(t.plain.rpartition("\n")[2])
    if room > 12:
        t.append(process_label(first)[:room], style="dim")
    t.append("\n")
    kind = None
    story = None
    oom = agent.last_oom if agent.last_oom is not None and agent.last_oom.device == device.index else None
    if oom is not None:  # sticky: for the process's life
        # In an 80x24 pane: the failure and the first thing to do, then the numbers; the
        # rest of the post-mortem below them (PgDn).
        t.append_text(oom_headline(oom))
        todo, story = render_oom(oom, device, non_pytorch_of(device.stats, first.used_memory), agent,
                                 show_path=live)
        t.append_text(todo)
        kind = diagnose(oom, expandable_segments=agent.expandable_segments).kind
    t.append_text(render_agent(agent, device, first, sample.gpu(first.gpu_uuid), width, narrow))
    if story is not None:
        t.append("\n")
        t.append_text(story)
    if kind not in (None, CAPACITY):
        # The levers size the step to the GPU; this OOM had another cause (see above).
        t.append(f"\nadvice: its OOM was a {kind}, not a lack of capacity: the post-mortem above says what "
                 "to do first; levers would treat the symptom.", style="dim")
    else:
        t.append_text(render_advice(advice, narrow))
    return t


def _without_agent(first: ProcessSample, live: bool) -> Text:
    """Who the process is as far as NVML and the host can tell, and why there is no bill."""
    t = Text("\n")
    t.append(process_label(first), style="italic yellow" if first.visibility in (NOT_VISIBLE, MISMATCH) else "")
    if first.visibility == NOT_VISIBLE:
        t.append("\nNVML reports host PIDs; run vramtop on the host, or share the host PID namespace "
                 "(docker --pid=host) to see who this is.", style="dim")
    elif first.visibility == MISMATCH:
        t.append("\nThis PID is another process here (it holds no /dev/nvidia*): the GPU process "
                 "lives in another PID namespace.", style="dim")
    elif not live:
        t.append("\nNo agent connected at this moment of the recording (not yet, or the process has none).",
                 style="dim")
    else:
        t.append("\nNo vramtop agent in this process: NVML sees how much it holds, not why. "
                 "Start it with `vramtop run -- <command>` to see the bill.", style="dim")
    return t


def detail_inputs(sample: Sample, key: str | None, width: int, narrow: bool, advice: tuple[Advice, ...],
                  live: bool) -> tuple[object, ...] | None:
    """What :func:`render_detail` draws from, all of it immutable: equal inputs draw equal
    details (None: too much of the sample to compare, another host's process). A new sample
    mostly brings the same agent sample (it publishes at its own pace) and the same process."""
    if key is None:
        return (key,)
    _, places, first = _selected(sample, key)
    if first is None:
        return (key, width, narrow)
    # The GPUs by index and uuid, not as samples: their utilisation moves every sample.
    on_gpus = tuple((g.index, g.uuid, p) for g, p in places)
    gpu = sample.gpu(first.gpu_uuid)
    if gpu is not None and gpu.host:
        return None
    match = join(sample).of_row(first)
    agent: tuple[object, ...] = ()
    if match is not None:
        from vramtop.ui.widgets.bill import AGENT_STALE_S

        age = sample.time - match.agent.time  # the title says how old the agent's news are, once stale
        # Of the GPU, the bill shows its size and what is free (not its utilisation, which moves).
        memory = None if gpu is None else (gpu.memory_total, gpu.memory_free)
        agent = (match.agent, match.device, memory, f"{age:.0f}" if age > AGENT_STALE_S else None)
    return (key, width, narrow, advice, live, on_gpus, agent)


class ProcessDetail(Panel):
    _shown_for: tuple[str | None, int, bool] | None = None  # the process and layout last shown
    _inputs: tuple[object, ...] | None = None  # what the details on screen were drawn from

    def show(self, sample: Sample, key: str | None, narrow: bool = True, advice: tuple[Advice, ...] = (),
             live: bool = True) -> None:
        width = max(self.size.width - 2, 40)  # minus the padding
        found = key is not None and bool(join(sample).of_process(int(key.rpartition(":")[2])))
        self.set_class(bool(found), "agent")
        # The same process in the same layout keeps its rows: its advice comes and goes.
        shown_for = (key, width, narrow)
        self.hold_rows(shown_for == self._shown_for)
        self._shown_for = shown_for
        inputs = detail_inputs(sample, key, width, narrow, advice, live)
        if inputs is not None and inputs == self._inputs:
            return  # drawing the bill again would cost more than this comparison
        self._inputs = inputs
        self.redraw(render_detail(sample, key, width, narrow, advice, live))
