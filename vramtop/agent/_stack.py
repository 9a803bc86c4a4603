"""What the training thread is doing, read from its Python stack by the sampler thread.

No code runs in the training thread. Only the code objects of its frames are read (function
and file names): never ``f_locals``, which is not safe to touch on a frame another thread is
executing.
"""

from __future__ import annotations

import sys

_MODULE_CALLS = {"_call_impl", "_wrapped_call_impl"}
_MAX_DEPTH = 400


def inspect_thread(thread_id: int) -> str:
    """The thread's phase: forward, backward, optimizer or unknown."""
    frame = sys._current_frames().get(thread_id)
    forward = backward = optimizer = False
    depth = 0
    while frame is not None and depth < _MAX_DEPTH:
        code = frame.f_code
        filename = code.co_filename.replace("\\", "/")
        if "/torch/" in filename:
            if code.co_name in _MODULE_CALLS and filename.endswith("/nn/modules/module.py"):
                forward = True
            elif "/torch/optim/" in filename:
                optimizer = True
            elif code.co_name in ("backward", "_engine_run_backward") and (
                filename.endswith("/_tensor.py") or "/autograd/" in filename
            ):
                backward = True
        frame = frame.f_back
        depth += 1
    # Recomputation under gradient checkpointing runs forward code inside backward.
    return "optimizer" if optimizer else "backward" if backward else "forward" if forward else "unknown"
