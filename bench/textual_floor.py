"""The floor under vramtop's first frame: the smallest Textual app that draws one Static with a
memory figure (``monitor_cpu.py`` times it in the same pty, with the same marker, as the
"textual floor" row). Nothing of vramtop is imported; arguments other than --version are ignored,
so ``monitor_cpu.py --vramtop "python bench/textual_floor.py" --only cpu`` gives its idle CPU.

    python bench/textual_floor.py
"""

from __future__ import annotations

import sys

from textual.app import App, ComposeResult
from textual.widgets import Static


class Floor(App[None]):
    def compose(self) -> ComposeResult:
        yield Static("GPU 0  40124/81559 MiB")


if __name__ == "__main__":
    if "--version" in sys.argv:  # monitor_cpu.py asks every monitor it runs
        print("textual floor")
        sys.exit(0)
    Floor().run()
