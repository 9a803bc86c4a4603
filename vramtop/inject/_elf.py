"""The dynamic symbols of an ELF64 file (little-endian): enough to find exported functions.

Only ``.dynsym`` is read: it survives ``strip`` and is what the dynamic linker itself uses,
so it lists the C API that the python executables of distributions, pyenv and conda export.
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from dataclasses import dataclass
from typing import BinaryIO

_IDENT = b"\x7fELF\x02\x01"  # magic, 64-bit, little-endian
_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
_PROGRAM = struct.Struct("<IIQQQQQQ")
_SECTION = struct.Struct("<IIQQQQIIQQ")
_SYMBOL = struct.Struct("<IBBHQQ")
PT_LOAD = 1
PAGE = 4096
SHT_DYNSYM = 11
SHN_UNDEF = 0
MAX_SYMBOLS = 1 << 20  # a bound on what a malformed file can make us read


class NotElf(ValueError):
    """Not a 64-bit little-endian ELF file, or a malformed one."""


@dataclass(frozen=True)
class ElfSymbols:
    load_bias: int  # the page-aligned vaddr of the first PT_LOAD: address = base + value - this
    symbols: dict[str, int]  # name -> st_value, for the names asked for that the file defines
    loads: tuple[tuple[int, int, int], ...]  # (vaddr, file offset, size in the file) of each PT_LOAD

    def file_offset(self, value: int) -> int | None:
        """Where in the file the bytes of virtual address ``value`` are (None: not in the file)."""
        for vaddr, offset, size in self.loads:
            if vaddr <= value < vaddr + size:
                return offset + value - vaddr
        return None


def read_symbols(file: BinaryIO, wanted: Collection[str]) -> ElfSymbols:
    """The defined dynamic symbols of ``file`` among ``wanted``."""
    header = _read(file, 0, _HEADER.size)
    if not header.startswith(_IDENT):
        raise NotElf("not a 64-bit little-endian ELF file")
    (_, _, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, _) = _HEADER.unpack(header)
    loads = _loads(file, phoff, phentsize, phnum)
    if not loads:
        raise NotElf("no loadable segment")
    # The kernel maps the first segment from the page holding its start: file offset 0 lands there.
    bias = loads[0][0] & ~(PAGE - 1)
    sections = [_SECTION.unpack(_read(file, shoff + i * shentsize, _SECTION.size)) for i in range(shnum)]
    found: dict[str, int] = {}
    names = {n.encode() for n in wanted}
    for section in sections:
        if section[1] != SHT_DYNSYM:
            continue
        offset, size, link, entsize = section[4], section[5], section[6], section[9] or _SYMBOL.size
        if link >= len(sections) or size // entsize > MAX_SYMBOLS:
            raise NotElf("malformed .dynsym")
        strings = _read(file, sections[link][4], sections[link][5])
        table = _read(file, offset, size)
        for i in range(size // entsize):
            name_at, _, _, shndx, value, _ = _SYMBOL.unpack_from(table, i * entsize)
            if shndx == SHN_UNDEF or not value:
                continue
            end = strings.find(b"\0", name_at)
            name = strings[name_at:end]
            if name in names:
                found[name.decode()] = value
    return ElfSymbols(bias, found, loads)


def _loads(file: BinaryIO, phoff: int, phentsize: int, phnum: int) -> tuple[tuple[int, int, int], ...]:
    loads = []
    for i in range(phnum):
        kind, _, offset, vaddr, _, filesz, _, _ = _PROGRAM.unpack(_read(file, phoff + i * phentsize, _PROGRAM.size))
        if kind == PT_LOAD:
            loads.append((vaddr, offset, filesz))
    return tuple(loads)


def _read(file: BinaryIO, offset: int, size: int) -> bytes:
    file.seek(offset)
    data = file.read(size)
    if len(data) != size:
        raise NotElf("truncated ELF file")
    return data
