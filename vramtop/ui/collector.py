"""Python's cyclic garbage collector held off while the live monitor starts.

Start-up makes some 90,000 objects that live as long as the monitor: modules, classes, Textual's
widgets and styles. The collector scanned them again and again as they piled up, about a third
of what vramtop added to Textual's own time to the first frame. So the live command pauses it
before Textual is imported, and once the first frame is on screen the objects made so far are
frozen (left out of every later collection: they live on anyway; the few thousand garbage among
them stay with them) and collection resumes.
"""

from __future__ import annotations

import gc

_paused = False  # resume() undoes only a pause of ours, never a collector someone else turned off


def pause() -> None:
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume() -> None:
    """Once the first frame is drawn (or start-up failed). Does nothing where nothing was paused
    (tests, a replay, a second call)."""
    global _paused
    if not _paused:
        return
    _paused = False
    gc.freeze()
    gc.enable()


def paused() -> bool:
    return _paused
