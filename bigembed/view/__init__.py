"""The frame engine: pure functions of (layout, view) -> image, no web code.

:mod:`.spatial` (Z-order sort), :mod:`.pyramid` (per-cell aggregates of each level),
:mod:`.frames` (:class:`FrameRenderer`: plans a view, the points or pyramid cells it shows),
:mod:`.raster` (the backends that bin them: numba, Datashader, torch), :mod:`.shade`
(colour, spreading, PNG) and :mod:`.render` (``bigembed render``). The server and the CLI
both call it.
"""

from __future__ import annotations

from .frames import FrameRenderer
from .render import render, render_image

__all__ = ["FrameRenderer", "render", "render_image"]
