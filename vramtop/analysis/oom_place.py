"""Where an OOM happened, in words: the module running, the program's line, the stack, and
with ``--trace`` the largest live allocations by stack and the allocation history's file.

Reports recorded before the agent knew the place have none of it: every function here then
says nothing (None or no lines).
"""

from __future__ import annotations

from vramtop.model import CodeFrame, OomReport
from vramtop.units import fmt_bytes

MEMORY_VIZ = "https://pytorch.org/memory_viz"


def short_file(path: str) -> str:
    """An installed package's file from the package on (``transformers/models/...``); the
    program's own by its name."""
    path = path.replace("\\", "/")
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in path:
            return path.rsplit(marker, 1)[1]
    return path.rsplit("/", 1)[-1]


def frame_text(frame: CodeFrame) -> str:
    return f"{short_file(frame.file)}:{frame.line} in {frame.function}()"


def program_frame(oom: OomReport) -> CodeFrame | None:
    """The program's own innermost line (outside installed packages), else the innermost kept."""
    return next((f for f in oom.frames if not f.library), oom.frames[0] if oom.frames else None)


def module_text(oom: OomReport) -> str | None:
    """The module and phase: "model.layers.11.mlp (LlamaMLP, forward)"; in a backward that ran
    no module code, the node and the nearest parameter's module."""
    phase = oom.phase if oom.phase != "unknown" else None
    if oom.module and oom.module_near:
        node = f"; running {oom.autograd_node}" if oom.autograd_node else ""
        return f"backward near {oom.module} ({oom.module_class or 'module'}{node})"
    if oom.module:
        return f"{oom.module} ({', '.join(p for p in (oom.module_class, phase) if p)})"
    if oom.autograd_node:
        why = f": {oom.place_note}" if oom.place_note else ""
        return f"backward (running {oom.autograd_node}; module not known{why})"
    return None


def where(oom: OomReport) -> str | None:
    """"model.layers.11.mlp (LlamaMLP, forward) at train.py:42 in step()", or what of it is known;
    None for a report without a place (an older recording)."""
    module = module_text(oom)
    frame = program_frame(oom)
    at = f"at {frame_text(frame)}" if frame is not None else None
    if module is None and at is None:
        return None
    if module is None:
        phase = oom.phase if oom.phase != "unknown" else None
        return f"{phase} {at}" if phase else at
    return f"{module} {at}" if at else module


def stack_line(oom: OomReport) -> str | None:
    """The kept frames, innermost first, when there is more than the one line ``where`` names."""
    if len(oom.frames) < 2:
        return None
    return "Stack, innermost first: " + " ← ".join(frame_text(f) for f in oom.frames) + "."


def allocation_lines(oom: OomReport) -> list[str]:
    """With --trace: the largest live blocks by the stack that allocated them."""
    if not oom.largest_allocations:
        return []
    lines = ["Largest live allocations (allocation history):"]
    for block in oom.largest_allocations:
        stack = " ← ".join(frame_text(f) for f in block.frames)
        lines.append(f"  {fmt_bytes(block.size)} from {stack}" if stack else f"  {fmt_bytes(block.size)}: no "
                     "Python stack (allocated before the history started, or only torch's own frames)")
    return lines


def trace_lines(oom: OomReport) -> list[str]:
    """With --trace: where the allocation history was saved and how to open it, or why not."""
    if oom.trace_path:
        return [f"Allocation history saved: {oom.trace_path}. Open it at {MEMORY_VIZ} (drop the file on the "
                f"page) or: python -m torch.cuda._memory_viz trace_plot {oom.trace_path} -o oom-trace.html"]
    if oom.trace_note:
        return [f"No allocation history (--trace): {oom.trace_note}."]
    return []


def place_lines(oom: OomReport) -> list[str]:
    """Everything above that follows the first line of a post-mortem."""
    stack = stack_line(oom)
    return ([stack] if stack else []) + allocation_lines(oom) + trace_lines(oom)
