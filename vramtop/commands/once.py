"""``vramtop --once [--json]``: one sample, printed, then exit."""

from __future__ import annotations

import argparse
import sys

from vramtop.analysis.risk import assess
from vramtop.commands.options import thresholds_from, with_other_hosts
from vramtop.errors import EXIT_NVML, EXIT_OK
from vramtop.sinks.once import render_json, render_text
from vramtop.sources.monitor import monitor_source
from vramtop.sources.poller import DeadlineReader, open_with_deadline

ONCE_DEADLINE_S = 10.0
AGENT_WAIT_S = 1.0  # how long to wait for a connected agent's answer


def run(args: argparse.Namespace) -> int:
    source = with_other_hosts(monitor_source(args.gpu, agent_wait=AGENT_WAIT_S), args)
    open_with_deadline(source)
    try:
        sample = DeadlineReader(source, deadline=ONCE_DEADLINE_S).read()
    finally:
        source.close()
    # One sample: the rules that need no history (headroom, retries, OOMs, fragmentation,
    # neighbours); the leak trend needs a run, i.e. the live monitor or a recording.
    warnings = assess(sample, thresholds_from(args))
    print(render_json(sample, warnings) if args.json else render_text(sample, warnings))
    for problem in sample.problems:  # the JSON carries them too, under "problems"
        print(f"vramtop: {problem}", file=sys.stderr)
    failed = [g for g in sample.gpus if g.error]
    for gpu in failed:
        where = f" on {gpu.host}" if gpu.host else ""
        print(f"vramtop: GPU {gpu.index}{where} ({gpu.uuid}): {gpu.error}", file=sys.stderr)
    return EXIT_NVML if any(not g.host for g in failed) else EXIT_OK  # another host's failure is said, not ours
