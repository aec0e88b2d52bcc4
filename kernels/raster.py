"""Point binning (2-D histogram) for the map: a torch kernel and its numpy reference twin.

Both follow Datashader's pixel mapping exactly, so an aggregate made here equals the one
``datashader.Canvas.points`` makes for the same points and range:
``sx = width / (x1 - x0)``, ``tx = -x0 * sx``, ``i = int(x * sx + tx)`` in float64, points
outside ``[x0, x1] x [y0, y1]`` dropped, points on the upper edge put in the last pixel.

No I/O, logging or validation here: :mod:`bigembed.server.frames` owns that.
"""

from __future__ import annotations

import numpy as np


def _mapping(lo: float, hi: float, n: int):
    s = n / (hi - lo)
    return s, -lo * s


def pixel_index(x, y, *, x_range, y_range, width, height):
    """Flat pixel index (row * width + col) of the points inside the range, and which are.

    Returns (flat int64 array of shape (m,), keep bool array of shape (n,)).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    (x0, x1), (y0, y1) = x_range, y_range
    sx, tx = _mapping(x0, x1, width)
    sy, ty = _mapping(y0, y1, height)
    keep = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    xk, yk = x[keep], y[keep]
    xi = np.minimum((xk * sx + tx).astype(np.int64), width - 1)
    yi = np.minimum((yk * sy + ty).astype(np.int64), height - 1)
    xi[xk == x1] = width - 1
    yi[yk == y1] = height - 1
    return yi * width + xi, keep


def bin_points_reference(x, y, *, x_range, y_range, width, height, weights=None,
                         categories=None, n_categories=0):
    """Sum of ``weights`` (1 when None) per pixel, numpy.

    x, y: arrays of shape (n,); weights: (n,) or None; categories: (n,) ints in
    [0, n_categories) or None. Returns float64 array of shape (height, width), or
    (height, width, n_categories) with categories; row 0 is ``y_range[0]``.
    """
    flat, keep = pixel_index(x, y, x_range=x_range, y_range=y_range, width=width,
                             height=height)
    w = None if weights is None else np.asarray(weights, np.float64)[keep]
    if categories is None:
        return np.bincount(flat, weights=w, minlength=width * height).reshape(height, width)
    c = np.asarray(categories, np.int64)[keep]
    out = np.bincount(flat * n_categories + c, weights=w,
                      minlength=width * height * n_categories)
    return out.reshape(height, width, n_categories)


def bin_points_torch(x, y, *, x_range, y_range, width, height, weights=None,
                     categories=None, n_categories=0):
    """The same as :func:`bin_points_reference` with torch tensors on any device.

    x, y: tensors of shape (n,) (float32 or float64, on the device the work runs on).
    Returns a float64 tensor of shape (height, width) or (height, width, n_categories).
    """
    import torch

    xd = x.to(torch.float64)
    yd = y.to(torch.float64)
    (x0, x1), (y0, y1) = x_range, y_range
    sx, tx = _mapping(x0, x1, width)
    sy, ty = _mapping(y0, y1, height)
    keep = (xd >= x0) & (xd <= x1) & (yd >= y0) & (yd <= y1)
    xk, yk = xd[keep], yd[keep]
    xi = (xk * sx + tx).to(torch.int64).clamp_(max=width - 1)
    yi = (yk * sy + ty).to(torch.int64).clamp_(max=height - 1)
    xi = torch.where(xk == x1, torch.full_like(xi, width - 1), xi)
    yi = torch.where(yk == y1, torch.full_like(yi, height - 1), yi)
    flat = yi * width + xi
    if weights is None:
        w = torch.ones(flat.shape[0], dtype=torch.float64, device=flat.device)
    else:
        w = weights.to(torch.float64)[keep]
    if categories is None:
        out = torch.zeros(width * height, dtype=torch.float64, device=flat.device)
        out.index_add_(0, flat, w)
        return out.view(height, width)
    c = categories.to(torch.int64)[keep]
    out = torch.zeros(width * height * n_categories, dtype=torch.float64, device=flat.device)
    out.index_add_(0, flat * n_categories + c, w)
    return out.view(height, width, n_categories)
