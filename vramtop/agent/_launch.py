"""The distributed launcher's environment (torchrun, accelerate, DeepSpeed's launcher), read once
when the agent starts serving: it is what lets a monitor put the ranks of one job together."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace

from vramtop.model import Launch

MAX_TEXT = 200  # a run id or an address longer than this is cut: it is a label, not data


def launch_env(environ: Mapping[str, str] | None = None, parent_pid: int | None = None) -> Launch | None:
    """The launcher's variables of ``environ`` (the process's own by default); None when the
    process was not started by a distributed launcher (none of them is set)."""
    env = os.environ if environ is None else environ
    launch = Launch(
        rank=_int(env.get("RANK")),
        local_rank=_int(env.get("LOCAL_RANK")),
        world_size=_int(env.get("WORLD_SIZE")),
        local_world_size=_int(env.get("LOCAL_WORLD_SIZE")),
        run_id=_text(env.get("TORCHELASTIC_RUN_ID")),
        master=_master(env.get("MASTER_ADDR"), env.get("MASTER_PORT")),
    )
    if launch == Launch():
        return None
    return replace(launch, parent_pid=os.getppid() if parent_pid is None else parent_pid)


def _int(value: str | None) -> int | None:
    value = (value or "").strip()
    return int(value) if value.isdecimal() else None


def _text(value: str | None) -> str | None:
    value = (value or "").strip()
    return value[:MAX_TEXT] or None


def _master(addr: str | None, port: str | None) -> str | None:
    addr, port = _text(addr), _text(port)
    if addr is None and port is None:
        return None
    return f"{addr or '?'}:{port or '?'}"
