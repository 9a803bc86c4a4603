"""The HTTP listener: Prometheus text format on ``/metrics``, loopback unless told otherwise."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vramtop.errors import EXIT_USAGE, VramtopError

if TYPE_CHECKING:  # prometheus_client is imported when serving: `vramtop --help` stays instant
    from threading import Thread
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.registry import CollectorRegistry

DEFAULT_LISTEN = "127.0.0.1:9400"  # 9400: dcgm-exporter's port, where scrape configs already look


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a host name: it may resolve to anything

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"


def parse_listen(text: str) -> Address:
    """``HOST:PORT`` (``[::1]:9400`` for IPv6; ``:9400`` for every address); port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdecimal() or int(port) > 65535:
        raise VramtopError(f"--listen wants HOST:PORT, e.g. {DEFAULT_LISTEN}; got {text!r}", EXIT_USAGE)
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return Address(host or "0.0.0.0", int(port))


def exposure_warning(address: Address) -> str | None:
    """One line when the endpoint is reachable from other hosts: it lists processes and commands."""
    if address.loopback:
        return None
    return (f"vramtop: warning: listening on {address.host}:{address.port}, beyond this host: anyone who can "
            "reach it reads its GPU processes (and, with --per-process, their commands and users)")


def serve(address: Address, registry: CollectorRegistry) -> tuple[WSGIServer, Thread, Address]:
    """Start serving on a daemon thread; the address it is bound to (the port picked, for port 0)."""
    from prometheus_client import start_http_server

    try:
        server, thread = start_http_server(address.port, addr=address.host, registry=registry)
    except OSError as err:
        raise VramtopError(f"cannot listen on {address.host}:{address.port}: {err.strerror or err}",
                           EXIT_USAGE) from None
    return server, thread, Address(address.host, int(server.server_address[1]))
