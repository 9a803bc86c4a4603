"""The GPU list: one block per GPU with a memory bar, the numbers nvidia-smi prints, and history."""

from __future__ import annotations

from rich.text import Text

from vramtop.analysis.history import History
from vramtop.model import GpuSample
from vramtop.ui.widgets.panel import Panel
from vramtop.units import fmt_rate, mib, percent, sparkline

USED, RESERVED, FREE = "█", "▒", "░"


def memory_style(fraction: float) -> str:
    if fraction >= 0.9:
        return "bold red"
    if fraction >= 0.75:
        return "yellow"
    return "green"


def memory_bar(gpu: GpuSample, width: int) -> Text:
    """Used | driver-reserved | free, to scale, ``width`` cells wide."""
    total = gpu.memory_total or 0
    if width <= 0 or not total:
        return Text(FREE * max(width, 0), style="dim")
    used = gpu.memory_used or 0
    reserved = gpu.memory_reserved or 0
    used_cells = round(used / total * width)
    if used and not used_cells:
        used_cells = 1  # a little memory in use must still be visible
    reserved_cells = min(width - used_cells, round(reserved / total * width))
    bar = Text()
    bar.append(USED * used_cells, style=memory_style(used / total))
    bar.append(RESERVED * reserved_cells, style="grey50")
    bar.append(FREE * (width - used_cells - reserved_cells), style="grey23")
    return bar


def _activity(gpu: GpuSample, narrow: bool) -> Text:
    t = Text()
    t.append("util ", style="dim")
    t.append("N/A" if gpu.utilization_gpu is None else f"{gpu.utilization_gpu:3d}%", style="bold")
    if not narrow:
        t.append("  mem-bw ", style="dim")
        t.append("N/A" if gpu.utilization_memory is None else f"{gpu.utilization_memory:3d}%")
    t.append("  PCIe " if not narrow else "  ", style="dim")
    t.append(f"▲{fmt_rate(gpu.pcie_tx)} ▼{fmt_rate(gpu.pcie_rx)}")
    if gpu.temperature is not None:
        t.append(f"  {gpu.temperature}°C")
    if gpu.power_usage is not None:
        limit = f"/{gpu.power_limit / 1000:.0f}" if gpu.power_limit and not narrow else ""
        t.append(f"  {gpu.power_usage / 1000:.0f}{limit} W")
    return t


def _numbers(gpu: GpuSample, narrow: bool) -> Text:
    t = Text()
    if gpu.memory_total is None or gpu.memory_used is None:
        return Text("memory N/A", style="dim")
    pct = percent(gpu.memory_used, gpu.memory_total) or 0.0
    t.append(f"{mib(gpu.memory_used)}", style=memory_style(pct / 100) + " bold")
    t.append(f"/{mib(gpu.memory_total)} MiB", style="bold")
    t.append(f" {pct:.0f}%")
    if not narrow:
        t.append("  free ", style="dim")
        t.append(f"{mib(gpu.memory_free or 0)}")
        if gpu.memory_reserved is not None:
            t.append("  reserved ", style="dim")
            t.append(f"{mib(gpu.memory_reserved)}")
    return t


def _numbers_width(gpu: GpuSample, narrow: bool) -> int:
    digits = len(str(mib(gpu.memory_total or 0)))
    width = 2 * digits + len("/ MiB 100%")
    if not narrow:
        width += len("  free   reserved ") + digits + len(str(mib(gpu.memory_reserved or 0)))
    return width


def render_gpu(gpu: GpuSample, history: list[int], width: int, narrow: bool, selected: bool) -> Text:
    """The block for one GPU, ``width`` cells wide: two lines (plus one per MIG device)."""
    marker = "▶" if selected else " "
    name = gpu.name.removeprefix("NVIDIA ") if narrow else gpu.name
    title = Text()
    title.append(f"{marker}{gpu.index} ", style="bold reverse" if selected else "bold")
    if gpu.host:  # another host's GPU (--remote): its host first, its name is not published
        title.append(f"@{gpu.host}", style="bold magenta")
    title.append(name, style="bold cyan")
    if not narrow:
        title.append(f"  {gpu.uuid[:12]}", style="dim")
    if gpu.mig_enabled:
        title.append(f"  MIG×{len(gpu.mig_devices)}", style="magenta")
    if gpu.error:
        title.append(f"  ! {gpu.error}", style="bold red")
        return title
    title.append("  ")
    if gpu.host:  # its exporter publishes memory only: no utilisation, PCIe, temperature or power
        title.append("memory from its exporter", style="dim")
    else:
        title.append_text(_activity(gpu, narrow))
    title.truncate(width)

    numbers = _numbers(gpu, narrow)
    numbers.align("left", _numbers_width(gpu, narrow))  # bars of equal GPUs line up
    # Bar, numbers and history share one line, so every GPU takes two lines: 80x24 and a box
    # of eight GPUs must still show them all and leave room for the processes.
    spark_w = max(0, min(width // 3, width - numbers.cell_len - 30))
    bar_w = max(8, width - numbers.cell_len - spark_w - 4)
    line = Text(" ")
    line.append_text(memory_bar(gpu, bar_w))
    line.append(" ")
    line.append_text(numbers)
    if spark_w:
        line.append(" ")
        line.append(sparkline(history, spark_w, gpu.memory_total), style="cyan")
    line.truncate(width)
    lines = [title, line]
    for mig in gpu.mig_devices:
        used = "N/A" if mig.memory_used is None else f"{mib(mig.memory_used)}"
        total = "N/A" if mig.memory_total is None else f"{mib(mig.memory_total)}"
        mig_line = Text(f"  MIG {mig.index} GI {mig.gpu_instance_id} CI {mig.compute_instance_id}"
                        f"  {used}/{total} MiB  {mig.uuid}", style="magenta")
        mig_line.truncate(width)  # a wrapped line would push the processes down
        lines.append(mig_line)
    return Text("\n").join(lines)


class GpuList(Panel):
    """All GPUs of the current sample; the selected one is marked, laid out for the width."""

    def show(self, gpus: tuple[GpuSample, ...], history: History, narrow: bool,
             selected: str | None) -> None:
        def render(width: int) -> Text:
            blocks = [render_gpu(g, history.used(g.uuid), width, narrow, g.uuid == selected) for g in gpus]
            return Text("\n").join(blocks) if blocks else Text("no GPU selected", style="dim")

        self.redraw_for_width(render)

    def waiting(self) -> None:
        self.redraw(Text("waiting for the first sample…", style="dim"))
