"""What a target process is: its Python (where its C API functions are, which version) and its
state, read from /proc and from the python executable or libpython it has mapped."""

from __future__ import annotations

import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ._elf import ElfSymbols, NotElf, read_symbols
from .errors import AttachRefused, TargetExited

NEEDED = ("Py_AddPendingCall", "PyRun_SimpleString")
# Py_Version (the PY_VERSION_HEX) exists from 3.11; Py_IsNone is new in 3.10.
MARKERS = ("Py_Version", "Py_IsNone")
_LIBPYTHON = re.compile(r"libpython3\.\d+[a-z]*\.so")


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str
    offset: int
    path: str


@dataclass(frozen=True)
class TargetPython:
    path: str  # the python executable or libpython that exports the C API
    add_pending_call: int  # addresses in the target
    run_simple_string: int
    version: tuple[int, int]  # (3, 11)
    release: str  # "3.11.7"; "3.10" where the file does not say


def read_maps(pid: int) -> list[Mapping]:
    try:
        text = os.fsdecode(Path(f"/proc/{pid}/maps").read_bytes())  # file names are any bytes
    except FileNotFoundError:
        raise TargetExited(pid) from None
    except PermissionError:
        raise AttachRefused(f"cannot read the memory map of PID {pid}: it belongs to another user") from None
    maps = []
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 5:
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        maps.append(Mapping(start, end, fields[1], int(fields[2], 16), fields[5] if len(fields) > 5 else ""))
    return maps


def find_python(pid: int, maps: list[Mapping], name: str) -> TargetPython:
    """The target's Python: AttachRefused when it has none, too old, or without the symbols."""
    exe = _exe(pid)
    candidates = [m for m in maps if m.offset == 0 and m.path.startswith("/")
                  and (m.path == exe or _LIBPYTHON.search(os.path.basename(m.path)))]
    # libpython first: a python executable linked to it exports nothing itself.
    candidates.sort(key=lambda m: not _LIBPYTHON.search(os.path.basename(m.path)))
    looks_like_python = any("python" in os.path.basename(m.path) for m in candidates)
    for mapping in candidates:
        found = _symbols(pid, mapping)
        if found is not None:
            return found
    if looks_like_python:
        raise AttachRefused(f"PID {pid} ({name}) runs a Python that does not export Py_AddPendingCall and "
                            "PyRun_SimpleString (a static, stripped build?): restart it with `vramtop run`")
    raise AttachRefused(f"PID {pid} ({name}) is not a Python process: NVML figures only")


def _symbols(pid: int, mapping: Mapping) -> TargetPython | None:
    path = mapping.path
    if path.endswith(" (deleted)"):
        raise AttachRefused(f"PID {pid} runs a Python whose file was replaced since it started ({path}): "
                            "restart it with `vramtop run`")
    try:
        # Through the target's root: the same file even when it runs in another mount namespace.
        with open(f"/proc/{pid}/root{path}", "rb") as file:
            elf = read_symbols(file, (*NEEDED, *MARKERS))
            release = _release(file, elf)
    except (OSError, NotElf):
        return None
    if not all(n in elf.symbols for n in NEEDED):
        return None
    version = release[:2]
    if version < (3, 10):
        raise AttachRefused(f"PID {pid} runs Python older than 3.10, which vramtop's agent does not support: "
                            "restart it with `vramtop run` on Python 3.10 or newer")
    base = mapping.start - elf.load_bias
    return TargetPython(path, base + elf.symbols["Py_AddPendingCall"], base + elf.symbols["PyRun_SimpleString"],
                        (version[0], version[1]), ".".join(map(str, release)))


def _release(file: BinaryIO, elf: ElfSymbols) -> tuple[int, ...]:
    """(major, minor, micro) of the Python in ``file``, read from Py_Version where it exists
    (3.11+); (major, minor) where only the symbols tell."""
    value = elf.symbols.get("Py_Version")
    if value is not None:
        offset = elf.file_offset(value)
        if offset is None:
            return 3, 11
        file.seek(offset)
        (hexversion,) = struct.unpack("<I", file.read(4))
        return (hexversion >> 24) & 0xFF, (hexversion >> 16) & 0xFF, (hexversion >> 8) & 0xFF
    return (3, 10) if "Py_IsNone" in elf.symbols else (3, 9)


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except FileNotFoundError:
        raise TargetExited(pid) from None
    except OSError:
        return ""


@dataclass(frozen=True)
class ProcessState:
    name: str  # the command, as ps shows it
    uid: int  # real uid
    state: str  # R, S, D, T, t, Z...
    command: str


def process_state(pid: int) -> ProcessState:
    try:
        # A name is cut at 15 bytes, maybe in the middle of a character: shown as ps shows it.
        status = Path(f"/proc/{pid}/status").read_bytes().decode(errors="replace")
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        raise TargetExited(pid) from None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    return ProcessState(name=fields.get("Name", "?").strip(), uid=int(fields["Uid"].split()[0]),
                        state=fields.get("State", "?").strip()[:1], command=" ".join(argv) or "?")


def process_ended(pid: int, settle: float = 0.5) -> bool:
    """Gone, or dying: a process killed while it was stopped takes a moment to become a zombie."""
    deadline = time.monotonic() + settle
    while True:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                state = stat.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in (b"Z", b"X", b"x"):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
