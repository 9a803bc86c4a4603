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

# Every line fits the help box in an 80-column terminal (74 columns inside border, padding and
# the scrollbar it has when it is taller than the terminal).
HELP = """\
[b]vramtop[/b] — GPU memory, live (↑ ↓ PgDn scroll this; other keys close it)

[b]Keys[/b]
  q, Ctrl-C  quit
  ?          this help (any key closes it)
  space, p   pause / resume the display (sampling goes on)
  s          sort processes: GPU memory, host RSS, PID, user
  g          the next GPU only (its processes); G: all GPUs
  r          a distributed job's ranks, a line each (GPU, peak, headroom,
               step; nearest OOM ◀, highest peak ▲); r again folds them
  ↑ ↓        select a process; its details show below the table
  PgDn PgUp  scroll those details (a long bill, post-mortem, advice)
  W          every warning in full: numbers and action (Esc closes)
  t          send SIGTERM to the selected process (asks first)
  k          send SIGKILL to it (asks first; never in a replay)
  replay:    → ← step · + - speed · w next warning · P peak · Home End
  --follow:  space or ← stops following; End follows the newest again

[b]Numbers[/b] (nvidia-smi's names)
  used/free/reserved/total: memory.used/.free/.reserved/.total, in
    MiB, rounded up as nvidia-smi does; reserved is held by the driver.
  GPU MEM per process: --query-compute-apps used_memory.
  util: utilization.gpu; mem-bw: utilization.memory (bandwidth, not size).
  PCIe ▲ sent ▼ received by the GPU (offload traffic shows here).
  Bar: █ used  ▒ driver-reserved  ░ free.   ●PID: runs the agent.

[b]The bill[/b] (processes with the agent)
  alloc / rsv: PyTorch's allocated / reserved bytes; cache = rsv − alloc.
  frag: 1 − largest free block / cache (~: estimated between snapshots).
  fits ≤: about the largest tensor that can be allocated now.
  peak … @N fwd|loss|bwd|opt: the allocator's peak, the step and the phase
    it was reached in (~: estimated, not measured at the peak).
  params frozen grads optim other activ* cache non-PT: the categories;
    activ* is derived (allocated minus the counted ones); non-PT is memory
    outside PyTorch (CUDA context, NCCL, other libraries)."""


class HelpScreen(ModalScreen[None]):
    """Closes on any key but those that scroll it (it is taller than a 24-row terminal). The key
    goes no further: without ``stop`` it would bubble up to the app once the help is gone, so
    the ``q`` that closes the help would also quit vramtop."""

    SCROLL = {"down": 1, "up": -1, "pagedown": 10, "pageup": -10, "j": 1}

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(HELP, id="help-text")

    def on_screen_resume(self) -> None:
        self.query_one("#help-box", VerticalScroll).scroll_home(animate=False)  # each opening at the top

    def on_key(self, event: Key) -> None:
        event.stop()
        if event.key in self.SCROLL:
            self.query_one("#help-box", VerticalScroll).scroll_relative(y=self.SCROLL[event.key], animate=False)
            return
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
