"""SVG to PNG for ``vramtop report --png``, with whatever converter is installed.

No converter is a dependency of vramtop: ``cairosvg`` (``pip install cairosvg``) is used when it
can be imported, else the ``rsvg-convert`` program (Debian/Ubuntu: ``apt install librsvg2-bin``).
"""

from __future__ import annotations

import shutil
import subprocess

from vramtop.errors import EXIT_FAILURE, VramtopError

HOW_TO = ("PNG output needs cairosvg (pip install cairosvg) or rsvg-convert (apt install librsvg2-bin); "
          "--html writes the same picture as a web page without either")
TIMEOUT_S = 120


def svg_to_png(svg: str, *, scale: float = 2.0) -> bytes:
    """The SVG drawn at ``scale`` times its size (crisp on high-density screens)."""
    try:
        import cairosvg  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except (ImportError, OSError):  # OSError: the module is there, the cairo library is not
        pass
    else:
        return bytes(cairosvg.svg2png(bytestring=svg.encode(), scale=scale))
    program = shutil.which("rsvg-convert")
    if program is None:
        raise VramtopError(HOW_TO, EXIT_FAILURE)
    try:
        done = subprocess.run([program, "--format", "png", "--zoom", f"{scale:g}"], input=svg.encode(),
                              capture_output=True, timeout=TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise VramtopError(f"rsvg-convert failed: {err}", EXIT_FAILURE) from None
    if done.returncode != 0 or not done.stdout.startswith(b"\x89PNG"):
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise VramtopError(f"rsvg-convert failed: {message[-1] if message else f'exit {done.returncode}'}",
                           EXIT_FAILURE)
    return done.stdout
