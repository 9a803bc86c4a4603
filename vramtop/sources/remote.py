"""Other hosts' GPUs, read from their vramtop exporters (``vramtop --remote HOST:PORT``): each GPU's
memory and, when the exporter publishes them (``--per-process``), its processes, shown next to
this host's and marked with their host. Read-only: nothing is ever sent to another host's
processes (their PIDs mean nothing here).

Only the exporter's HTTP endpoint is read (Prometheus text format, parsed by
prometheus_text.py): no dependency on the exporter's package. The metrics read, in base units:
``vramtop_gpu_memory_{total,used,free,reserved}_bytes{gpu,uuid,hostname}`` and
``vramtop_process_gpu_memory_bytes{gpu,uuid,pid,command,user}``.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from vramtop.errors import EXIT_USAGE, VramtopError
from vramtop.model import GpuSample, ProcessSample, Sample
from vramtop.sources.poller import Source
from vramtop.sources.prometheus_text import Exposition, parse

FETCH_TIMEOUT_S = 2.0  # one scrape; a slow host costs its own GPUs, never the local ones
MAX_BODY = 8 << 20  # bytes: an exporter's page is a few KiB; more is not an exporter
GPU_FIELDS = {"total": "memory_total", "used": "memory_used", "free": "memory_free", "reserved": "memory_reserved"}

Fetch = Callable[[str, float], str]


def parse_address(text: str) -> str:
    """HOST:PORT as given to --remote (an http:// URL is accepted too); the metrics URL."""
    address = text.strip().removeprefix("http://").rstrip("/").removesuffix("/metrics")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise VramtopError(f"--remote {text!r}: expected HOST:PORT (a vramtop exporter, e.g. node2:9400)", EXIT_USAGE)
    return f"http://{address}/metrics"


def http_get(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read(MAX_BODY).decode("utf-8", errors="replace"))


def gpus_from(exposition: Exposition, fallback_host: str) -> tuple[GpuSample, ...]:
    """The GPUs an exporter's page describes, each marked with its host."""
    memory: dict[str, dict[str, int]] = {}
    where: dict[str, tuple[int, str]] = {}  # uuid -> (index, host)
    for field, attribute in GPU_FIELDS.items():
        for m in exposition.named(f"vramtop_gpu_memory_{field}_bytes"):
            uuid = m.labels.get("uuid")
            if not uuid:
                continue
            memory.setdefault(uuid, {})[attribute] = int(m.value)
            index = _int(m.labels.get("gpu"))
            where.setdefault(uuid, (index if index is not None else -1, m.labels.get("hostname") or fallback_host))
    processes: dict[str, list[ProcessSample]] = {}
    for m in exposition.named("vramtop_process_gpu_memory_bytes"):
        uuid, pid = m.labels.get("uuid", ""), _int(m.labels.get("pid"))
        if uuid in memory and pid is not None:
            processes.setdefault(uuid, []).append(ProcessSample(
                pid=pid, gpu_uuid=uuid, used_memory=int(m.value), kind="C",
                command=m.labels.get("command") or None, user=m.labels.get("user") or None))
    out = []
    for uuid, figures in memory.items():
        index, host = where[uuid]
        out.append(GpuSample(index=index, uuid=uuid, name="", host=host, processes=tuple(processes.get(uuid, ())),
                             memory_total=figures.get("memory_total"), memory_used=figures.get("memory_used"),
                             memory_free=figures.get("memory_free"), memory_reserved=figures.get("memory_reserved")))
    return tuple(sorted(out, key=lambda g: g.index))


class RemoteHosts:
    """A local source plus other hosts' exporters, as one sample: the remote GPUs after the local
    ones. A host that does not answer is a problem line in the sample, not a failure."""

    def __init__(self, local: Source, addresses: Sequence[str], fetch: Fetch = http_get,
                 timeout: float = FETCH_TIMEOUT_S) -> None:
        self.local = local
        self.urls = [parse_address(a) for a in addresses]
        self._fetch = fetch
        self._timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(8, len(self.urls))), thread_name_prefix="remote")

    def open(self) -> None:
        self.local.open()

    def read(self) -> Sample:
        pending = [self._pool.submit(self._read_one, url) for url in self.urls]
        sample = self.local.read()
        gpus, problems = list(sample.gpus), list(sample.problems)
        for url, future in zip(self.urls, pending, strict=True):
            try:
                known = {g.uuid for g in gpus}  # this host's own exporter, or one given twice
                gpus.extend(g for g in future.result(timeout=self._timeout + 1.0) if g.uuid not in known)
            except Exception as err:  # one host's failure is said, never raised into the monitor
                problems.append(f"{_host_of(url)}: {_reason(err)}")
        return replace(sample, gpus=tuple(gpus), problems=tuple(problems))

    def _read_one(self, url: str) -> tuple[GpuSample, ...]:
        exposition = parse(self._fetch(url, self._timeout))
        gpus = gpus_from(exposition, _host_of(url))
        if not gpus:
            raise ValueError("no vramtop_gpu_memory_* metrics (is it a vramtop exporter?)")
        return gpus

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.local.close()


def with_remotes(local: Source, addresses: Sequence[str] | None) -> Source:
    return RemoteHosts(local, addresses) if addresses else local


def _host_of(url: str) -> str:
    return url.removeprefix("http://").removesuffix("/metrics")


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.URLError) and not isinstance(err, urllib.error.HTTPError):
        return f"cannot read its exporter ({err.reason})"
    if isinstance(err, TimeoutError):
        return "its exporter did not answer in time"
    return f"cannot read its exporter ({err})"


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None
