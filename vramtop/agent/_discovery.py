"""Finding the program's models by watching module calls, on the training thread.

The outermost module a thread calls is a model (the frozen base of a LoRA model included).
Once optimizer steps stop meeting new models, the global module-call hooks are removed and
module calls cost nothing again. A loop that makes a new module every step (a loss module
built in the loop) would keep them forever, two Python calls per module call however deep the
model: they go after DISCOVERY_MAX_STEPS steps whatever is met. The hooks never raise and do
nothing once the agent stopped.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

from . import _torchstats as ts

# Module-call hooks stay until this many optimizer steps in a row met no new model.
DISCOVERY_STEPS = 3
# ...and at the latest after this many optimizer steps.
DISCOVERY_MAX_STEPS = 50


class ModelDiscovery:
    """``stopped`` says whether the agent stopped; ``found`` is told of each new model during
    its first call; ``between_calls`` runs after each outermost call (between forward passes)."""

    def __init__(self, device_type: str, stopped: Callable[[], bool],
                 found: Callable[[Any], None], between_calls: Callable[[], None]) -> None:
        self.models: weakref.WeakSet[Any] = weakref.WeakSet()
        self.autocast: bool | None = None  # an outermost call ran under autocast
        self._torch: Any = None
        self._device_type = device_type
        self._stopped = stopped
        self._found = found
        self._between_calls = between_calls
        self._handles: list[Any] = []
        self._call_depth = threading.local()
        self._quiet_steps = 0  # optimizer steps in a row that met no new model
        self._steps = 0  # optimizer steps while watching
        self._new_model = False

    @property
    def watching(self) -> bool:
        return bool(self._handles)

    def attach(self, torch: Any) -> None:
        self._torch = torch
        # torch.nn does not always expose its submodules as attributes.
        module_base = getattr(getattr(torch, "nn", None), "Module", None)
        modules = sys.modules.get(getattr(module_base, "__module__", ""), None)
        pre = getattr(modules, "register_module_forward_pre_hook", None)
        post = getattr(modules, "register_module_forward_hook", None)
        if pre is not None and post is not None:
            with contextlib.suppress(Exception):
                self._handles.append(pre(self._before_call))
                self._handles.append(post(self._after_call, always_call=True))

    def end(self) -> None:
        """Remove the hooks. Only from the training thread (torch's hook dicts are not locked)."""
        for handle in self._handles:
            with contextlib.suppress(Exception):
                handle.remove()
        self._handles.clear()

    def after_step(self) -> None:
        """An optimizer step ended: stop watching once steps keep meeting no new model."""
        if not self._handles:
            return
        self._quiet_steps = 0 if self._new_model else self._quiet_steps + 1
        self._new_model = False
        self._steps += 1
        if (self._quiet_steps >= DISCOVERY_STEPS and self.models) or self._steps >= DISCOVERY_MAX_STEPS:
            self.end()

    def _before_call(self, module: Any, args: Any) -> None:
        try:
            if self._stopped():
                return
            depth = getattr(self._call_depth, "depth", 0)
            self._call_depth.depth = depth + 1
            if depth == 0:
                if not self.autocast:
                    self.autocast = ts.autocast_enabled(self._torch, self._device_type)
                if module not in self.models:
                    self.models.add(module)
                    self._new_model = True
                    self._found(module)
        except Exception:
            pass

    def _after_call(self, module: Any, args: Any, output: Any) -> None:
        try:
            depth = max(0, getattr(self._call_depth, "depth", 1) - 1)
            self._call_depth.depth = depth
            if depth == 0:
                self._between_calls()
        except Exception:
            pass
