"""``vramtop export``: a Prometheus endpoint over the sample the monitor reads.

The wiring only: the monitor's source read by the monitor's poller (one polling path, with its
deadline), each sample turned into metric families once (vramtop/export/), served to any number
of scrapes. Runs until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from vramtop.errors import EXIT_OK
from vramtop.export.server import DEFAULT_LISTEN

EPILOG = """\
examples:
  vramtop export                                 http://127.0.0.1:9400/metrics, a sample a second
  vramtop export --per-process -i 5              also each process's memory, a sample every 5 s
  vramtop export --listen 0.0.0.0:9400 --dcgm-compat
                                                 for a Prometheus elsewhere; dcgm-exporter's names too

Metrics, labels and bounds: docs/exporter.md. Grafana dashboard: docs/grafana/vramtop.json;
alerting rules: docs/prometheus/vramtop-alerts.yml.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                        help=f"where to serve /metrics (default: {DEFAULT_LISTEN}, this host only; port 0 picks "
                             "a free one)")
    parser.add_argument("--per-process", action="store_true",
                        help="also export each process's GPU memory with its PID, command and user "
                             "(a series per process: PIDs churn)")
    parser.add_argument("--dcgm-compat", action="store_true",
                        help="also export dcgm-exporter's DCGM_FI_DEV_* names (MiB), for its dashboards")


def run(args: argparse.Namespace) -> int:
    from prometheus_client.registry import CollectorRegistry

    from vramtop.analysis.risk import RiskTracker
    from vramtop.commands.options import thresholds_from
    from vramtop.commands.record import read_deadline
    from vramtop.export.collector import SampleCollector
    from vramtop.export.frame import FrameBuilder, Options
    from vramtop.export.server import exposure_warning, parse_listen, serve
    from vramtop.sources.monitor import monitor_source
    from vramtop.sources.poller import DeadlineReader, Poller, open_with_deadline

    address = parse_listen(args.listen)
    source = monitor_source(args.gpu)
    open_with_deadline(source)  # no driver, no GPU, a hung driver: say so before serving anything
    try:
        deadline = read_deadline(args.interval)
        builder = FrameBuilder(RiskTracker(thresholds_from(args)),
                               Options(per_process=args.per_process, dcgm_compat=args.dcgm_compat))
        collector = SampleCollector(builder, max_age=2 * (args.interval + deadline) + 1)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        poller = Poller(DeadlineReader(source, deadline), args.interval, deliver=collector.take,
                        on_error=collector.failed)
        poller.start()
        server, _, bound = serve(address, registry)
        warning = exposure_warning(bound)
        if warning:
            print(warning, file=sys.stderr)
        print(f"vramtop: serving metrics on {bound.url()}", file=sys.stderr, flush=True)
        try:
            _wait_for_signal()
        finally:
            poller.stop()
            server.shutdown()
    finally:
        source.close()
    return EXIT_OK


def _wait_for_signal() -> None:
    """Until SIGTERM, SIGHUP or Ctrl-C."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)
    stop.wait()
