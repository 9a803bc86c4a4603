"""Where an OOM happened: the program's lines and the module running, read at the failure.

This runs only at an OOM, on the failing thread: no hook and no per-call work in the steady
state (the module names are looked up then, not kept). On the failing thread a frame's locals are
safe to read (it is that thread's own stack); another thread's frames are read only for their
code and line numbers, as _stack.py does.

"User" code is every frame outside torch, vramtop and the standard library. Frames of other
installed packages (Transformers' modeling files, Accelerate's hooks) are kept, marked as
library code: they say which line of the model's code allocated. The program's own innermost
line (outside any package) is always kept too, even under deeper library frames.

In backward on a GPU the autograd engine's threads run no Python, so no module is on any stack:
the node the engine is running names the operation, and the module that owns the parameter
nearest to it in the autograd graph says roughly where in the model it was (``module_near``).
The program's lines then come from the training thread, waiting in ``backward()``.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

from vramtop.model import CodeFrame

MAX_FRAMES = 5  # frames kept, innermost first
MAX_DEPTH = 400  # frames walked
MAX_MODULES = 50_000  # modules searched for a name
MAX_NODES = 256  # autograd nodes searched for the nearest parameter
MAX_TEXT = 300  # characters of a file, function or module name

_MODULE_FILE = "/nn/modules/module.py"
_PACKAGES = ("/site-packages/", "/dist-packages/")
_TORCH_PACKAGES = tuple(p + name + "/" for p in _PACKAGES for name in ("torch", "functorch"))
SKIP, LIBRARY, PROGRAM = range(3)


@dataclass(frozen=True)
class Place:
    frames: tuple[CodeFrame, ...] = ()
    module: str | None = None
    module_class: str | None = None
    module_near: bool = False
    node: str | None = None
    note: str | None = None  # in backward, why no module was found (for whoever reads the report)


class CodeKinds:
    """Tells torch's, vramtop's and the standard library's files (skipped) from installed
    packages' (library) and the program's own."""

    def __init__(self, torch: Any) -> None:
        skipped = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]  # vramtop
        torch_file = getattr(torch, "__file__", None)
        if isinstance(torch_file, str):
            skipped.append(os.path.dirname(os.path.abspath(torch_file)))
        self._skipped = tuple(_norm(p) + "/" for p in skipped)
        paths = sysconfig.get_paths()
        self._stdlib = tuple({_norm(paths[k]) + "/" for k in ("stdlib", "platstdlib") if paths.get(k)})
        self._cache: dict[str, int] = {}

    def kind(self, filename: str) -> int:
        known = self._cache.get(filename)
        if known is not None:
            return known
        path = _norm(filename)
        if filename.startswith("<frozen") or path.startswith(self._skipped) or any(
                p in path for p in _TORCH_PACKAGES):
            kind = SKIP
        elif any(p in path for p in _PACKAGES):
            kind = LIBRARY
        elif path.startswith(self._stdlib):
            kind = SKIP
        else:
            kind = PROGRAM
        if len(self._cache) < 4096:
            self._cache[filename] = kind
        return kind


def user_frames(frame: FrameType | None, kinds: CodeKinds) -> tuple[CodeFrame, ...]:
    """The innermost frames worth showing from ``frame`` outwards (see pick_frames)."""
    def walk(frame: FrameType | None) -> Iterator[tuple[str, int, str]]:
        depth = 0
        while frame is not None and depth < MAX_DEPTH:
            yield frame.f_code.co_filename, int(frame.f_lineno or 0), frame.f_code.co_name
            frame = frame.f_back
            depth += 1

    return pick_frames(walk(frame), kinds, MAX_FRAMES)


def pick_frames(entries: Iterable[tuple[str, int, str]], kinds: CodeKinds, limit: int) -> tuple[CodeFrame, ...]:
    """Up to ``limit`` of ``entries`` (file, line, function; innermost first) that are not
    skipped, the program's own innermost frame always among them (it replaces the last)."""
    kept: list[CodeFrame] = []
    program: CodeFrame | None = None
    for filename, line, function in entries:
        kind = kinds.kind(filename)
        if kind == SKIP:
            continue
        here = CodeFrame(filename[-MAX_TEXT:], line, function[:MAX_TEXT], kind == LIBRARY)
        if len(kept) < limit:
            kept.append(here)
        if kind == PROGRAM and program is None:
            program = here
        if program is not None and len(kept) >= limit:
            break
    # Past ``limit`` library frames the walk went on only to find the program's line.
    if program is not None and program not in kept:
        kept[-1] = program
    return tuple(kept)


def module_chain(frame: FrameType | None) -> list[Any]:
    """The modules whose calls are on the current thread's stack, innermost first. Reads the
    frames' locals: only for the calling thread's own frames."""
    chain: list[Any] = []
    depth = 0
    while frame is not None and depth < MAX_DEPTH:
        code = frame.f_code
        if code.co_name == "_call_impl" and code.co_filename.replace("\\", "/").endswith(_MODULE_FILE):
            module = frame.f_locals.get("self")
            if module is not None and (not chain or chain[-1] is not module):
                chain.append(module)
        frame = frame.f_back
        depth += 1
    return chain


def name_in(root: Any, wanted: set[int]) -> dict[int, str]:
    """The qualified names under ``root`` of the modules whose id() is in ``wanted``."""
    found: dict[int, str] = {}
    for count, (name, module) in enumerate(root.named_modules(remove_duplicate=False)):
        if count >= MAX_MODULES or len(found) == len(wanted):
            break
        if id(module) in wanted and id(module) not in found:
            found[id(module)] = name or type(root).__name__
    return found


def forward_module(chain: list[Any]) -> tuple[str, str] | None:
    """(qualified name, class) of the innermost module of ``chain`` that its outermost names;
    an unnamed inner module (called without being registered) is added by its class."""
    root = chain[-1]
    names = name_in(root, {id(m) for m in chain})
    for i, module in enumerate(chain):
        name = names.get(id(module))
        if name is not None:
            if i:
                name += " > " + type(chain[0]).__name__
            return name[:MAX_TEXT], type(chain[0]).__name__[:MAX_TEXT]
    return None


def nearest_parameters(node: Any) -> tuple[list[Any], int]:
    """Parameters reached from ``node`` towards the leaves of the autograd graph, nearest first;
    and how many nodes the walk met."""
    found: list[Any] = []
    queue = deque([node])
    seen = {id(node)}
    # torch makes a new Python wrapper for a C++ node each time one is read: a wrapper freed
    # during the walk leaves its id() to the next one, which would then count as seen. Every
    # wrapper met is kept alive until the walk ends, so an id() stands for one node.
    met = [node]
    while queue and len(seen) <= MAX_NODES and len(found) < 8:
        current = queue.popleft()
        variable = getattr(current, "variable", None)  # an AccumulateGrad node's leaf tensor
        if variable is not None:
            found.append(variable)
        for pair in getattr(current, "next_functions", ()) or ():
            nxt = pair[0] if pair else None
            if nxt is not None and id(nxt) not in seen:
                seen.add(id(nxt))
                met.append(nxt)
                queue.append(nxt)
    return found, len(seen)


def backward_module(node: Any, models: list[Any]) -> tuple[tuple[str, str] | None, str | None]:
    """((qualified name, class) of the module owning the parameter nearest to ``node``, None),
    or (None, why not)."""
    parameters, walked = nearest_parameters(node)
    if not parameters:
        return None, f"no parameter reached from the node ({walked} nodes walked)"
    if not models:
        return None, "no model found yet"
    wanted = {id(p) for p in parameters}
    owners: dict[int, tuple[str, Any]] = {}
    for root in models:
        for count, (name, module) in enumerate(root.named_modules()):
            if count >= MAX_MODULES:
                break
            for p in module._parameters.values():
                if p is not None and id(p) in wanted and id(p) not in owners:
                    owners[id(p)] = (name or type(root).__name__, module)
    for p in parameters:
        owner = owners.get(id(p))
        if owner is not None:
            return (owner[0][:MAX_TEXT], type(owner[1]).__name__[:MAX_TEXT]), None
    names = ", ".join(sorted({type(m).__name__ for m in models}))
    return None, f"none of the {len(parameters)} nearest parameters is in the models found ({names})"[:MAX_TEXT]


def place_of_oom(torch: Any, models: list[Any], train_thread: int | None) -> Place:
    """Where the current thread's failing allocation came from. Never raises."""
    try:
        kinds = CodeKinds(torch)
        here = sys._getframe(1)
        frames = user_frames(here, kinds)
        chain = module_chain(here)
        named = _quietly(forward_module, chain) if chain else None
        node = _current_node(torch)
        near = False
        note = None
        if named is None and node is not None:
            named, note = _backward_module(node, models)
            near = named is not None
        if node is not None or not frames:
            # On an autograd engine's thread (a GPU's backward): its own Python, if any (a custom
            # Function, a hook), then where the program waits in backward() on its own thread.
            frames = joined(frames, user_frames(_other_thread(train_thread), kinds))
        return Place(frames, named[0] if named else None, named[1] if named else None, near, _node_name(node),
                     note)
    except Exception:
        return Place()


def joined(inner: tuple[CodeFrame, ...], outer: tuple[CodeFrame, ...]) -> tuple[CodeFrame, ...]:
    """Two threads' frames as one stack, at most MAX_FRAMES, the outer one's program line kept."""
    both = (inner + outer)[:MAX_FRAMES]
    program = next((f for f in outer if not f.library), None)
    if program is not None and program not in both:
        both = (*both[:MAX_FRAMES - 1], program)
    return both


def _quietly(fn: Any, *args: Any) -> Any:
    """``fn(*args)``, or None when it raises (a module with odd named_modules, a torch without a
    node's fields): the rest of the place is still worth having."""
    try:
        return fn(*args)
    except Exception:
        return None


def _backward_module(node: Any, models: list[Any]) -> tuple[tuple[str, str] | None, str | None]:
    """backward_module, with what went wrong kept when it raises (the place is still worth having)."""
    try:
        return backward_module(node, models)
    except Exception as err:
        return None, f"the lookup failed: {type(err).__name__}: {err}"[:MAX_TEXT]


def _current_node(torch: Any) -> Any:
    fn = getattr(getattr(torch, "_C", None), "_current_autograd_node", None)
    try:
        return fn() if fn is not None else None
    except Exception:
        return None


def _node_name(node: Any) -> str | None:
    try:
        return str(node.name())[:MAX_TEXT] if node is not None else None
    except Exception:
        return None


def _other_thread(thread_id: int | None) -> FrameType | None:
    """The innermost frame of the training thread (the main thread until a step said which),
    unless that is the calling thread."""
    target = threading.main_thread().ident if thread_id is None else thread_id
    return None if target in (None, threading.get_ident()) else sys._current_frames().get(target or 0)


def _norm(path: str) -> str:
    return path.replace("\\", "/")
