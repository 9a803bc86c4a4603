"""Other hosts' GPUs, read from their vramtop exporters (``vramtop --remote HOST:PORT``): each GPU's
memory, its processes (rows with ``--per-process``) and the figures of those that run the agent
(allocator, bill, headroom, step, rank and job: remote_page.py), shown next to this host's and
marked with their host. Read-only: nothing is ever sent to another host's processes (their PIDs
mean nothing here). A host without a usable GPU of its own still shows the others.

Only the exporter's HTTP endpoint is read (Prometheus text format, parsed by
prometheus_text.py): no dependency on the exporter's package.
"""

from __future__ import annotations

import contextlib
import functools
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from vramtop.errors import EXIT_USAGE, VramtopError
from vramtop.model import GpuSample, Sample
from vramtop.sources.hostinfo import HostInfo
from vramtop.sources.poller import Source
from vramtop.sources.prometheus_api import pages_from, parse_server, query_url
from vramtop.sources.prometheus_text import Exposition, parse
from vramtop.sources.remote_page import HostPage, host_page, merge_pages

FETCH_TIMEOUT_S = 2.0  # one scrape; a slow host costs its own GPUs, never the local ones
MAX_BODY = 64 << 20  # bytes: an exporter's page is a few KiB, a cluster's query answer a few MiB

Fetch = Callable[[str, float], str]


def parse_address(text: str) -> str:
    """HOST:PORT as given to --remote (an http:// URL is accepted too); the metrics URL."""
    address = text.strip().removeprefix("http://").rstrip("/").removesuffix("/metrics")
    host, _, port = address.rpartition(":")
    if not host or not port.isdecimal() or not 0 < int(port) < 65536:
        raise VramtopError(f"--remote {text!r}: expected HOST:PORT (a vramtop exporter, e.g. node2:9400)", EXIT_USAGE)
    return f"http://{address}/metrics"


def http_get(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read(MAX_BODY).decode("utf-8", errors="replace"))


def gpus_from(exposition: Exposition, fallback_host: str) -> tuple[GpuSample, ...]:
    """The GPUs an exporter's page describes, each marked with its host."""
    return host_page(exposition.metrics, fallback_host).gpus


class RemoteHosts:
    """A local source plus other hosts' exporters, as one sample: the remote GPUs after the local
    ones. A host that does not answer is a problem line in the sample, not a failure."""

    def __init__(self, local: Source, addresses: Sequence[str], fetch: Fetch = http_get,
                 timeout: float = FETCH_TIMEOUT_S, prometheus: str | None = None) -> None:
        self.local = local
        self.urls = [parse_address(a) for a in addresses]
        # What is read each refresh: (who, how) for each exporter, then the Prometheus server.
        self._readers: list[tuple[str, str, Callable[[], list[HostPage]]]] = [
            (_host_of(url), "its exporter", functools.partial(self._read_one, url)) for url in self.urls]
        if prometheus is not None:
            base = parse_server(prometheus)
            read = functools.partial(self._read_prometheus, base)
            self._readers.append((f"Prometheus at {base}", "the server", read))
        self._fetch = fetch
        self._timeout = timeout
        self.local_unavailable: str | None = None  # why this host's GPUs are not shown
        self._host: HostInfo | None = None
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(8, len(self._readers))), thread_name_prefix="remote")

    def open(self) -> None:
        try:
            self.local.open()
        except VramtopError as err:  # no GPU here (no driver, no NVML): the other hosts still are
            self.local_unavailable = err.message
            with contextlib.suppress(Exception):
                self.local.close()

    def read(self) -> Sample:
        pending = [(who, what, self._pool.submit(read)) for who, what, read in self._readers]
        sample = self.local.read() if self.local_unavailable is None else self._without_local()
        pages, problems = [], []
        for who, what, future in pending:
            try:
                pages.extend(future.result(timeout=self._timeout + 1.0))
            except Exception as err:  # one host's failure is said, never raised into the monitor
                problems.append(f"{who}: {_reason(err, what)}")
        merged = merge_pages(sample, pages)
        return replace(merged, problems=(*merged.problems, *problems))

    def _read_one(self, url: str) -> list[HostPage]:
        page = host_page(parse(self._fetch(url, self._timeout)).metrics, _host_of(url))
        if not page.gpus:
            raise ValueError("no vramtop_gpu_* metrics (is it a vramtop exporter?)")
        return [page]

    def _read_prometheus(self, base: str) -> list[HostPage]:
        return pages_from(self._fetch(query_url(base), self._timeout))

    def _without_local(self) -> Sample:
        """A sample of this host without its GPUs, saying why."""
        self._host = self._host or HostInfo()
        return Sample(time=time.time(), host=self._host.host_sample(),
                      problems=(f"this host's GPUs are not shown: {self.local_unavailable}",))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.local_unavailable is None:
            self.local.close()


def with_remotes(local: Source, addresses: Sequence[str] | None, prometheus: str | None = None) -> Source:
    """``local`` plus the hosts of --remote and --prometheus, when any is given."""
    return RemoteHosts(local, addresses or (), prometheus=prometheus) if addresses or prometheus else local


def _host_of(url: str) -> str:
    return url.removeprefix("http://").removesuffix("/metrics")


def _reason(err: BaseException, what: str) -> str:
    """Why ``what`` (its exporter, the server) could not be read, in a few words."""
    if isinstance(err, urllib.error.URLError) and not isinstance(err, urllib.error.HTTPError):
        if isinstance(err.reason, TimeoutError):
            return f"{what} did not answer in time"
        return f"cannot read {what} ({err.reason})"
    if isinstance(err, TimeoutError):
        return f"{what} did not answer in time"
    return f"cannot read {what} ({err})"
