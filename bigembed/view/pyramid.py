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
#: filtered weight rows kept (levels x colourings x filters; the oldest dropped first)
MAX_KEPT = 8


def category_lut(colouring, mix: bool) -> np.ndarray:
    """What a point of each category adds to a pixel; float64 array of shape (C, ch): one-hot
    counts (ch = C), or with ``mix`` (1, r, g, b) of its colour (ch = 4) to mix colours."""
    if not mix:
        return np.eye(len(colouring.categories), dtype=np.float64)
    from .shade import _rgb

    return np.c_[np.ones(len(colouring.categories)), _rgb(colouring.colors)]


def kept_lut(colouring, keep, mix: bool = False):
    """What a point of each category of a filter's colouring adds to a pixel of a filtered
    pyramid frame: (filter colouring, float64 array (C, ch)). ``keep``: (filter colouring,
    allowed codes) (:attr:`~bigembed.view.raster.View.keep`). Density: 1 for an allowed
    category, 0 else (ch = 1); colouring by the filter column: :func:`category_lut`'s rows,
    zero for the categories not allowed."""
    fc, codes = keep
    on = np.zeros(len(fc.categories), np.float64)
    on[list(codes)] = 1.0
    if colouring.kind == "density":
        return fc, on[:, None]
    if colouring is not fc:
        raise ValueError(f"a pyramid filter on {fc.name!r} cannot colour by {colouring.name!r}")
    return fc, category_lut(colouring, mix) * on[:, None]


def pair_weights(pc, pcat, pn, cells: int, lut) -> np.ndarray:
    """Per-cell weight rows (cells, ch) float64 from (cell, category, count) pairs: each
    cell's sum of count * lut[category] (the pairs' work, never the points')."""
    cat = np.asarray(pcat, np.int64)
    pn = np.asarray(pn, np.float64)
    w = np.zeros((cells, lut.shape[1]))
    for j in range(lut.shape[1]):
        w[:, j] = np.bincount(pc, weights=pn * lut[cat, j], minlength=cells)
    return w


class Level:
    """One level of the pyramid tree: ``cell`` (m,) uint32 codes of its non-empty cells,
    ``starts`` (m + 1,) int64 their first point positions (and n), ``sums`` (m, 2) float64
    the x and y sums of their points, ``first`` (m + 1,) int64 the first cell of the next
    finer level in each cell (None at the finest level)."""

    __slots__ = ("cell", "starts", "sums", "first")

    def __init__(self, cell, starts, sums, first):
        self.cell, self.starts, self.sums, self.first = cell, starts, sums, first


def build_tree(codes, xs, ys, levels: int, stop: int = 0, top: Level | None = None) -> dict:
    """The pyramid's levels ``levels`` .. ``stop`` of points in Z-order: {level: Level}.

    The finest level is the runs of equal ``codes`` with their sums added point by point in
    order; each coarser level groups the finer one's cells by parent (code >> 2) and adds
    their sums in order. With ``top`` (a Level at ``levels``) the tree starts from it instead
    of from points. The out-of-core build (:mod:`bigembed.view.store`) makes the same calls on
    windows of whole cells, so both give the same bytes.
    """
    from ..kernels import zorder as zk

    if top is None:
        cell, starts, sx, sy = zk.cell_runs(codes, xs, ys)
        top = Level(cell, starts, np.column_stack([sx, sy]), None)
    out = {levels: top}
    lv = top
    for level in range(levels - 1, stop - 1, -1):
        parent, first = zk.parent_groups(lv.cell)
        lv = Level(parent, lv.starts[first], zk.sum_groups(first, lv.sums), first)
        out[level] = lv
    return out


def centroids_of(level: Level):
    """(x, y, count) float32 arrays of a level's cells: their points' mean position."""
    cnt = np.diff(level.starts).astype(np.float64)
    return ((level.sums[:, 0] / cnt).astype(np.float32),
            (level.sums[:, 1] / cnt).astype(np.float32), cnt.astype(np.float32))


def pair_offsets(pc, cells: int) -> np.ndarray:
    """First pair of each cell (and the end) of pairs sorted by cell; (cells + 1,) int64."""
    return np.searchsorted(pc, np.arange(cells + 1)).astype(np.int64)


def category_tree(tree: dict, values, ncat: int) -> dict:
    """Per level, the (cell, category, count float64, offsets) pairs of a categorical
    colouring (``values`` per point in Z-order): counted at the finest level, merged up."""
    from ..kernels import zorder as zk

    levels = sorted(tree, reverse=True)
    fine = tree[levels[0]]
    pc, pcat, pn = zk.category_pairs(fine.starts, values, ncat)
    out = {levels[0]: (pc, pcat, pn, pair_offsets(pc, len(fine.starts) - 1))}
    for level in levels[1:]:
        child = out[level + 1]
        first = tree[level].first
        pc, pcat, pn = zk.merge_pairs(first, child[3], child[1], child[2], ncat)
        out[level] = (pc, pcat, pn, pair_offsets(pc, len(first) - 1))
    return out


def mean_tree(tree: dict, values) -> dict:
    """Per level, (sum, count) float64 of the finite ``values`` (per point in Z-order) in each
    cell: added point by point at the finest level, cell by cell above."""
    from ..kernels import zorder as zk

    levels = sorted(tree, reverse=True)
    out = {levels[0]: zk.finite_sums(tree[levels[0]].starts, values)}
    for level in levels[1:]:
        out[level] = zk.sum_groups(tree[level].first, out[level + 1])
    return out


class Pyramid:
    """Per-level cell arrays of ``index`` (a sorted :class:`SpatialIndex`), cached.

    A colouring is anything with ``name``, ``kind`` (density/categorical/mean), ``values``
    (per point in spatial order), ``categories`` and ``colors``.
    """

    def __init__(self, index: SpatialIndex):
        self.index = index
        self._cache: dict[tuple, tuple] = {}
        self._kept: dict[tuple, tuple] = {}
        self._tree: dict | None = None
        self._trees: dict[str, dict] = {}

    def tree(self) -> dict:
        """Every level of the index (built once, on first use)."""
        if self._tree is None:
            ix = self.index
            self._tree = build_tree(ix.codes, ix.xs, ix.ys, ix.levels)
        return self._tree

    def centroids(self, level: int):
        """(x, y, count) of every non-empty cell of ``level``: float32 arrays of shape
        (cells,)."""
        key = (level, None)
        got = self._cache.get(key)
        if got is None:
            got = centroids_of(self.tree()[level])
            self._cache[key] = got
        return got

    def _colour_tree(self, colouring) -> dict:
        got = self._trees.get(colouring.name)
        if got is None or got[0] is not colouring:
            if colouring.kind == "categorical":
                t = category_tree(self.tree(), colouring.values, len(colouring.categories))
            else:
                t = mean_tree(self.tree(), colouring.values)
            got = self._trees[colouring.name] = (colouring, t)
        return got[1]

    def cells(self, level: int, colouring):
        """Cell arrays of ``level`` for a colouring: (x, y, count, extra), extra being None
        (density); for a mean colouring (sum, count) of the finite values per cell; for a
        categorical one sparse (cell, category, count, offsets) triples sorted by cell with
        per-cell offsets (shape (cells + 1,)), so a frame takes its cells' triples as runs,
        without a dense (cells, C) scan."""
        mx, my, cnt = self.centroids(level)
        if colouring.kind == "density":
            return mx, my, cnt, None
        t = self._colour_tree(colouring)[level]
        if colouring.kind == "categorical":
            return mx, my, cnt, t
        return mx, my, cnt, (t[:, 0], t[:, 1])

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

    def kept_weights(self, level: int, colouring, keep, *, mix: bool = False):
        """(x, y, weights) of ``level`` for a filtered pyramid frame (``keep``: see
        :attr:`~bigembed.view.raster.View.keep`): :meth:`weights`' rows counting only the
        points of the allowed categories, summed from the filter colouring's (cell,
        category, count) pairs (:func:`pair_weights`); cached per filter. Cells with no
        allowed point weigh 0 and draw nothing."""
        fc, codes = keep
        key = (level, colouring.name, "keep", fc.name, tuple(codes), mix)
        got = self._kept.get(key)
        if got is not None and got[0] is colouring and got[1] is fc:
            return got[2]
        fc, lut = kept_lut(colouring, keep, mix)
        mx, my, cnt, (pc, pcat, pn, _) = self.cells(level, fc)
        got = (np.asarray(mx), np.asarray(my),
               np.ascontiguousarray(pair_weights(pc, pcat, pn, len(cnt), lut)))
        if len(self._kept) >= MAX_KEPT:  # (one filter's rows may be tens of MB)
            self._kept.pop(next(iter(self._kept)))
        self._kept[key] = (colouring, fc, got)
        return got

    def bin_view(self, view, *, mix: bool = False):
        """The run kernel's accumulators of a pyramid ``view`` (array (H*W, ch), hits): the
        level's whole weight rows (:meth:`weights`, or :meth:`kept_weights` with a filter;
        cached) binned over the view's runs."""
        from ..kernels.raster import bin_runs

        if view.keep is not None:
            mx, my, w = self.kept_weights(view.level, view.colouring, view.keep, mix=mix)
        else:
            mx, my, w = self.weights(view.level, view.colouring, mix=mix)
        return bin_runs(mx, my, view.runs, weights=w, **view.grid)

    def gather(self, view):
        """The visible cells of a pyramid view as weighted points: (x, y, count, values),
        values None (density), (sum, count) per cell (mean), or (category, count) per
        (cell, category) pair (categorical; x, y then per pair too). A filtered view
        (``view.keep``) gives the filter colouring's pairs of allowed categories in view,
        each a point at its cell's centroid weighted by its count: (x, y, count, None)
        (density) or (x, y, count, (category, count))."""
        c = view.colouring
        runs = view.runs
        if view.keep is not None:
            fc, codes = view.keep
            kept_lut(c, view.keep)  # (checks the colouring goes with the filter)
            mx, my, _, (pc, pcat, pn, offs) = self.cells(view.level, fc)
            pairs = SpatialIndex.positions(np.stack([offs[runs[:, 0]], offs[runs[:, 1]]], 1))
            cat = np.asarray(pcat)[pairs].astype(np.int64)
            ok = np.isin(cat, np.asarray(codes, np.int64))
            pairs, cat = pairs[ok], cat[ok]
            cell = np.asarray(pc)[pairs]
            w = np.asarray(pn)[pairs].astype(np.float64)
            x, y = np.asarray(mx)[cell], np.asarray(my)[cell]
            return (x, y, w, None) if c.kind == "density" else (x, y, w, (cat, w))
        cells = SpatialIndex.positions(runs)
        mx, my, cnt, extra = self.cells(view.level, c)
        x, y, w = mx[cells], my[cells], cnt[cells]
        if c.kind == "categorical":
            pc, pcat, pw, offs = extra
            pairs = SpatialIndex.positions(np.stack([offs[runs[:, 0]], offs[runs[:, 1]]], 1))
            return (mx[pc[pairs]], my[pc[pairs]], w,
                    (pcat[pairs].astype(np.int64), pw[pairs].astype(np.float64)))
        if c.kind == "mean":
            return x, y, w, (extra[0][cells], extra[1][cells])
        return x, y, w, None
