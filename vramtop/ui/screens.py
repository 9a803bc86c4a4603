"""Modal screens: the key help, the warnings in full, and the confirmation before signalling a
process."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.events import Key
from textual.screen import ModalScreen
from textual.widgets import Static

# Every line fits the help box in an 80-column terminal (76 columns inside border and padding).
HELP = """\
[b]vramtop[/b] — GPU memory, live

[b]Keys[/b]
  q          quit
  ?          this help (any key closes it)
  space, p   pause / resume the display (sampling goes on)
  s          sort processes: GPU memory, host RSS, PID, user
  g          select the next GPU (processes of that GPU only); G: all GPUs
  ↑ ↓        select a process; its details show below the table
  W          every warning in full: the numbers and the action (Esc closes)
  t          send SIGTERM to the selected process (asks first)
  k          send SIGKILL to the selected process (asks first)
  replay:    → ← step · + - speed · w next warning · P peak · Home End

[b]Numbers[/b] (nvidia-smi's names)
  used / free / reserved / total: memory.used / .free / .reserved / .total,
    in MiB, rounded up as nvidia-smi does; reserved is held by the driver.
  GPU MEM per process: --query-compute-apps used_memory.
  util: utilization.gpu; mem-bw: utilization.memory (bandwidth, not size).
  PCIe ▲ sent ▼ received by the GPU (offload traffic shows here).
  Bar: █ used  ▒ driver-reserved  ░ free."""


class HelpScreen(ModalScreen[None]):
    """Closes on any key. The key goes no further: without ``stop`` it would bubble up to the
    app once the help is gone, so the ``q`` that closes the help would also quit vramtop."""

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box"):
            yield Static(HELP, id="help-text")

    def on_key(self, event: Key) -> None:
        event.stop()
        self.dismiss()


class WarningsScreen(ModalScreen[None]):
    """The warnings in force, each whole; scrolls with the arrows when they do not fit."""

    BINDINGS = [Binding("escape,q,W,enter", "close", "Close")]

    def __init__(self, text: Text) -> None:
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(self.text, id="warnings-text")

    def action_close(self) -> None:
        self.dismiss()


class ConfirmScreen(ModalScreen[bool]):
    """Asks y/n; dismisses with True only on 'y'."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Static(Text(self.question), id="confirm-text")
            yield Static("[b]y[/b] yes   [b]n[/b] no", id="confirm-keys")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
