"""SVG to PNG for ``vramtop report --png``: the same picture as ``--svg`` and ``--html``.

The picture is drawn once, as SVG (report_svg.py); the PNG is that SVG rasterised, so the three
outputs cannot differ in content. The rasteriser is resvg (the ``resvg-py`` wheel, a dependency
of vramtop: no compiler, no system library). Its text needs fonts: the system's, and
matplotlib's bundled DejaVu when matplotlib is installed. Where resvg has no wheel, ``cairosvg``
or the ``rsvg-convert`` program are used if present.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from vramtop.errors import EXIT_FAILURE, VramtopError

HOW_TO = ("PNG output needs resvg-py (pip install resvg-py), cairosvg or rsvg-convert; "
          "--svg and --html write the same picture without any of them")
TIMEOUT_S = 120
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.fonts", "~/.local/share/fonts",
             "/System/Library/Fonts", "/Library/Fonts", "C:/Windows/Fonts")


def svg_to_png(svg: str, *, scale: float = 2.0) -> bytes:
    """The SVG drawn at ``scale`` times its size (crisp on high-density screens)."""
    try:
        import resvg_py  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return _fallback(svg, scale)
    extra = _bundled_fonts()
    if not extra and not any(_has_fonts(Path(d).expanduser()) for d in FONT_DIRS):
        print("vramtop: no font found on this system: the PNG's labels will be missing "
              "(install fonts-dejavu-core, or use --svg/--html)", file=sys.stderr)
    try:
        return bytes(resvg_py.svg_to_bytes(svg_string=svg, zoom=scale, font_dirs=extra or None,
                                           background="#ffffff"))
    except (ValueError, RuntimeError) as err:
        raise VramtopError(f"the PNG could not be drawn: {err}", EXIT_FAILURE) from None


def _bundled_fonts() -> list[str]:
    """matplotlib's fonts (DejaVu), when it is installed: the report's own font family."""
    try:
        import matplotlib  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return []
    fonts = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf"
    return [str(fonts)] if fonts.is_dir() else []


def _has_fonts(directory: Path) -> bool:
    try:
        return directory.is_dir() and any(
            name.lower().endswith((".ttf", ".otf", ".ttc")) for _, _, names in os.walk(directory) for name in names)
    except OSError:
        return False


def _fallback(svg: str, scale: float) -> bytes:
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
