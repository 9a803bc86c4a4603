"""Names and versions of everything vramtop writes for other programs to read.

The one-shot JSON document, the agent socket and recordings all carry samples in the same
shape (``codec.to_dict`` of :class:`vramtop.model.Sample`), so a reader of one reads all.
Versioning: a reader accepts any minor change (new fields are ignored) and refuses a newer
major ``version`` with a clear message.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from vramtop import __version__
from vramtop.codec import DecodeError, from_dict, to_dict
from vramtop.model import OomReport, Sample

SAMPLE_SCHEMA = "vramtop.sample"
SAMPLE_VERSION = 1
RECORDING_SCHEMA = "vramtop.recording"  # JSON Lines recordings: see vramtop/recording/
RECORDING_VERSION = 1


class SchemaError(ValueError):
    """A document that is not a vramtop sample, or is from a newer, incompatible vramtop."""


def sample_document(sample: Sample) -> dict[str, Any]:
    """The ``vramtop --once --json`` document: the sample plus its schema name and version."""
    return {"schema": SAMPLE_SCHEMA, "version": SAMPLE_VERSION, "vramtop": __version__, **to_dict(sample)}


def sample_from_document(doc: Any) -> Sample:
    if not isinstance(doc, dict) or doc.get("schema") != SAMPLE_SCHEMA:
        raise SchemaError(f"not a {SAMPLE_SCHEMA} document")
    version = doc.get("version")
    if not isinstance(version, int) or version > SAMPLE_VERSION:
        raise SchemaError(
            f"{SAMPLE_SCHEMA} version {version} is newer than this vramtop understands "
            f"({SAMPLE_VERSION}); upgrade vramtop"
        )
    return from_dict(Sample, doc)


# -- the agent socket -----------------------------------------------------------------------
#
# One Unix socket per agent process, in a private per-user directory. Frames are a 4-byte
# big-endian length followed by a UTF-8 JSON object. The first frame each way is a hello
# carrying the supported protocol range; then the agent streams "sample" and "event" frames.
# A client can send read-only requests; nothing a client sends can change the process.

AGENT_PROTOCOL_MIN = 1
AGENT_PROTOCOL_MAX = 1
FRAME_MAX_BYTES = 1 << 20  # a frame bigger than this is a protocol error, never an allocation

_HEADER = struct.Struct(">I")
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class ProtocolError(ValueError):
    """A peer sent something that is not a valid vramtop frame."""


class InsecureDirectory(OSError):
    """The socket directory could be read or hijacked by someone else."""


def runtime_dir() -> Path:
    """``$XDG_RUNTIME_DIR/vramtop`` when that is usable, else ``/tmp/vramtop-<uid>``. A relative
    path is not usable (the XDG spec says to ignore it): a training job and a monitor started in
    other directories would each look in their own."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg) and os.path.isdir(xdg) and os.stat(xdg).st_uid == os.getuid():
        return Path(xdg) / "vramtop"
    return Path(tempfile.gettempdir()) / f"vramtop-{os.getuid()}"


def ensure_private_dir(path: Path, create: bool = True) -> Path:
    """Create ``path`` with mode 0700, or check an existing one; raise InsecureDirectory when
    it is a symlink, owned by someone else, or open to group/others."""
    if create:
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700, parents=False)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise InsecureDirectory(f"{path} is a symlink; refusing to use it")
    if not stat.S_ISDIR(st.st_mode):
        raise InsecureDirectory(f"{path} is not a directory")
    if st.st_uid != os.getuid():
        raise InsecureDirectory(f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()})")
    if st.st_mode & 0o077:
        raise InsecureDirectory(f"{path} is accessible to other users (mode {st.st_mode & 0o777:o})")
    return path


def peer_uid(sock: socket.socket) -> int | None:
    """The connecting process's uid from SO_PEERCRED (None where the OS lacks it)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
    return int(_CRED.unpack(data)[1])


def socket_path(pid: int, directory: Path | None = None) -> Path:
    return (directory or runtime_dir()) / f"{pid}.sock"


def beacon_path(pid: int, directory: Path | None = None) -> Path:
    return (directory or runtime_dir()) / f"{pid}.json"


def encode_frame(message: dict[str, Any]) -> bytes:
    payload = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    if len(payload) > FRAME_MAX_BYTES:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds {FRAME_MAX_BYTES}")
    return _HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, get complete messages back.

    ``push`` and ``pop`` do the same one message at a time, for a reader that must stop
    decoding partway (the agent decodes no more of a client's requests than it will answer)."""

    def __init__(self, max_bytes: int = FRAME_MAX_BYTES) -> None:
        self._buffer = bytearray()
        self.max_bytes = max_bytes  # a peer may raise it once it is known (the agent, after hello)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self.push(data)
        messages = []
        while (message := self.pop()) is not None:
            messages.append(message)
        return messages

    def push(self, data: bytes) -> None:
        self._buffer += data

    def pop(self) -> dict[str, Any] | None:
        """The next complete message, or None until more bytes come."""
        if len(self._buffer) < _HEADER.size:
            return None
        (length,) = _HEADER.unpack_from(self._buffer)
        if length > self.max_bytes:
            raise ProtocolError(f"frame of {length} bytes announced; the limit is {self.max_bytes}")
        if length == 0 or (len(self._buffer) > _HEADER.size and self._buffer[_HEADER.size] != ord("{")):
            # Every frame is a JSON object, and encode_frame writes none with leading space:
            # garbage (or a nesting bomb) is refused at its first byte, before any decoding.
            raise ProtocolError("frame is not a JSON object with a 'type'")
        if len(self._buffer) < _HEADER.size + length:
            return None
        payload = bytes(self._buffer[_HEADER.size : _HEADER.size + length])
        del self._buffer[: _HEADER.size + length]
        try:
            message = json.loads(payload.decode())
        except RecursionError:
            # Nesting is bounded by the interpreter's recursion limit: a frame nested deeper
            # is refused like any other bad frame (RecursionError is not a ValueError, and
            # once ended the thread that read it).
            raise ProtocolError("frame nests too deep") from None
        except (UnicodeDecodeError, ValueError):
            raise ProtocolError("frame is not UTF-8 JSON") from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ProtocolError("frame is not a JSON object with a 'type'")
        return message


def hello(role: str, **extra: Any) -> dict[str, Any]:
    return {"type": "hello", "role": role, "protocol": [AGENT_PROTOCOL_MIN, AGENT_PROTOCOL_MAX],
            "vramtop": __version__, **extra}


def check_hello(message: dict[str, Any]) -> int:
    """The protocol version to speak with this peer; ProtocolError if there is none."""
    if message.get("type") != "hello":
        raise ProtocolError(f"expected a hello frame, got {message.get('type')!r}")
    versions = message.get("protocol")
    if not (isinstance(versions, list) and len(versions) == 2 and all(isinstance(v, int) for v in versions)):
        raise ProtocolError("hello frame without a protocol range")
    low, high = max(versions[0], AGENT_PROTOCOL_MIN), min(versions[1], AGENT_PROTOCOL_MAX)
    if low > high:
        raise ProtocolError(
            f"peer speaks protocol {versions[0]}-{versions[1]}, this vramtop speaks "
            f"{AGENT_PROTOCOL_MIN}-{AGENT_PROTOCOL_MAX}: upgrade the older side"
        )
    return int(high)


# -- OOM post-mortem files ------------------------------------------------------------------
#
# The agent writes one JSON file per OOM into the runtime directory, beside its socket:
# ``oom-<pid>-<YYYYmmdd-HHMMSS>-<ms>.json`` = {"schema": "vramtop.oom", "version": 1, "pid",
# "argv", "report": OomReport, "summary": [lines]}. It outlives the process, so a monitor or
# ``vramtop record`` finds the post-mortem of a process that died of its OOM.

POSTMORTEM_SCHEMA = "vramtop.oom"
# ``vramtop run --trace``: the number of alloc/free events PyTorch's allocation history keeps;
# with it the agent saves that history beside an OOM's post-mortem (``oom-<...>.pickle``).
AGENT_TRACE_ENV = "VRAMTOP_AGENT_TRACE"


def postmortem_name(pid: int, when: float) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    return f"oom-{pid}-{stamp}-{int(when * 1000) % 1000:03d}.json"


def postmortem_files(directory: Path, pid: int) -> list[Path]:
    """The post-mortem files of one process, oldest first."""
    try:
        return sorted(directory.glob(f"oom-{pid}-*.json"))
    except OSError:
        return []


def read_postmortem(path: Path) -> OomReport | None:
    """The report in a post-mortem file; None when it is not one (never raises)."""
    try:
        if path.is_symlink() or path.stat().st_size > FRAME_MAX_BYTES:
            return None
        document = json.loads(path.read_text())
        if not isinstance(document, dict) or document.get("schema") != POSTMORTEM_SCHEMA:
            return None
        return from_dict(OomReport, document.get("report"))
    except (OSError, ValueError, DecodeError, RecursionError):
        return None
