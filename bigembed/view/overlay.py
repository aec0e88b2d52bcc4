"""A selection overlay: the pixels of a set of points, one colour, transparent elsewhere.

A comparison page marks the rows selected in one map on the other map. The rows are known
(ids), so the overlay bins exactly those points, O(selected points + pixels) whatever N is,
and is drawn as a second server-rendered image above the frame. One colour needs one bit a
pixel: the PNG is a two-entry palette at bit depth 1 (32 times less to compress than RGBA).
"""

from __future__ import annotations

import struct

import numpy as np

from .frames import _check_range, _check_side

#: the overlay colour (cyan) and its opacity; one pixel of spread keeps single points visible
OVERLAY_RGB = (0, 200, 255)
OVERLAY_ALPHA = 230


def overlay_mask(x, y, *, x_range, y_range, width: int, height: int,
                 spread: int = 1) -> tuple[np.ndarray, int]:
    """Bool array of shape (height, width), row 0 at the bottom (as frames): the pixels
    holding one of the points (x, y) (arrays of shape (n,)), grown by ``spread`` pixels;
    returns (mask, points in view). Pixel mapping as Datashader's: a point at the upper edge
    of the range is outside."""
    x0, x1 = _check_range("x_range", x_range)
    y0, y1 = _check_range("y_range", y_range)
    width, height = _check_side("width", width), _check_side("height", height)
    x = np.asarray(x)
    y = np.asarray(y)
    ok = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
    # inside the range the offsets are >= 0, so truncation is the floor
    px = ((x[ok] - x0) * (width / (x1 - x0))).astype(np.int64)
    py = ((y[ok] - y0) * (height / (y1 - y0))).astype(np.int64)
    np.minimum(px, width - 1, out=px)  # float rounding at the upper edge
    np.minimum(py, height - 1, out=py)
    hit = np.zeros(height * width, bool)
    hit[py * width + px] = True
    hit = hit.reshape(height, width)
    for _ in range(max(0, int(spread))):
        grown = hit.copy()
        grown[1:, :] |= hit[:-1, :]
        grown[:-1, :] |= hit[1:, :]
        grown[:, 1:] |= hit[:, :-1]
        grown[:, :-1] |= hit[:, 1:]
        hit = grown
    return hit, int(ok.sum())


def overlay_png(mask: np.ndarray, *, rgb=OVERLAY_RGB, alpha: int = OVERLAY_ALPHA,
                flip: bool = True) -> bytes:
    """PNG bytes of ``mask`` (bool (H, W)): ``rgb`` at opacity ``alpha`` where True,
    transparent elsewhere; ``flip`` puts row 0 at the bottom (y up), as frames."""
    from .shade import _chunk, _deflate

    h, w = mask.shape
    rows = mask[::-1] if flip else mask
    packed = np.packbits(rows, axis=1)  # bit depth 1, most significant bit first, as PNG
    raw = np.zeros((h, packed.shape[1] + 1), np.uint8)  # filter byte 0 (none) per row
    raw[:, 1:] = packed
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 3, 0, 0, 0)
    plte = bytes([0, 0, 0, *(int(c) for c in rgb)])
    trns = bytes([0, int(alpha)])
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"PLTE", plte)
            + _chunk(b"tRNS", trns) + _chunk(b"IDAT", _deflate(raw, 1)) + _chunk(b"IEND", b""))
