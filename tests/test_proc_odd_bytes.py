"""A process's name and the names of the files it maps are bytes of its own choosing, shown in
/proc as they are: what vramtop reads there works whatever they are, UTF-8 or not. (The kernel
cuts a name at 15 bytes: a name of Cyrillic letters is cut in the middle of a character.)"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vramtop.inject._target import process_state, read_maps
from vramtop.sources.hostinfo import pid_namespace_of

CUT_NAME = "обучение".encode()[:15]  # 16 bytes cut to 15: the last character half there

ODD_CHILD = """
import mmap, sys, time
open("/proc/self/comm", "wb").write(CUT_NAME)
with open(sys.argv[1].encode("utf-8", "surrogateescape"), "rb") as f:
    mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def odd_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A process with a name cut mid-character that maps a file whose name is not UTF-8."""
    odd_file = Path(os.fsdecode(bytes(tmp_path) + b"/weights-\xff\xfe.bin"))
    odd_file.write_bytes(b"\0" * 4096)
    code = ODD_CHILD.replace("CUT_NAME", repr(CUT_NAME))
    child = subprocess.Popen([sys.executable, "-c", code, str(odd_file)], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        yield child, odd_file
    finally:
        child.kill()
        child.wait()


def test_the_odd_process_is_what_it_says(odd_process):
    child, _ = odd_process
    assert Path(f"/proc/{child.pid}/comm").read_bytes() == CUT_NAME + b"\n"


def test_its_pid_in_its_namespace_is_read_past_a_name_that_is_not_utf8(odd_process):
    child, _ = odd_process
    namespace, inner = pid_namespace_of(child.pid)  # inner was None: the status did not decode
    assert namespace == os.stat("/proc/self/ns/pid").st_ino
    assert inner == child.pid  # the same namespace as this test's


def test_its_state_for_attach_shows_the_name_as_ps_does(odd_process):
    child, _ = odd_process
    state = process_state(child.pid)  # raised UnicodeDecodeError, a traceback from `vramtop attach`
    assert state.name == "обучени\ufffd" and state.uid == os.getuid()
    assert "-c" in state.command


def test_its_memory_map_names_a_file_that_is_not_utf8_as_the_file_system_does(odd_process):
    child, odd_file = odd_process
    paths = [m.path for m in read_maps(child.pid)]  # raised UnicodeDecodeError
    assert str(odd_file) in paths
    assert os.path.exists(str(odd_file))  # the name read opens the file


def test_whether_it_may_trace_does_not_depend_on_its_name():
    def may_trace(name: bytes) -> bytes:
        code = (f"open('/proc/self/comm', 'wb').write({name!r})\n"
                "from vramtop.inject._policy import has_cap_sys_ptrace\n"
                "print(has_cap_sys_ptrace())")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout

    assert may_trace(CUT_NAME) == may_trace(b"training")  # was False with the cut name, for root too


def test_an_agents_beacon_that_is_not_utf8_or_nested_past_the_stack_is_no_beacon(tmp_path):
    from vramtop.sources.agent import read_beacon

    (tmp_path / "101.json").write_bytes(b'{"pid": "\xff\xfe"}')
    (tmp_path / "102.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    (tmp_path / "103.json").write_text('{"pid": 103}')
    assert read_beacon(tmp_path, 101) is None
    assert read_beacon(tmp_path, 102) is None
    assert read_beacon(tmp_path, 103) == {"pid": 103}  # the reader itself works


def test_an_attach_marker_that_is_not_utf8_is_shown_with_its_bytes_replaced(tmp_path):
    from vramtop.inject._bootstrap import marker_path, wait_for_agent
    from vramtop.inject.errors import AttachError

    marker_path(os.getpid(), tmp_path).write_bytes(b"failed: \xcf\xf0\xee\xe1\xeb\xe5\xec\xe0 (cp1251)")
    with pytest.raises(AttachError, match=r"the agent did not start in PID \d+: \ufffd+ \(cp1251\)"):
        wait_for_agent(os.getpid(), tmp_path, 5)
