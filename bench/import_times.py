"""Import time on the way to the live monitor's first frame, from ``python -X importtime``:
the median over fresh interpreters of (a) ``vramtop.ui.app`` once ``textual.app`` is loaded and
(b) the whole path of ``vramtop`` (the command line, the live command, Textual, the UI).

Usage: python bench/import_times.py [--runs 5] [--tree DIR ...]
Each ``--tree`` (a checkout of vramtop; default: this one) is put first on the path; with
several, the runs take them in turn, so that a busy machine slows each about the same."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

UI = "import textual.app; import vramtop.ui.app"
CLI = ("import vramtop.cli as c; c.build_parser([]); import vramtop.commands.top; import textual.app; "
       "import vramtop.ui.app")


def top_level(code: str, tree: Path) -> dict[str, float]:
    """Cumulative seconds of each module imported at the top level (not by another module)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                         check=True, cwd=tree, env=env)
    found: dict[str, float] = {}
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        if name.startswith("  "):
            continue  # nested under another import: counted in that one's cumulative time
        found[name.strip()] = found.get(name.strip(), 0.0) + int(cumulative) / 1e6
    return found


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:.1f} ms ({min(values) * 1000:.1f}-{max(values) * 1000:.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tree", type=Path, action="append", help="a vramtop checkout (repeatable)")
    args = parser.parse_args()
    trees = [t.resolve() for t in args.tree or [REPO]]
    ui: dict[Path, list[float]] = {t: [] for t in trees}
    cli: dict[Path, list[float]] = {t: [] for t in trees}
    for _ in range(args.runs):
        for tree in trees:
            ui[tree].append(top_level(UI, tree)["vramtop.ui.app"])
            cli[tree].append(sum(top_level(CLI, tree).values()))
    for tree in trees:
        print(f"{tree}:\n  vramtop.ui.app after textual.app: {summary(ui[tree])}\n"
              f"  the live command's path (cli, commands.top, textual.app, vramtop.ui.app): {summary(cli[tree])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
