"""What the training thread is doing, read from its Python stack by the sampler thread.

Cheaper and less intrusive than hooks on every module: no code runs in the training thread.
The outermost ``nn.Module.__call__`` frame names the model being run (how frozen parameters,
e.g. a LoRA base model, are found); torch's autograd and optimizer frames name the phase.
"""

from __future__ import annotations

import sys
from typing import Any

_MODULE_CALLS = {"_call_impl", "_wrapped_call_impl"}
_MAX_DEPTH = 400


def inspect_thread(thread_id: int) -> tuple[str, Any | None]:
    """(phase, outermost module being called) for the thread; phase is forward, backward,
    optimizer or unknown."""
    frame = sys._current_frames().get(thread_id)
    forward = backward = optimizer = False
    root = None
    depth = 0
    while frame is not None and depth < _MAX_DEPTH:
        code = frame.f_code
        filename = code.co_filename.replace("\\", "/")
        if "/torch/" in filename:
            if code.co_name in _MODULE_CALLS and filename.endswith("/nn/modules/module.py"):
                forward = True
                candidate = frame.f_locals.get("self")
                if candidate is not None:
                    root = candidate  # keep going up: the outermost call is the model
            elif "/torch/optim/" in filename:
                optimizer = True
            elif code.co_name in ("backward", "_engine_run_backward") and (
                filename.endswith("/_tensor.py") or "/autograd/" in filename
            ):
                backward = True
        frame = frame.f_back
        depth += 1
    # Recomputation under gradient checkpointing runs forward code inside backward.
    phase = "optimizer" if optimizer else "backward" if backward else "forward" if forward else "unknown"
    return phase, root
