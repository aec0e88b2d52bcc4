"""The frame engine: pure functions of (layout, view) -> image, no web code.

:mod:`.spatial` (Z-order sort, pyramid of per-cell aggregates), :mod:`.frames`
(:class:`FrameRenderer`: binning the visible points or pyramid cells), :mod:`.shade`
(colour, spreading, PNG) and :mod:`.render` (``bigembed render``). The server and the CLI
both call it.
"""

from __future__ import annotations

from .frames import FrameRenderer
from .render import render, render_image

__all__ = ["FrameRenderer", "render", "render_image"]
