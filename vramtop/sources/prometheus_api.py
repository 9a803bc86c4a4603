"""Every host's vramtop series from a Prometheus server (``vramtop --prometheus URL``): one instant
query per refresh through its HTTP API (``/api/v1/query``), the answer split by scrape target
(``job`` and ``instance``) into one exporter page each, read as ``--remote`` reads a page
(remote_page.py). Standard library only.

An instant query answers with each series' latest value within Prometheus' lookback window (5
minutes by default): a host whose exporter stopped answering keeps its last figures for that
long, so each page's ``vramtop_last_sample_timestamp_seconds`` says how old they are.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from vramtop.errors import EXIT_USAGE, VramtopError
from vramtop.sources.prometheus_text import Metric
from vramtop.sources.remote_page import HostPage, host_page

QUERY = '{__name__=~"vramtop_.+"}'  # the exporter's families, dcgm-compat ones left out
TARGET_LABELS = ("job", "instance")  # what Prometheus adds to each scraped series


def parse_server(text: str) -> str:
    """The server's base URL as given to --prometheus (http://HOST:PORT[/PATH], or HOST:PORT)."""
    url = text.strip()
    if "://" not in url:
        url = f"http://{url}"
    parts = _split(url)
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise VramtopError(f"--prometheus {text!r}: expected the server's URL, e.g. http://prometheus:9090",
                           EXIT_USAGE)
    return url.rstrip("/").removesuffix("/api/v1/query")


def _split(url: str) -> urllib.parse.SplitResult | None:
    """The parts of ``url``; None where it has none (an IPv6 host left open, "[x"; a port that
    is not a number from 0 to 65535: reading it raises)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018
    except ValueError:
        return None
    return parts


def query_url(base: str) -> str:
    return f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": QUERY})


def pages_from(answer: str) -> list[HostPage]:
    """The hosts in an API answer, one page per scrape target; ValueError when it is not a
    successful vector answer."""
    try:
        doc: Any = json.loads(answer)
    except json.JSONDecodeError:
        raise ValueError("its answer is not JSON (is it a Prometheus server?)") from None
    if not isinstance(doc, dict) or doc.get("status") != "success":
        error = doc.get("error") if isinstance(doc, dict) else None
        raise ValueError(f"the query failed: {error or 'not a Prometheus API answer'}")
    data = doc.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
        raise ValueError("its answer is not an instant vector")
    targets: dict[tuple[str, ...], list[Metric]] = {}
    for series in data["result"]:
        metric = _metric(series)
        if metric is not None:
            labels = series["metric"]
            targets.setdefault(tuple(str(labels.get(k, "")) for k in TARGET_LABELS), []).append(metric)
    return [host_page(metrics, instance or job) for (job, instance), metrics in sorted(targets.items())]


def _metric(series: Any) -> Metric | None:
    """One series of the answer as a page's sample line: its name, its own labels, its value."""
    if not isinstance(series, dict) or not isinstance(series.get("metric"), dict):
        return None
    labels = {str(k): str(v) for k, v in series["metric"].items() if k not in ("__name__", *TARGET_LABELS)}
    value = series.get("value")
    try:
        number = float(value[1]) if isinstance(value, list) and len(value) == 2 else None
    except (TypeError, ValueError):
        return None
    name = series["metric"].get("__name__")
    if number is None or number != number or not isinstance(name, str):  # NaN: no figure
        return None
    return Metric(name, labels, number)
