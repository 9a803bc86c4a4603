"""The agent server's share of the training process is bounded: CPU per window of wall time,
new connections per second (a real monitor still waits its turn and gets in), garbage refused
at its first bytes."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from vramtop.agent import _server, _throttle
from vramtop.agent._server import AgentServer, _Client
from vramtop.protocol import (
    AGENT_PROTOCOL_MAX,
    AGENT_PROTOCOL_MIN,
    FrameDecoder,
    ProtocolError,
    encode_frame,
    hello,
)
from vramtop.sources.agent import AgentConnection

from .waiting import wait_for


def serve(directory: Path) -> AgentServer:
    beacon = {"pid": os.getpid(), "started": time.time(), "protocol": [AGENT_PROTOCOL_MIN, AGENT_PROTOCOL_MAX]}
    server = AgentServer(directory, beacon, lambda request: None)
    server.start()
    return server


def connect(server: AgentServer) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(server.path))
    return s


def greeted(s: socket.socket) -> bool:
    try:
        return bool(s.recv(65536, socket.MSG_DONTWAIT | socket.MSG_PEEK))
    except BlockingIOError:
        return False


def read_until_hung_up(s: socket.socket, timeout: float) -> bytes:
    s.settimeout(timeout)
    received = b""
    while chunk := s.recv(65536):
        received += chunk
    return received


@pytest.fixture
def paced(monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(_throttle, "ACCEPTS_PER_S", 10.0)
    monkeypatch.setattr(_throttle, "ACCEPT_BURST", 2)
    server = serve(tmp_path / "vramtop")
    yield server
    server.stop()


def test_new_connections_are_taken_in_a_burst_then_at_the_paced_rate(paced):
    clients = [connect(paced) for _ in range(6)]  # they fit in the listen backlog
    try:
        time.sleep(0.15)
        assert sum(greeted(s) for s in clients) <= 2 + 2  # the burst, and at most 0.15 s at 10/s
        deadline = time.monotonic() + 10
        while not all(greeted(s) for s in clients) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert all(greeted(s) for s in clients)  # none is refused: the rest only waited
    finally:
        for s in clients:
            s.close()


def test_a_monitor_waits_its_turn_in_a_full_backlog_rather_than_failing(paced):
    # Fill the listen backlog: a non-blocking connect is refused (EAGAIN) once it is full.
    held = []
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(str(paced.path))
        except BlockingIOError:
            s.close()
            break
        held.append(s)
        assert len(held) < 1000
    monitor = AgentConnection(paced.path, os.getpid())
    try:
        monitor.connect()  # once raised "Resource temporarily unavailable" at once
    finally:
        monitor.close()
        for s in held:
            s.close()


def test_a_first_frame_that_is_not_a_json_object_is_refused_before_it_is_even_whole(tmp_path):
    server = serve(tmp_path / "vramtop")
    try:
        rogue = connect(server)
        rogue.sendall(struct.pack(">I", 3000) + b"[[[[")  # 2,996 bytes never come
        received = read_until_hung_up(rogue, timeout=3)  # not the 5 s hello deadline
        rogue.close()
        first, error = FrameDecoder().feed(received)
        assert first["type"] == "hello" and "not a JSON object" in error["message"]
    finally:
        server.stop()


def test_a_first_frame_bigger_than_a_hello_is_refused_unread_and_a_monitor_may_then_ask_more(tmp_path):
    server = serve(tmp_path / "vramtop")
    try:
        rogue = connect(server)
        rogue.sendall(struct.pack(">I", 8192) + b"{")
        _, error = FrameDecoder().feed(read_until_hung_up(rogue, timeout=3))
        rogue.close()
        assert "8192 bytes announced" in error["message"]
        # After its hello a client may send the larger requests it always could.
        monitor = connect(server)
        monitor.sendall(encode_frame(hello("monitor")))
        time.sleep(0.2)
        monitor.sendall(encode_frame({"type": "request", "what": "sample", "pad": "x" * 8192}))
        time.sleep(0.3)
        assert server.client_count == 1
        monitor.close()
    finally:
        server.stop()


def test_the_frame_decoder_refuses_a_frame_at_its_first_byte_if_it_is_not_an_object():
    with pytest.raises(ProtocolError, match="not a JSON object"):
        FrameDecoder().feed(struct.pack(">I", 100) + b"[")
    with pytest.raises(ProtocolError, match="not a JSON object"):
        FrameDecoder().feed(struct.pack(">I", 0))
    assert FrameDecoder().feed(struct.pack(">I", 100) + b"{") == []  # an object: wait for the rest


def test_a_work_budget_bounds_a_busy_threads_cpu_per_window():
    budget = _throttle.WorkBudget(budget_s=0.002, window_s=0.02)
    used: list[float] = []

    def busy() -> None:
        cpu, end = time.thread_time(), time.monotonic() + 0.5
        while time.monotonic() < end:
            spin = time.thread_time() + 0.0002
            while time.thread_time() < spin:
                pass
            budget.pause()
        used.append(time.thread_time() - cpu)

    thread = threading.Thread(target=busy)
    thread.start()
    thread.join()
    # 0.5 s is 25 windows of 2 ms each (and a chunk over in each): ~10% of the wall time, where
    # the loop alone would use all of it. Twice that is allowed for a busy machine's noise.
    assert used[0] < 0.1
    assert budget.pauses > 0


def test_frames_the_budget_left_over_are_written_in_the_next_window_not_a_second_later(monkeypatch, tmp_path):
    # A budget that covers one or two writes per window: one publish to eight monitors needs
    # several windows, and nothing else wakes the server meanwhile (its idle select waits 1 s).
    monkeypatch.setattr(_throttle, "WORK_BUDGET_S", 20e-6)
    monkeypatch.setattr(_throttle, "WORK_WINDOW_S", 0.01)
    server = serve(tmp_path / "vramtop")
    monitors = []
    try:
        for _ in range(8):
            s = connect(server)
            s.sendall(encode_frame(hello("monitor")))
            monitors.append(s)
        deadline = time.monotonic() + 10
        while server.client_count < 8 or not all(greeted(s) for s in monitors):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(1.5)  # every hello read; the server waits in its idle select
        for s in monitors:
            FrameDecoder().feed(s.recv(65536))
        server.publish({"type": "sample", "n": 1})
        started = time.monotonic()
        for s in monitors:
            s.settimeout(5)
            decoder = FrameDecoder()
            while not (messages := decoder.feed(s.recv(65536))):
                pass
            assert messages[0]["n"] == 1
        assert time.monotonic() - started < 0.5  # before the fix: up to a second per window's leftovers
    finally:
        for s in monitors:
            s.close()
        server.stop()


def counting_server(directory: Path) -> tuple[AgentServer, list[dict[str, object]]]:
    """A server that answers every request with a small frame, and keeps what it was asked."""
    asked: list[dict[str, object]] = []

    def respond(request: dict[str, object]) -> dict[str, object]:
        asked.append(request)
        return {"type": "answer", "n": len(asked)}

    beacon = {"pid": os.getpid(), "started": time.time(), "protocol": [AGENT_PROTOCOL_MIN, AGENT_PROTOCOL_MAX]}
    server = AgentServer(directory, beacon, respond)
    server.start()
    return server, asked


def flood_until_blocked(s: socket.socket, requests: int, give_up: float) -> int:
    """Say hello and send ``requests`` requests without reading; bytes sent once send blocks."""
    s.setblocking(False)
    payload = encode_frame(hello("monitor")) + encode_frame({"type": "request", "what": "sample"}) * requests
    sent = 0
    deadline = time.monotonic() + give_up
    while sent < len(payload) and time.monotonic() < deadline:
        try:
            sent += s.send(payload[sent : sent + 65536])
        except BlockingIOError:
            return sent
    raise AssertionError(f"the server read all {sent} bytes it was sent")


def test_a_flood_is_decoded_no_faster_than_its_budget_and_the_rest_waits_in_its_socket(tmp_path):
    # Before: every request of each 64 KiB read was decoded (~1,600 at once, holding the GIL),
    # then the client was dropped, reconnected and did it again.
    server, asked = counting_server(tmp_path / "vramtop")
    flood = connect(server)
    try:
        started = time.monotonic()
        sent = flood_until_blocked(flood, 200_000, give_up=10)  # 8 MB: the socket fills long before
        assert sent < 200_000 * 40
        time.sleep(1.5)  # two windows of the flooder's budget, at least
        # A monitor that connects meanwhile has its request answered in its first second.
        monitor = connect(server)
        monitor.sendall(encode_frame(hello("monitor")) + encode_frame({"type": "request", "what": "sample"}))
        monitor.settimeout(1.0)
        decoder = FrameDecoder()
        messages: list[dict[str, object]] = []
        while len(messages) < 2:
            messages += decoder.feed(monitor.recv(65536))
        assert [m["type"] for m in messages[:2]] == ["hello", "answer"]
        monitor.close()
        elapsed = time.monotonic() - started
        flooded = len(asked) - 1
        assert 0 < flooded <= _throttle.CLIENT_REQUESTS_PER_S * (int(elapsed) + 2)  # of ~200,000 sent
        assert server.client_count >= 1  # the flooder is held, muted: not dropped to reconnect
    finally:
        flood.close()
        server.stop()


def test_requests_of_all_clients_together_are_paced_yet_each_clients_first_is_read_at_once(monkeypatch, tmp_path):
    monkeypatch.setattr(_throttle, "REQUESTS_PER_S", 10.0)
    monkeypatch.setattr(_throttle, "REQUEST_BURST", 2)
    server, asked = counting_server(tmp_path / "vramtop")
    clients = [connect(server) for _ in range(4)]
    try:
        started = time.monotonic()
        request = encode_frame({"type": "request", "what": "sample", "client": 0})
        for n, s in enumerate(clients):
            s.sendall(encode_frame(hello("monitor")) + request.replace(b'"client":0', f'"client":{n}'.encode()) * 10)
        deadline = time.monotonic() + 5
        while {r["client"] for r in asked} != {0, 1, 2, 3}:
            assert time.monotonic() < deadline  # each client's first request is read at once
            time.sleep(0.01)
        time.sleep(1.0)
        elapsed = time.monotonic() - started
        # The shared budget: its burst and 10 a second, and a first request per client per second.
        assert len(asked) <= 2 + 10 * elapsed + 4 * (int(elapsed) + 1)
        assert len(asked) < 40  # not everything they sent
    finally:
        for s in clients:
            s.close()
        server.stop()


def stall(server: AgentServer, silent: socket.socket, fill: bool = True) -> _Client:
    """Say hello on ``silent`` and publish until the server finds it reads nothing: its client.
    ``fill``: publish until its socket is full (a frame is left waiting to be written), else only
    past the stall threshold (then nothing is left to write: it leaves the selector altogether)."""
    silent.sendall(encode_frame(hello("monitor")))
    wait_for(lambda: server.client_count == 1 and server.wants_samples(), timeout=30)
    (client,) = server._clients.values()
    sample = {"type": "sample", "pad": "x" * 1000}

    def stalled() -> bool:  # 16 KiB unread and none of it read between two looks
        if fill or _server._unread_bytes(client.sock) < 2 * _server.STALL_UNREAD:
            server.publish(sample)
        return not server.wants_samples()

    wait_for(stalled, timeout=30, step=0.01)
    assert client.stalled
    return client


def test_a_client_that_reads_nothing_is_stalled_sent_nothing_then_served_again_once_it_reads(tmp_path):
    server, _ = counting_server(tmp_path / "vramtop")
    silent = connect(server)
    try:
        client = stall(server, silent)
        sample = {"type": "sample", "pad": "x" * 1000}
        queued, dropped = len(client.queue), server.dropped
        for _ in range(10):
            server.publish(sample)
        assert len(client.queue) == queued and server.dropped == dropped + 10  # nothing queued for it
        # It reads what it was sent: within a couple of looks it is sent samples again.
        silent.settimeout(0.2)
        with contextlib.suppress(TimeoutError):
            while silent.recv(1 << 20):
                pass
        deadline = time.monotonic() + 5
        while not server.wants_samples():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.publish({"type": "sample", "fresh": True})
        silent.settimeout(2)
        decoder = FrameDecoder()
        messages: list[dict[str, object]] = []
        while not any(m.get("fresh") for m in messages):
            messages += decoder.feed(silent.recv(1 << 20))
    finally:
        silent.close()
        server.stop()


def open_fds() -> set[tuple[str, str]]:
    """Each open fd and what it is (``socket:[inode]``...), but the listing's own: closed once
    listed (its number is the lowest free one, which another thread's closing can change)."""
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            fds.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
    return fds


def receives_samples(server: AgentServer, monitor: socket.socket, decoder: FrameDecoder) -> bool:
    """Publish one sample and read what ``monitor`` is sent until it is a sample (or a pause)."""
    server.publish({"type": "sample", "fresh": True})
    with contextlib.suppress(TimeoutError):
        while chunk := monitor.recv(65536):
            if any(m.get("fresh") for m in decoder.feed(chunk)):
                return True
    return False


def assert_dropped_and_replaced(server: AgentServer, client: _Client, threads: set[threading.Thread],
                                fds: set[tuple[str, str]]) -> None:
    """``client`` is gone, its socket closed, and a new monitor is served in its place."""
    wait_for(lambda: server.client_count == 0, timeout=30)
    assert client.sock.fileno() == -1
    assert open_fds() <= fds  # the server's end of it closed, nothing else left open
    assert set(threading.enumerate()) <= threads  # (an earlier test's server may still be ending)
    monitor = connect(server)
    try:
        monitor.sendall(encode_frame(hello("monitor")))
        monitor.settimeout(0.2)
        decoder = FrameDecoder()
        wait_for(lambda: receives_samples(server, monitor, decoder), timeout=30)
    finally:
        monitor.close()


@pytest.mark.parametrize("fill", [True, False], ids=["socket-full", "nothing-left-to-write"])
def test_a_stalled_client_that_hangs_up_is_dropped_its_socket_closed_and_a_new_monitor_served(tmp_path, fill):
    server, _ = counting_server(tmp_path / "vramtop")
    try:
        threads, fds = set(threading.enumerate()), open_fds()
        silent = connect(server)
        client = stall(server, silent, fill)
        # Not read any more; watched, if at all, only for room to write the frame it was left
        # (a frame queued as it was found stalled is written first: wait for that).
        wait_for(lambda: client.events == (selectors.EVENT_WRITE if fill else 0))
        silent.close()
        assert_dropped_and_replaced(server, client, threads, fds)
    finally:
        server.stop()


def test_a_stalled_client_that_hangs_up_is_dropped_even_where_its_unread_bytes_stay_counted(monkeypatch, tmp_path):
    # Linux forgets the unread bytes of a peer that closed, so the next look un-stalls the client
    # and reads its end of file. A system that kept counting them would leave it stalled, never
    # read, its place and socket held for good: the hang-up itself must be noticed.
    kept: list[tuple[socket.socket, int]] = []
    real = _server._unread_bytes

    def unread_bytes(sock: socket.socket) -> int:
        return next((count for held, count in kept if held is sock), None) or real(sock)

    monkeypatch.setattr(_server, "_unread_bytes", unread_bytes)
    server, _ = counting_server(tmp_path / "vramtop")
    try:
        threads, fds = set(threading.enumerate()), open_fds()
        silent = connect(server)
        client = stall(server, silent, fill=False)  # out of the selector: nothing wakes for it
        kept.append((client.sock, max(client.unread, _server.STALL_UNREAD)))
        silent.close()
        assert_dropped_and_replaced(server, client, threads, fds)
    finally:
        server.stop()
