"""The agent's Unix-socket server: one daemon thread, never blocks the publisher.

Each client has a bounded queue of encoded frames. ``publish`` only appends to those queues
(dropping the oldest frame, and counting it, when a client is slow) and wakes the server
thread, which does all socket I/O with non-blocking calls. A client that hangs, disconnects
or sends garbage costs at most its own queue and is dropped; nothing it sends can change the
process (requests are read-only). The thread's own share of the process is bounded too
(_throttle.py): work per window of wall time, new connections per second, requests per second.

Every moment this thread runs Python is a moment the training thread waits for the GIL, so what
a client does not need is not done: a client past its request budget is not read (its requests
wait, undecoded, in its socket), and a client that does not read what it is sent (its socket
holds 16 KiB it has not read, and it read none of them in half a second) is neither written to
nor read until it does, and no sample is built for it alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import json
import os
import select
import selectors
import socket
import struct
import termios
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vramtop.agent import _throttle
from vramtop.protocol import (
    FrameDecoder,
    ProtocolError,
    beacon_path,
    check_hello,
    encode_frame,
    ensure_private_dir,
    hello,
    peer_uid,
    socket_path,
)

MAX_CLIENTS = 128  # monitors, recorders, exporters of one job: room for many, evicting the stalled
QUEUE_FRAMES = 32  # per client: 8 s of samples at the default rate; a slower reader loses old ones
HELLO_DEADLINE = 5.0  # seconds a new client has to say hello
HELLO_MAX_BYTES = 4096  # a hello is ~100 bytes: a bigger first frame is refused unread
# Unread bytes (as the kernel counts them, with its overhead: a sample of 1 KB counts ~2 KB) past
# which a client that read none of them between two looks is stalled: sent nothing, built nothing for.
STALL_UNREAD = 16 * 1024
LOOK_EVERY = 0.5  # seconds between looks at every client (its hello deadline, whether it reads)
_RECV = 65536


class _Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.queue: deque[bytes] = deque()
        self.partial = b""  # unsent tail of the frame being written
        self.decoder = FrameDecoder(max_bytes=HELLO_MAX_BYTES)  # raised once it said hello
        self.greeted = False
        self.dropped = 0
        self.requests = 0  # in the current one-second window
        self.window_start = 0.0
        self.muted_until = 0.0  # not read before this monotonic time (0: read as data comes)
        self.stalled = False  # it reads nothing of what it is sent: no frame is made for it
        self.unread = 0  # bytes it had not read at the last look (-1: the system cannot say)
        self.since = time.monotonic()  # when it connected
        self.events = selectors.EVENT_READ  # what the selector watches for it (no lookup per turn)
        # Held while writing to the socket: the server thread and send_now (an OOM, from the
        # failing thread) must not interleave the bytes of two frames.
        self.sending = threading.Lock()


class AgentServer:
    def __init__(self, directory: Path, beacon: dict[str, Any],
                 respond: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
        self.directory = directory
        self.pid = os.getpid()
        self.path = socket_path(self.pid, directory)
        self.beacon_file = beacon_path(self.pid, directory)
        self._beacon = beacon
        self._respond = respond  # answers a client's read-only request
        self._clients: dict[int, _Client] = {}
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopped = threading.Event()
        self.dropped = 0
        self.rejected = 0
        self.error: str | None = None  # the server's last internal error (it keeps serving)
        # The last message encoded and its frame, as one tuple (two threads read and write it).
        self._last_encoded: tuple[dict[str, Any], bytes] | None = None
        self._hello = encode_frame(hello("agent", pid=self.pid))  # the same for every client
        self._budget = _throttle.WorkBudget(_throttle.WORK_BUDGET_S, _throttle.WORK_WINDOW_S)
        self._accepts = _throttle.TokenBucket(_throttle.ACCEPTS_PER_S, _throttle.ACCEPT_BURST)
        self._requests = _throttle.TokenBucket(_throttle.REQUESTS_PER_S, _throttle.REQUEST_BURST)
        self._muted: list[tuple[float, int, _Client]] = []  # a heap: when each muted client is read again
        self._mutes = 0  # how often a client was muted (the tie-breaker of equal times in the heap)
        self.decoded = 0  # requests decoded and answered, from every client (tests read it)
        self._listening = False  # the listener is in the selector only while a new client may come
        # Clients with frames to send. They are written to on the server's next turn, and watched
        # for EVENT_WRITE only while their socket is full: no per-client work for idle clients,
        # and none for a frame that fits (nearly all of them), however many clients are connected.
        self._pending: set[_Client] = set()
        self._next_look = 0.0

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        ensure_private_dir(self.directory)
        # A socket file with our PID is left over from a dead process that had the same PID.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket file is created 0600
        try:
            listener.bind(str(self.path))
        finally:
            os.umask(old_umask)
        listener.listen(8)
        listener.setblocking(False)
        self._listener = listener
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.write_beacon(self._beacon)
        threading.Thread(target=self._serve, name="vramtop-agent-server", daemon=True).start()

    def write_beacon(self, beacon: dict[str, Any]) -> None:
        """``<pid>.json``: who we are, for monitors listing agents. Written atomically, 0600."""
        self._beacon = beacon
        # A name of this thread's own: two threads may write it at once (the sampler, and the
        # training thread when its first step finds a device first).
        tmp = self.beacon_file.with_name(f".{self.beacon_file.stem}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(beacon).encode())
        finally:
            os.close(fd)
        os.replace(tmp, self.beacon_file)

    def stop(self, unlink: bool = True) -> None:
        """Close everything; remove our files only if we are the process that made them."""
        self._stopped.set()
        self._wake()
        if unlink and os.getpid() == self.pid:
            for path in (self.path, self.beacon_file):
                with contextlib.suppress(OSError):
                    path.unlink()

    def abandon_after_fork(self) -> None:
        """In a forked child: close our copies of the sockets without touching the files."""
        self._stopped.set()
        for sock in [self._listener, self._wake_r, self._wake_w] + [c.sock for c in self._clients.values()]:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        self._clients.clear()

    # -- publishing (called from the sampler thread) ------------------------------------------

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def wants_samples(self) -> bool:
        """Whether a published sample would reach anyone: a client that said hello and reads."""
        return any(c.greeted and not c.stalled for c in list(self._clients.values()))

    def publish(self, message: dict[str, Any]) -> None:
        if not self._clients:
            return
        frame = encode_frame(message)
        self._last_encoded = (message, frame)  # a request for the same sample takes these bytes
        with self._lock:
            for client in [c for c in self._clients.values() if c.greeted]:
                if client.stalled:  # it reads nothing: what would be queued is dropped at once
                    client.dropped += 1
                    self.dropped += 1
                    continue
                if len(client.queue) >= QUEUE_FRAMES:
                    client.queue.popleft()  # a slow monitor loses old frames, never blocks us
                    client.dropped += 1
                    self.dropped += 1
                client.queue.append(frame)
                self._pending.add(client)
        self._wake()

    def send_now(self, message: dict[str, Any], timeout: float) -> None:
        """Write ``message`` to every greeted client from this thread, within ``timeout`` seconds
        in all: for what must reach monitors before the process can die (an OOM's post-mortem).
        A frame cut off by the deadline is finished later by the server thread."""
        frame = encode_frame(message)
        deadline = time.monotonic() + timeout
        with self._lock:
            clients = [c for c in self._clients.values() if c.greeted]
        for client in clients:
            # A stalled client would spend the deadline of every monitor after it waiting for
            # room in its socket: the frame waits in its queue, first, for when it reads.
            if client.stalled or not client.sending.acquire(timeout=max(0.0, deadline - time.monotonic())):
                with self._lock:
                    client.queue.appendleft(frame)
                    self._pending.add(client)
                continue
            try:
                pending = client.partial + frame  # finish the frame in flight first
                client.partial = b""
                while pending:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        sent = client.sock.send(pending)
                    except BlockingIOError:
                        poller = select.poll()  # not select(): a training job may hold fds past 1024
                        poller.register(client.sock, select.POLLOUT)
                        poller.poll(remaining * 1000)
                        continue
                    except OSError:
                        pending = b""
                        break
                    pending = pending[sent:]
                client.partial = pending
                if pending:
                    with self._lock:
                        self._pending.add(client)
            finally:
                client.sending.release()
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # -- the server thread -------------------------------------------------------------------

    def _serve(self) -> None:
        failures = 0
        try:
            while not self._stopped.is_set():
                try:
                    self._serve_once()
                    failures = 0
                except Exception as err:  # never let one bad moment end the server for good
                    failures += 1
                    self.error = f"{type(err).__name__}: {err}"
                    if failures >= 100:
                        raise
        except Exception:
            pass
        finally:
            self._close_all()

    def _serve_once(self) -> None:
        timeout = self._pace_accepts()
        if self._muted:
            timeout = min(timeout, max(0.0, self._muted[0][0] - time.monotonic()))
        if self._pending:  # frames the budget left over: written as soon as the window opens
            timeout = 0.0
        for n, (key, events) in enumerate(self._selector.select(timeout=timeout)):
            if n and self._budget.spent():  # one event a turn at least: a slow machine still moves
                break  # what is left stays ready for the next select (level-triggered)
            if key.data == "accept":
                self._accept()
            elif key.data == "wake":
                with contextlib.suppress(OSError):
                    self._wake_r.recv(4096)
            else:
                client = self._clients.get(key.fd)
                if client is None:
                    continue
                try:
                    if events & selectors.EVENT_READ:
                        self._read(client)
                    if events & selectors.EVENT_WRITE and key.fd in self._clients:
                        self._flush(client)
                        self._watch(client)
                except Exception:  # whatever one client did, it costs only its own connection
                    self._drop(client)
        self._unmute_due()
        self._flush_pending()
        self._look_at_clients()
        self._budget.pause()

    def _pace_accepts(self) -> float:
        """Listen while the accept bucket holds a token (at most one accept per select, then);
        else leave newcomers in the backlog. The select timeout: until the next token."""
        assert self._listener is not None
        wait = self._accepts.wait()
        if (wait == 0) != self._listening:
            if self._listening:
                self._selector.unregister(self._listener)
            else:
                self._selector.register(self._listener, selectors.EVENT_READ, "accept")
            self._listening = wait == 0
        return min(1.0, wait) if wait else 1.0

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        self._accepts.take()
        try:
            uid = peer_uid(sock)
        except OSError:
            uid = -1
        # Only our own user (or root) may read this process's memory statistics.
        if uid is not None and uid not in (os.getuid(), 0):
            self.rejected += 1
            sock.close()
            return
        if len(self._clients) >= MAX_CLIENTS and not self._evict_one():
            # Every place is held by a monitor that talks: say so rather than hang up silently.
            self.rejected += 1
            with contextlib.suppress(OSError):
                busy = f"agent busy: {len(self._clients)} clients"
                sock.send(self._hello + encode_frame({"type": "error", "message": busy}))
            sock.close()
            return
        sock.setblocking(False)
        client = _Client(sock)
        # The hello goes out first, as the frame in flight: publish's cap on the queue can never
        # drop it (a client that flooded requests once got samples and no hello).
        client.partial = self._hello
        with self._lock:
            self._clients[sock.fileno()] = client
            self._pending.add(client)
        self._selector.register(sock, client.events, "client")

    def _evict_one(self) -> bool:
        """Make room for a new client: drop one that never said hello, else the one idle longest
        (a monitor reads what it is sent; a client that fills its queue and never reads does
        not). False when every client is live."""
        with self._lock:
            clients = list(self._clients.values())
        silent = [c for c in clients if not c.greeted]
        stalled = [c for c in clients if c.greeted and (c.stalled or len(c.queue) >= QUEUE_FRAMES // 2)]
        victim = min(silent or stalled, key=lambda c: c.since, default=None)
        if victim is None:
            return False
        self._drop(victim)
        return True

    def _look_at_clients(self) -> None:
        """A client has HELLO_DEADLINE seconds to say hello (idle connections once locked every
        monitor out), one that stopped reading is marked stalled (see _is_stalled), and a stalled
        one that hung up is dropped. Looked at every LOOK_EVERY seconds, not on every turn."""
        now = time.monotonic()
        if now < self._next_look:
            return
        self._next_look = now + LOOK_EVERY
        with self._lock:
            clients = list(self._clients.values())
        for client in clients:
            if not client.greeted:
                if now - client.since > HELLO_DEADLINE:
                    self._drop(client)
                continue
            # A stalled client is not read, so its end of file is never seen there: where the
            # system keeps counting what its closed peer left unread, it would stay for good.
            if client.stalled and _hung_up(client.sock):
                self._drop(client)
                continue
            stalled = self._is_stalled(client)
            if stalled != client.stalled:
                client.stalled = stalled
                self._watch(client)

    @staticmethod
    def _is_stalled(client: _Client) -> bool:
        """At least STALL_UNREAD bytes it was sent lie unread in its socket, and none of them
        was read since the last look; it stays stalled until it reads. A monitor reads on a
        thread of its own, its socket empty within milliseconds of each frame."""
        unread = _unread_bytes(client.sock)
        untouched = unread > 0 and unread >= client.unread > 0
        stalled = untouched if client.stalled else untouched and unread >= STALL_UNREAD
        client.unread = unread
        return stalled

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(_RECV)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        client.decoder.push(data)
        self._serve_requests(client)

    def _serve_requests(self, client: _Client) -> None:
        """Decode and answer what ``client`` sent, as far as its budget and the server's go: past
        them it is muted (not read) until its turn, and what is left stays undecoded."""
        now = time.monotonic()
        try:
            while True:
                if client.greeted:
                    if now - client.window_start >= 1.0:
                        client.window_start, client.requests = now, 0
                    if client.requests >= _throttle.CLIENT_REQUESTS_PER_S:
                        self._mute(client, client.window_start + 1.0)
                        return
                    # Every client's first request of its second is read whatever the others
                    # asked: a monitor that asks once when it connects is never kept waiting.
                    wait = self._requests.wait() if client.requests else 0.0
                    if wait:
                        self._mute(client, now + wait)
                        return
                message = client.decoder.pop()
                if message is None:
                    return
                if not client.greeted:
                    check_hello(message)
                    client.greeted = True
                    client.decoder.max_bytes = 64 * 1024  # clients only send small requests
                    continue
                client.requests += 1
                self._requests.take()
                self.decoded += 1
                answer = self._respond(message)
                if answer is not None:
                    frame = self._encoded(answer)
                    with self._lock:
                        if len(client.queue) >= QUEUE_FRAMES:  # a client that asks and never reads
                            client.dropped += 1
                            self.dropped += 1
                            continue
                        client.queue.append(frame)
                        self._pending.add(client)
        except ProtocolError as err:
            # Say why before hanging up: what is queued (the hello), then the error. Small
            # enough for the socket buffer, so these non-blocking sends do not stall.
            with self._lock:
                pending = [client.partial, *client.queue]
            pending.append(encode_frame({"type": "error", "message": str(err)}))
            with contextlib.suppress(OSError):
                client.sock.send(b"".join(pending))
            self._drop(client)

    def _mute(self, client: _Client, until: float) -> None:
        """Stop reading ``client`` until ``until``: what it sends meanwhile waits in its socket."""
        client.muted_until = until
        self._mutes += 1
        heapq.heappush(self._muted, (until, self._mutes, client))
        self._watch(client)

    def _unmute_due(self) -> None:
        now = time.monotonic()
        while self._muted and self._muted[0][0] <= now:
            until, _, client = heapq.heappop(self._muted)
            if client.muted_until != until or client.sock.fileno() not in self._clients:
                continue  # muted again since, or gone
            client.muted_until = 0.0
            try:
                self._serve_requests(client)  # what it sent before it was muted comes first
                self._watch(client)
            except Exception:
                self._drop(client)

    def _encoded(self, answer: dict[str, Any]) -> bytes:
        """Encode an answer once however many clients ask for it: the agent hands out the same
        object until its next sample, the one just published (kept here, so its id cannot be
        reused meanwhile)."""
        last = self._last_encoded
        if last is None or last[0] is not answer:
            last = self._last_encoded = (answer, encode_frame(answer))
        return last[1]

    def _flush(self, client: _Client) -> None:
        if not client.sending.acquire(blocking=False):
            return  # send_now is writing to this client; the next wake-up finishes the rest
        try:
            self._flush_locked(client)
        finally:
            client.sending.release()

    def _flush_locked(self, client: _Client) -> None:
        while True:
            if not client.partial:
                with self._lock:
                    if not client.queue:
                        return
                    client.partial = client.queue.popleft()
            try:
                sent = client.sock.send(client.partial)
            except BlockingIOError:
                return
            except OSError:
                self._drop(client)
                return
            client.partial = client.partial[sent:]
            if client.partial:
                return

    def _flush_pending(self) -> None:
        """Write what was queued since the last turn, while the budget lasts (the rest waits)."""
        with self._lock:
            pending, self._pending = self._pending, set()
        for n in range(len(pending)):
            if n and self._budget.spent():
                with self._lock:
                    self._pending |= pending
                return
            client = pending.pop()
            if client.sock.fileno() in self._clients:
                self._flush(client)
                self._watch(client)

    def _watch(self, client: _Client) -> None:
        """Watch for EVENT_WRITE only while a frame is left that the socket could not take, and
        for EVENT_READ unless the client is muted or stalled (then not at all, if neither)."""
        reading = not client.muted_until and not client.stalled
        events = ((selectors.EVENT_READ if reading else 0)
                  | (selectors.EVENT_WRITE if client.partial or client.queue else 0))
        if events != client.events and client.sock.fileno() in self._clients:
            with contextlib.suppress(KeyError, ValueError, OSError):
                if not events:
                    self._selector.unregister(client.sock)
                elif not client.events:
                    self._selector.register(client.sock, events, "client")
                else:
                    self._selector.modify(client.sock, events, "client")
                client.events = events

    def _drop(self, client: _Client) -> None:
        with self._lock:
            self._clients.pop(client.sock.fileno(), None)
            self._pending.discard(client)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(client.sock)
        with contextlib.suppress(OSError):
            client.sock.close()

    def _close_all(self) -> None:
        for client in list(self._clients.values()):
            self._drop(client)
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        with contextlib.suppress(OSError):
            self._selector.close()


def _hung_up(sock: socket.socket) -> bool:
    """Whether the peer of ``sock`` closed its end (or the connection broke)."""
    poller = select.poll()  # not select(): a training job may hold fds past 1024
    poller.register(sock, select.POLLIN)  # hang-ups and errors are reported whatever is asked
    try:
        return any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))
    except OSError:
        return True


def _unread_bytes(sock: socket.socket) -> int:
    """Bytes written to ``sock`` that its peer has not read yet (-1 where the system cannot say)."""
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0])
    except (OSError, ValueError, struct.error):
        return -1
