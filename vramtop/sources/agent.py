"""Client side of the agent socket: finds running agents and keeps the latest sample of each.

Each connection reads on its own daemon thread, so a hung or slow agent never delays the
monitor; ``AgentSource.poll()`` only takes what has arrived.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import struct
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from vramtop.codec import DecodeError, from_dict, to_dict
from vramtop.model import AgentEvent, AgentSample, OomReport
from vramtop.protocol import (
    FrameDecoder,
    InsecureDirectory,
    ProtocolError,
    check_hello,
    encode_frame,
    ensure_private_dir,
    hello,
    postmortem_files,
    read_postmortem,
    runtime_dir,
)

RESCAN_S = 2.0
CONNECT_TIMEOUT_S = 2.0


class AgentUnavailable(Exception):
    """An agent socket that cannot be used, with the reason in words."""


def _alive(pid: int) -> bool:
    if pid <= 0:  # kill() would ask about a process group, not a process
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: past what a pid_t holds
        return False
    except PermissionError:
        return True
    return True


class AgentConnection:
    """One connected agent. ``latest`` is its newest sample; ``error`` says why it stopped."""

    def __init__(self, path: Path, pid: int) -> None:
        self.path = path
        self.pid = pid
        # The newest sample as it came off the wire, numbered; it is decoded only when read: an
        # agent sends 4 a second, a monitor at 1 s reads one of them. Tuples swap atomically.
        self._wire: tuple[int, Any] = (0, None)
        self._decoded: tuple[int, AgentSample | None] = (0, None)
        self.events: deque[dict[str, Any]] = deque(maxlen=256)
        self.error: str | None = None
        self.closed = threading.Event()
        self.connected_at = time.time()
        self._sock: socket.socket | None = None

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # A blocking connect bounded by the kernel's send timeout waits its turn when the agent's
        # listen backlog is full (it paces new connections); Python's own timeout would make the
        # socket non-blocking, and a full backlog then fails at once with EAGAIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(CONNECT_TIMEOUT_S), 0))
        try:
            sock.connect(str(self.path))
        except OSError as err:
            sock.close()
            raise AgentUnavailable(_connect_error(err, self.pid)) from None
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            # Ask for the latest sample at once: a one-shot reader need not wait for the next tick.
            sock.sendall(encode_frame(hello("monitor")) + encode_frame({"type": "request", "what": "sample"}))
        except (BrokenPipeError, ConnectionResetError):
            pass  # it hung up on us: the reader reads why ("agent busy: N clients")
        except OSError as err:
            sock.close()
            raise AgentUnavailable(_connect_error(err, self.pid)) from None
        sock.settimeout(None)
        self._sock = sock
        threading.Thread(target=self._read_loop, name=f"vramtop-agent-{self.pid}", daemon=True).start()

    @property
    def latest(self) -> AgentSample | None:
        number, raw = self._wire
        if number != self._decoded[0]:
            sample = self._decoded[1]
            try:
                sample = from_dict(AgentSample, raw)
            except DecodeError as err:  # as if the reader had found it: the connection ends
                self.error = f"malformed data from the agent of PID {self.pid}: {err}"
                self.close()
            self._decoded = (number, sample)
        return self._decoded[1]

    def close(self) -> None:
        self.closed.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self._sock.close()

    def _read_loop(self) -> None:
        assert self._sock is not None
        decoder = FrameDecoder()
        greeted = False
        try:
            while not self.closed.is_set():
                data = self._sock.recv(65536)
                if not data:
                    self.error = self.error or "the agent closed the connection (process exited?)"
                    return
                for message in decoder.feed(data):
                    if not greeted:
                        check_hello(message)
                        greeted = True
                    elif message["type"] == "sample":
                        self._wire = (self._wire[0] + 1, message.get("sample"))
                    elif message["type"] == "event":
                        self.events.append(message)
                    elif message["type"] == "error":
                        self.error = f"the agent refused: {message.get('message')}"
        except (ProtocolError, DecodeError) as err:
            self.error = f"malformed data from the agent of PID {self.pid}: {err}"
        except OSError as err:
            if not self.closed.is_set():
                self.error = f"connection to the agent of PID {self.pid} failed: {err.strerror or err}"
        finally:
            self.close()


def _connect_error(err: OSError, pid: int) -> str:
    if err.errno in (errno.ECONNREFUSED, errno.ENOENT):
        return f"no agent is listening for PID {pid} (stale socket)"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied connecting to the agent of PID {pid}"
    if isinstance(err, TimeoutError) or err.errno == errno.EAGAIN:  # EAGAIN: its backlog stayed full
        return f"the agent of PID {pid} did not answer"
    return f"cannot connect to the agent of PID {pid}: {err.strerror or err}"


class AgentSource:
    """All agents of this user (or only ``pids``), found in the runtime directory."""

    def __init__(self, directory: Path | None = None, pids: set[int] | None = None) -> None:
        self.directory = directory or runtime_dir()
        self.pids = pids
        self.connections: dict[int, AgentConnection] = {}
        self.problems: dict[int, str] = {}  # PID -> why its agent is not connected
        self.directory_problem: str | None = None
        self._last_scan = -RESCAN_S
        self._lock = threading.Lock()
        self._ended: list[dict[str, Any]] = []  # events of connections that have closed
        self._ooms_seen: set[tuple[int, float]] = set()  # (PID, time) of OOM events handed out

    def poll(self, wait: float = 0.0) -> tuple[AgentSample, ...]:
        """The latest sample of every connected agent; ``wait`` seconds at most for agents that
        have not sent one yet (a one-shot reader wants them all)."""
        with self._lock:
            if time.monotonic() - self._last_scan >= RESCAN_S:
                self._scan()
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(
                c.latest is None and not c.closed.is_set() for c in self.connections.values()
            ):
                time.sleep(0.01)
            for pid, conn in list(self.connections.items()):
                if conn.closed.is_set():
                    self.problems[pid] = conn.error or "disconnected"
                    del self.connections[pid]
                    # What it sent last (an OOM just before it died) still counts, and so does
                    # a post-mortem it wrote when the socket could not carry it in time.
                    self._ended.extend(conn.events)
                    conn.events.clear()
                    self._ended.extend(self.postmortems(pid, since=conn.connected_at))
            return tuple(c.latest for c in self.connections.values() if c.latest is not None)

    def visible_problems(self) -> tuple[str, ...]:
        """What a user must be told: an unsafe directory (no agent can serve there) and agents of
        live processes that cannot be read; not the agents of processes that simply ended."""
        out = []
        if self.directory_problem:
            out.append(f"agents cannot be read: {self.directory_problem}. Set XDG_RUNTIME_DIR to a private "
                       "directory (e.g. /run/user/$UID) for vramtop and the training job, or remove that one")
        out.extend(f"PID {pid}: {problem}" for pid, problem in sorted(self.problems.items())
                   if _alive(pid) and "closed the connection" not in problem)
        return tuple(out)

    def settle(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for connections to agents whose processes have exited
        to read their last frames and close (used when a recorded command has ended)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                open_ = [c for c in self.connections.values() if not c.closed.is_set() and not _alive(c.pid)]
            if not open_:
                return
            time.sleep(0.01)

    def drain_events(self) -> list[dict[str, Any]]:
        """Events that arrived since the last call (each OOM once, from the socket or its file)."""
        with self._lock:
            events, self._ended = self._ended, []
            for conn in self.connections.values():
                while conn.events:
                    events.append(conn.events.popleft())
        out = []
        for event in events:
            if event.get("kind") == "oom":
                key = _oom_key(event)
                if key in self._ooms_seen:
                    continue
                self._ooms_seen.add(key)
            out.append(event)
        return out

    def postmortems(self, pid: int, since: float) -> list[dict[str, Any]]:
        """OOM events, from post-mortem files, of ``pid`` at ``since`` or later."""
        events = []
        for path in postmortem_files(self.directory, pid):
            report = read_postmortem(path)
            if report is not None and report.time >= since - 1.0:
                events.append(oom_event(pid, report))
        return events

    def close(self) -> None:
        for conn in self.connections.values():
            conn.close()
        self.connections.clear()

    def _scan(self) -> None:
        self._last_scan = time.monotonic()
        if not self.directory.exists():
            return
        try:
            ensure_private_dir(self.directory, create=False)
        except (InsecureDirectory, OSError) as err:
            # Never talk to sockets in a directory someone else could have planted them in.
            self.directory_problem = str(err)
            return
        self.directory_problem = None
        for path in self.directory.glob("*.sock"):
            try:
                pid = int(path.stem)
            except ValueError:
                continue
            if (self.pids is not None and pid not in self.pids) or pid in self.connections:
                continue
            conn = AgentConnection(path, pid)
            try:
                conn.connect()
            except AgentUnavailable as err:
                self.problems[pid] = str(err)
                if not _alive(pid) or _reused(self.directory, pid):
                    remove_stale(self.directory, pid)
                continue
            self.problems.pop(pid, None)
            self.connections[pid] = conn


def typed_events(messages: list[dict[str, Any]]) -> tuple[list[AgentEvent], int]:
    """Agent event frames as typed events, and how many did not validate (agent input is
    untrusted: a malformed event is dropped, never raised)."""
    out, bad = [], 0
    for message in messages:
        pid, data = message.get("pid"), message.get("data")
        if message.get("kind") != "oom" or not isinstance(pid, int) or isinstance(pid, bool):
            bad += 1
            continue
        try:
            report = from_dict(OomReport, data)
        except (DecodeError, TypeError, ValueError, RecursionError):
            bad += 1
            continue
        out.append(AgentEvent("oom", pid, report.time, report))
    return out, bad


def oom_event(pid: int, report: OomReport) -> dict[str, Any]:
    """An OOM as the agent sends it over the socket."""
    return {"type": "event", "kind": "oom", "pid": pid, "data": to_dict(report)}


def _oom_key(event: dict[str, Any]) -> tuple[int, float]:
    data = event.get("data")
    when = data.get("time") if isinstance(data, dict) else None
    pid = event.get("pid")
    return (pid if isinstance(pid, int) else -1, float(when) if isinstance(when, int | float) else -1.0)


def _reused(directory: Path, pid: int) -> bool:
    """Whether ``pid`` now belongs to a process that started after the agent that left this
    socket (its beacon's start time): the socket is stale even though the PID is alive."""
    beacon = read_beacon(directory, pid)
    started = beacon.get("started") if beacon else None
    if not isinstance(started, int | float):
        return False
    try:
        import psutil

        return bool(psutil.Process(pid).create_time() > started + 1.0)
    except Exception:
        return False


def remove_stale(directory: Path, pid: int) -> None:
    """Delete the socket and beacon of an agent whose process is gone (and the word a
    ``vramtop attach`` bootstrap left for an attach that stopped waiting)."""
    for suffix in (".sock", ".json", ".attach"):
        with contextlib.suppress(OSError):
            (directory / f"{pid}{suffix}").unlink()


def read_beacon(directory: Path, pid: int) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / f"{pid}.json").read_text())
    except (OSError, ValueError, RecursionError):  # not UTF-8 or JSON, nested past the stack
        return None
    return data if isinstance(data, dict) else None
