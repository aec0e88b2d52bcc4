"""Spatial order of a 2-D layout: Z-order (Morton) cells with offsets, and its pyramid.

Points are sorted by the Morton code of their cell on a ``2**levels`` square grid over the
layout's bounding box. In that order every cell of every coarser level is one contiguous run,
so the points of a view box are a few runs found by binary search (cost follows the visible
points, not N), and a level of the aggregate pyramid is just the run boundaries at that level.
"""

from __future__ import annotations

import numpy as np

LEVELS = 13
#: codes are uint32 and a range query's end key, 4**levels, must fit in one: at most 15 levels
MAX_LEVELS = 15


def _spread_bits(v: np.ndarray) -> np.ndarray:
    """Insert a zero bit between the low 16 bits of ``v`` (uint64)."""
    v = v.astype(np.uint64) & np.uint64(0x0000FFFF)
    v = (v | (v << np.uint64(8))) & np.uint64(0x00FF00FF)
    v = (v | (v << np.uint64(4))) & np.uint64(0x0F0F0F0F)
    v = (v | (v << np.uint64(2))) & np.uint64(0x33333333)
    v = (v | (v << np.uint64(1))) & np.uint64(0x55555555)
    return v


def morton(cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    """Z-order code of integer cells (cx, cy), each < 2**16; array of uint64."""
    return _spread_bits(np.asarray(cx)) | (_spread_bits(np.asarray(cy)) << np.uint64(1))


class SpatialIndex:
    """Points ``x, y`` (arrays of shape (n,)) in Z-order.

    Attributes: ``ids`` (n,) int64 original row of each sorted position; ``xs, ys`` (n,)
    float32 coordinates in sorted order; ``codes`` (n,) uint32 Morton codes at ``levels``.
    """

    def __init__(self, x, y, *, levels: int = LEVELS, sort: bool = True):
        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.float32)
        self.n = int(x.shape[0])
        self.sorted = bool(sort)
        self.levels = int(levels)
        g = 1 << self.levels
        if self.n:
            lo = np.array([x.min(), y.min()], np.float64)
            hi = np.array([x.max(), y.max()], np.float64)
        else:
            lo, hi = np.zeros(2), np.ones(2)
        span = hi - lo
        span[span <= 0] = 1.0
        # A hair of padding so the maximum falls inside the last cell, not on its edge.
        self.lo = lo
        self.span = span * (1 + 1e-6)
        self.scale = g / self.span
        self._starts: dict[int, np.ndarray] = {}
        if not 1 <= self.levels <= MAX_LEVELS:
            raise ValueError(f"levels must be in 1..{MAX_LEVELS}, got {levels}")
        if not sort:
            # Points in their own order: every view is the one run [0, n) (a one-off frame
            # of all points, where sorting would cost more than the frame; no pyramid).
            self.codes = None
            self.ids = np.arange(self.n, dtype=np.int64)
            self.xs, self.ys = x, y
            self._level_starts = None
            return
        from ..kernels.zorder import cell_codes, radix_argsort

        # uint32 codes (levels <= 15) in numba, the same arithmetic as _cell + morton; a
        # stable radix sort gives np.argsort(kind="stable")'s order
        codes = cell_codes(x, y, self.lo, self.scale, self.levels)
        order = radix_argsort(codes)
        self.codes = codes[order]
        self.ids = order.astype(np.int64, copy=False)
        self.xs = x[order]
        self.ys = y[order]
        self._level_starts = None

    @classmethod
    def stored(cls, *, xs, ys, ids, codes, lo, span, levels: int, level_starts):
        """An index over arrays already in Z-order (memory-mapped from
        :mod:`bigembed.view.store`): ``lo``, ``span`` as the index that sorted them kept,
        ``level_starts(level)`` the start positions of each level's cells."""
        self = cls.__new__(cls)
        self.n = int(len(xs))
        self.sorted = True
        self.levels = int(levels)
        self.lo = np.asarray(lo, np.float64)
        self.span = np.asarray(span, np.float64)
        self.scale = (1 << self.levels) / self.span
        self._starts = {}
        self.codes, self.ids, self.xs, self.ys = codes, ids, xs, ys
        self._level_starts = level_starts
        return self

    def _cell(self, v, axis: int, g: int) -> np.ndarray:
        c = np.floor((np.asarray(v, np.float64) - self.lo[axis]) * self.scale[axis])
        return np.clip(c, 0, g - 1).astype(np.int64)

    @property
    def bounds(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """((x_min, x_max), (y_min, y_max)) of the points."""
        hi = self.lo + self.span / (1 + 1e-6)
        return (float(self.lo[0]), float(hi[0])), (float(self.lo[1]), float(hi[1]))

    def cell_size(self, level: int) -> tuple[float, float]:
        return float(self.span[0] / (1 << level)), float(self.span[1] / (1 << level))

    # -- range queries ---------------------------------------------------------------------
    def ranges(self, x_range, y_range, *, max_cells: int = 1024, max_level: int | None = None):
        """Runs of sorted positions covering every point in the box; array of shape (r, 2).

        The box is covered by cells of the finest level (<= ``max_level``) that needs at most
        ``max_cells`` cells; runs are merged when adjacent. Points just outside the box but in
        a border cell are included: callers filter exactly when they need to.
        Returns ``(runs, level)``.
        """
        if not self.sorted:
            return np.array([[0, self.n]], np.int64), 0
        top = self.levels if max_level is None else min(max_level, self.levels)
        (x0, x1), (y0, y1) = x_range, y_range
        if self.n == 0 or x1 < self.lo[0] or y1 < self.lo[1] or \
                x0 > self.lo[0] + self.span[0] or y0 > self.lo[1] + self.span[1]:
            return np.empty((0, 2), np.int64), 0
        g = 1 << self.levels
        a0, a1 = self._cell([x0, x1], 0, g)
        b0, b1 = self._cell([y0, y1], 1, g)
        level = 0
        for lv in range(top, -1, -1):
            sh = self.levels - lv
            count = ((a1 >> sh) - (a0 >> sh) + 1) * ((b1 >> sh) - (b0 >> sh) + 1)
            if count <= max_cells:
                level = lv
                break
        sh = self.levels - level
        cxs = np.arange(a0 >> sh, (a1 >> sh) + 1)
        cys = np.arange(b0 >> sh, (b1 >> sh) + 1)
        cc = morton(np.repeat(cxs, len(cys)), np.tile(cys, len(cxs)))
        cc.sort()
        shift = np.uint64(2 * sh)
        # keys in the codes' own dtype: numpy would otherwise convert all n codes per search
        dt = self.codes.dtype
        lo = np.searchsorted(self.codes, (cc << shift).astype(dt), side="left")
        hi = np.searchsorted(self.codes, ((cc + np.uint64(1)) << shift).astype(dt), side="left")
        keep = hi > lo
        lo, hi = lo[keep], hi[keep]
        if len(lo) == 0:
            return np.empty((0, 2), np.int64), level
        # Merge runs that touch (cells adjacent in Z-order).
        brk = np.flatnonzero(lo[1:] != hi[:-1]) + 1
        starts = lo[np.r_[0, brk]]
        ends = hi[np.r_[brk - 1, len(hi) - 1]]
        return np.stack([starts, ends], 1).astype(np.int64), level

    @staticmethod
    def positions(runs: np.ndarray) -> np.ndarray:
        """Sorted positions of the runs, concatenated; array of shape (sum of lengths,)."""
        if len(runs) == 0:
            return np.empty(0, np.int64)
        lens = runs[:, 1] - runs[:, 0]
        total = int(lens.sum())
        # Vectorised concatenation of aranges.
        offs = np.repeat(runs[:, 0] - np.r_[0, np.cumsum(lens)[:-1]], lens)
        return np.arange(total, dtype=np.int64) + offs

    def box(self, x_range, y_range) -> np.ndarray:
        """Sorted positions of the points inside the closed box (exactly)."""
        runs, _ = self.ranges(x_range, y_range)
        pos = self.positions(runs)
        xs, ys = self.xs[pos], self.ys[pos]
        (x0, x1), (y0, y1) = x_range, y_range
        return pos[(xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)]

    def nearest(self, x: float, y: float, *, k: int = 1, radius: float | None = None,
                exclude: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest points to (x, y): (ids (m,), distances (m,)), nearest first.

        With ``radius`` only points within it count (m may be < k). Without it the search
        box doubles until it holds k points (at most about 40 rounds, then everything).
        ``exclude`` drops that id (a query point itself).
        """
        if self.n == 0:
            return np.empty(0, np.int64), np.empty(0, np.float64)
        want = k + (1 if exclude is not None else 0)
        area = float(self.span[0] * self.span[1])
        r = max(np.sqrt(area * want / max(self.n, 1)), 1e-12 * max(self.span))
        rounds = 64
        cap = None
        if radius is not None:
            # from the radius that holds ``want`` points on average, doubling up to
            # ``radius``: under the cursor of a zoomed-out billion-point map the circle of
            # ``radius`` holds millions, the first small one a handful
            cap = float(radius)
            r = min(r, cap)
        diag = float(np.hypot(self.span[0], self.span[1])) + abs(x) + abs(y)
        ids = np.empty(0, np.int64)
        d = np.empty(0, np.float64)
        for _ in range(rounds):
            pos = self.box((x - r, x + r), (y - r, y + r))
            d = np.hypot(self.xs[pos].astype(np.float64) - x, self.ys[pos].astype(np.float64) - y)
            ids = self.ids[pos]
            if exclude is not None:
                m = ids != exclude
                ids, d = ids[m], d[m]
            inside = d <= r
            # k points inside the circle of radius r are the k nearest; or nothing is left.
            if int(inside.sum()) >= k or (cap is not None and r >= cap):
                ids, d = ids[inside], d[inside]
                break
            if r > diag:
                break
            r = r * 2 if cap is None else min(r * 2, cap)
        if cap is not None:
            keep = d <= cap
            ids, d = ids[keep], d[keep]
        order = np.lexsort((ids, d))[:k]
        return ids[order], d[order]

    # -- pyramid ---------------------------------------------------------------------------
    def level_starts(self, level: int) -> np.ndarray:
        """Start position of every non-empty cell at ``level``, plus n; shape (cells + 1,)."""
        s = self._starts.get(level)
        if s is None and self._level_starts is not None:
            s = self._starts[level] = self._level_starts(level)
        if s is None:
            key = self.codes >> self.codes.dtype.type(2 * (self.levels - level))
            s = np.r_[0, np.flatnonzero(key[1:] != key[:-1]) + 1, self.n].astype(np.int64)
            self._starts[level] = s
        return s
