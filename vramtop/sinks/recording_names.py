"""Where ``vramtop record`` writes: ``-o`` checked against files that exist, or a default name
from the program recorded and the time (``vramtop-train-20260101-120000.jsonl``)."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Sequence

from vramtop.errors import EXIT_USAGE, VramtopError
from vramtop.recording import COMPRESSED_SUFFIXES


def output_paths(output: str | None, command: Sequence[str], *, compress: str, force: bool,
                 now: float | None = None) -> tuple[str, str]:
    """(the file written while recording, the compression at the end: ".xz", ".gz" or "")."""
    if output:
        for suffix in COMPRESSED_SUFFIXES:
            if output.endswith(suffix):
                output, compress = output[: -len(suffix)], suffix
        if not force:
            for taken in (output, output + compress) if compress else (output,):
                if os.path.lexists(taken):
                    raise VramtopError(f"{taken} already exists: pass --force to overwrite it, "
                                       "or choose another name with -o", EXIT_USAGE)
        return output, compress
    base = default_name(command, now)
    for n in range(1000):
        candidate = f"{base}{'' if n == 0 else f'-{n}'}.jsonl"
        if not any(os.path.lexists(candidate + suffix) for suffix in ("", *COMPRESSED_SUFFIXES)):
            return candidate, compress
    raise VramtopError(f"too many recordings named {base}*: choose a name with -o", EXIT_USAGE)


def default_name(command: Sequence[str], now: float | None = None) -> str:
    """``vramtop-<program>-<YYYYmmdd>-<HHMMSS>`` in local time; the host name without a command."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", program_name(command))[:40].strip("._") or "run"
    return f"vramtop-{name}-{stamp}"


def program_name(command: Sequence[str]) -> str:
    """What the command runs: ``train`` for ``python train.py``, ``torchrun ... train.py`` or
    ``python -m pkg.train``; the executable's name otherwise."""
    if not command:
        return socket.gethostname().split(".")[0]
    for i, arg in enumerate(command[1:], start=1):
        if arg.endswith((".py", ".sh")) and not arg.startswith("-"):
            return os.path.splitext(os.path.basename(arg))[0]
        if arg == "-m" and i + 1 < len(command):
            return command[i + 1].rsplit(".", 1)[-1]
    return os.path.basename(command[0])
