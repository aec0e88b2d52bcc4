"""A selection overlay: the pixels of a set of points, one colour, transparent elsewhere.

A comparison page marks the rows selected in one map on the other map. The rows are known
(ids), so the overlay bins exactly those points, O(selected points + pixels) whatever N is,
and is drawn as a second server-rendered image above the frame.
"""

from __future__ import annotations

import numpy as np

from .frames import _check_range, _check_side

#: the overlay colour (cyan) and its opacity; one pixel of spread keeps single points visible
OVERLAY_RGB = (0, 200, 255)
OVERLAY_ALPHA = 230


def overlay_image(x, y, *, x_range, y_range, width: int, height: int, rgb=OVERLAY_RGB,
                  alpha: int = OVERLAY_ALPHA, spread: int = 1) -> tuple[np.ndarray, int]:
    """RGBA uint32 image of shape (height, width), row 0 at the bottom (as frames), with every
    pixel holding one of the points (x, y) (arrays of shape (n,)) painted ``rgb`` and grown by
    ``spread`` pixels; returns (image, points in view). Pixel mapping as Datashader's: a point
    at the upper edge of the range is outside."""
    x0, x1 = _check_range("x_range", x_range)
    y0, y1 = _check_range("y_range", y_range)
    width, height = _check_side("width", width), _check_side("height", height)
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    px = np.floor((x - x0) * (width / (x1 - x0)))
    py = np.floor((y - y0) * (height / (y1 - y0)))
    ok = (px >= 0) & (px < width) & (py >= 0) & (py < height)
    hit = np.zeros((height, width), bool)
    hit[py[ok].astype(np.int64), px[ok].astype(np.int64)] = True
    for _ in range(max(0, int(spread))):
        grown = hit.copy()
        grown[1:, :] |= hit[:-1, :]
        grown[:-1, :] |= hit[1:, :]
        grown[:, 1:] |= hit[:, :-1]
        grown[:, :-1] |= hit[:, 1:]
        hit = grown
    r, g, b = (int(c) for c in rgb)
    value = np.uint32(r | (g << 8) | (b << 16) | (int(alpha) << 24))
    img = np.zeros((height, width), np.uint32)
    img[hit] = value
    return img, int(ok.sum())
