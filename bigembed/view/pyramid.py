"""The aggregate pyramid of a Z-ordered layout: per-cell centroids, counts and values.

Each level of :class:`~bigembed.view.spatial.SpatialIndex` is a run of positions per
non-empty cell. A pyramid frame bins each visible cell as one weighted point at its points'
centroid. :class:`Pyramid` builds those arrays per level (and colouring) on first use and
keeps them; the raster backends (:mod:`bigembed.view.raster`) read them in the form they bin:
gathered per cell (and per (cell, category) pair) or as dense per-cell weight rows.
"""

from __future__ import annotations

import numpy as np

from .spatial import SpatialIndex

#: cached entries beyond which the weight rows are dropped (a few levels x colourings)
MAX_CACHED = 64


def category_lut(colouring, mix: bool) -> np.ndarray:
    """What a point of each category adds to a pixel; float64 array of shape (C, ch): one-hot
    counts (ch = C), or with ``mix`` (1, r, g, b) of its colour (ch = 4) to mix colours."""
    if not mix:
        return np.eye(len(colouring.categories), dtype=np.float64)
    from .shade import _rgb

    return np.c_[np.ones(len(colouring.categories)), _rgb(colouring.colors)]


class Pyramid:
    """Per-level cell arrays of ``index`` (a sorted :class:`SpatialIndex`), cached.

    A colouring is anything with ``name``, ``kind`` (density/categorical/mean), ``values``
    (per point in spatial order), ``categories`` and ``colors``.
    """

    def __init__(self, index: SpatialIndex):
        self.index = index
        self._cache: dict[tuple, tuple] = {}

    def centroids(self, level: int):
        """(x, y, count) of every non-empty cell of ``level``: float32 arrays of shape
        (cells,)."""
        key = (level, None)
        got = self._cache.get(key)
        if got is None:
            starts = self.index.level_starts(level)
            cnt = np.diff(starts).astype(np.float64)
            head = starts[:-1]
            # float32 like the layout itself: half the memory of the finest levels
            mx = (np.add.reduceat(self.index.xs.astype(np.float64), head) / cnt).astype(np.float32)
            my = (np.add.reduceat(self.index.ys.astype(np.float64), head) / cnt).astype(np.float32)
            got = (mx, my, cnt.astype(np.float32))
            self._cache[key] = got
        return got

    def cells(self, level: int, colouring):
        """Cell arrays of ``level`` for a colouring: (x, y, count, extra), extra being None
        (density); for a mean colouring (sum, count) of the finite values per cell; for a
        categorical one sparse (cell, category, count, offsets) triples sorted by cell with
        per-cell offsets (shape (cells + 1,)), so a frame takes its cells' triples as runs,
        without a dense (cells, C) scan."""
        key = (level, colouring.name)
        got = self._cache.get(key)
        if got is not None:
            return got
        mx, my, cnt = self.centroids(level)
        starts = self.index.level_starts(level)
        head = starts[:-1]
        if colouring.kind == "categorical":
            ncat = len(colouring.categories)
            group = np.repeat(np.arange(len(head)), np.diff(starts))
            counts = np.bincount(group * ncat + colouring.values, minlength=len(head) * ncat)
            nzk = np.flatnonzero(counts)
            cell, cat = np.divmod(nzk, ncat)
            offs = np.searchsorted(cell, np.arange(len(head) + 1))
            extra = (cell, cat, counts[nzk].astype(np.float64), offs)
        elif colouring.kind == "mean":
            v = colouring.values
            fin = np.isfinite(v)
            extra = (np.add.reduceat(np.where(fin, v, 0.0), head),
                     np.add.reduceat(fin.astype(np.float64), head))
        else:
            extra = None
        got = (mx, my, cnt, extra)
        self._cache[key] = got
        return got

    def weights(self, level: int, colouring, *, mix: bool = False):
        """(x, y, weights) of ``level`` for the run kernels: weights float64 of shape
        (cells, ch): the count (density), (sum, count) of finite values (mean), or per
        category the rows of :func:`category_lut` summed over the cell's points."""
        key = (level, colouring.name, "w", mix)
        got = self._cache.get(key)
        if got is not None:
            return got
        if colouring.kind == "density":
            mx, my, cnt = self.centroids(level)
            w = cnt.astype(np.float64)[:, None]
        elif colouring.kind == "mean":
            mx, my, _, (s, m) = self.cells(level, colouring)
            w = np.stack([s, m], 1)
        else:
            # (the per-cell sums of lut rows, not cells()' sparse triples)
            mx, my, _ = self.centroids(level)
            starts = self.index.level_starts(level)
            group = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
            lut = category_lut(colouring, mix)
            w = np.stack([np.bincount(group, weights=lut[:, j][colouring.values],
                                      minlength=len(starts) - 1)
                          for j in range(lut.shape[1])], 1)
        got = (mx, my, np.ascontiguousarray(w))
        if len(self._cache) > MAX_CACHED:
            self._cache.clear()
        self._cache[key] = got
        return got

    def gather(self, view):
        """The visible cells of a pyramid view as weighted points: (x, y, count, values),
        values None (density), (sum, count) per cell (mean), or (category, count) per
        (cell, category) pair (categorical; x, y then per pair too)."""
        c = view.colouring
        runs = view.runs
        cells = SpatialIndex.positions(runs)
        mx, my, cnt, extra = self.cells(view.level, c)
        x, y, w = mx[cells], my[cells], cnt[cells]
        if c.kind == "categorical":
            pc, pcat, pw, offs = extra
            pairs = SpatialIndex.positions(np.stack([offs[runs[:, 0]], offs[runs[:, 1]]], 1))
            return mx[pc[pairs]], my[pc[pairs]], w, (pcat[pairs], pw[pairs])
        if c.kind == "mean":
            return x, y, w, (extra[0][cells], extra[1][cells])
        return x, y, w, None
