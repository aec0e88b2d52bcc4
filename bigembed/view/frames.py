"""The pure render function of the map: (x range, y range, width, height, colouring) -> PNG.

:class:`FrameRenderer` keeps a layout in Z-order (:class:`~bigembed.view.spatial.
SpatialIndex`). A frame whose view holds few points aggregates exactly those points (the
same aggregate Datashader makes from the whole dataframe, since points outside the range
are dropped either way). A frame that would touch many points is answered from the
aggregate pyramid instead: each non-empty cell of the coarsest level whose cells are at most
one pixel wide becomes one weighted point at its points' centroid. So frame cost follows
the visible points or the pixels, whichever is smaller, never N.

Colourings: ``None``/``"density"`` (count, histogram-equalised), a categorical column such
as ``label`` or ``prediction`` (count per category, with a legend), ``"correct"`` (error rate
per pixel), any numeric column, and layout columns such as ``knn_preservation`` (mean per
pixel, with a colour bar).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .raster import RASTER
from .shade import png_rgba
from .spatial import SpatialIndex

log = logging.getLogger(__name__)

#: pyramid cells are at most this many pixels wide: each lands in its centroid's pixel, so a
#: cell straddling a pixel edge moves its points by less than one pixel
PYRAMID_CELL_PX = 1.0
MAX_SIDE = 4096
MAX_CATEGORIES = 64
#: colour maps (colorcet names) per kind
DENSITY_CMAP = "fire"
MEAN_CMAP = "bmy"
ERROR_CMAP = "coolwarm"
DENSITY_FROM = 30  # skip the near-black start of "fire" so sparse pixels stay visible
CAT_MIN_ALPHA = 120  # sparse categorical pixels must stay visible on white
SPREAD_THRESHOLD = 0.5
SPREAD_MAX_PX = 2


@dataclass(frozen=True)
class Colouring:
    """How points are coloured: ``kind`` in density/categorical/mean.

    ``values``: array of shape (n,) in spatial order (category codes or floats) or None;
    ``categories``: names of the codes; ``span``: (lo, hi) of a mean colouring.
    """

    name: str
    kind: str
    values: np.ndarray | None = None
    categories: tuple = ()
    colors: tuple = ()
    span: tuple | None = None
    cmap: str = DENSITY_CMAP


@dataclass(frozen=True)
class Frame:
    """One rendered frame: PNG bytes and how it was made (exact points or pyramid level)."""

    png: bytes
    mode: str
    level: int | None
    points: int
    seconds: float


def _centres(r, n: int) -> np.ndarray:
    """Pixel-centre coordinates of ``n`` pixels over the range ``r`` (as Datashader)."""
    return np.linspace(r[0], r[1], n, endpoint=False) + (r[1] - r[0]) / n / 2


def _as_xarray(a, c, x_range, y_range, width, height):
    """An aggregate array as the xarray Datashader makes (pixel-centre coordinates)."""
    import xarray as xr

    xs, ys = _centres(x_range, width), _centres(y_range, height)
    if c.kind != "mean":
        a = a.astype(np.uint32, copy=False)  # sums of whole counts: exact integers already
    if a.ndim == 3:
        return xr.DataArray(a, coords={"y": ys, "x": xs, "c": list(c.categories)},
                            dims=("y", "x", "c"))
    return xr.DataArray(a, coords={"y": ys, "x": xs}, dims=("y", "x"))


def _palette(n: int) -> tuple:
    """``n`` categorical colours (hex), colorcet's glasbey_category10 repeated."""
    import colorcet as cc

    pal = cc.glasbey_category10
    return tuple(cc.rgb_to_hex(*[int(255 * c) for c in pal[i % len(pal)]]) for i in range(n))


def _check_range(name, r):
    try:
        lo, hi = float(r[0]), float(r[1])
    except (TypeError, ValueError, IndexError):
        raise InputError(f"{name} must be a pair of numbers (lo, hi), got {r!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
        raise InputError(f"{name} must be finite with lo < hi, got ({lo}, {hi})")
    # float32 coordinates cannot be told apart below ~1e-7 relative; 1e-12 is far past that
    if not math.isfinite(hi - lo) or (hi - lo) <= 1e-12 * max(1.0, abs(lo), abs(hi)):
        raise InputError(f"{name} ({lo}, {hi}) is too narrow or too wide to render")
    return lo, hi


def _check_side(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= MAX_SIDE:
        raise InputError(f"{name} must be an integer in 1..{MAX_SIDE}, got {v!r}")
    return int(v)


class FrameRenderer:
    """Renders frames of one layout of a dataset. Build once, call :meth:`render_png` often.

    ``ds``: a :class:`~bigembed.dataset.Dataset` (or path); ``layout_name``: a stored layout
    (newest when None). Use :meth:`from_arrays` for a layout held only in memory.
    ``spatial=False`` skips the Z-order sort (every frame then aggregates all points exactly):
    for one frame of the whole layout, as ``bigembed render`` makes, where the sort would cost
    more than the frame.
    """

    def __init__(self, ds, layout_name: str | None = None, *, backend: str = "auto",
                 exact_budget: int | None = None, spatial: bool = True):
        from ..dataset.layouts import load_layout
        from ..dataset.reader import Dataset

        if not isinstance(ds, Dataset):
            ds = Dataset.open(ds)
        lay = load_layout(ds, name=layout_name)
        self.ds = ds
        self.layout = lay
        self._setup(lay.x, lay.y, dict(lay.columns), backend, exact_budget, spatial)

    @classmethod
    def from_arrays(cls, x, y, *, columns: dict | None = None, backend: str = "auto",
                    exact_budget: int | None = None, spatial: bool = True) -> "FrameRenderer":
        """A renderer over in-memory arrays: x, y of shape (n,), columns name -> (n,)."""
        self = cls.__new__(cls)
        self.ds = None
        self.layout = None
        self._setup(np.asarray(x, np.float32), np.asarray(y, np.float32), dict(columns or {}),
                    backend, exact_budget, spatial)
        return self

    def _setup(self, x, y, columns, backend, exact_budget, spatial=True):
        if x.shape != y.shape or x.ndim != 1:
            raise InputError(f"x and y must be arrays of the same shape (n,), got {x.shape}, {y.shape}")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise InputError("layout coordinates must be finite")
        self.backend, self.raster = RASTER.create(backend)
        self.device = self.raster.device
        self._numba = self.raster.bins_runs
        self.index = SpatialIndex(x, y, sort=spatial)
        self.n = self.index.n
        self.exact_budget = int(exact_budget if exact_budget is not None else
                                self.raster.exact_budget)
        self._extra_columns = columns
        self._colourings: dict[str, Colouring] = {}
        self._filters: dict[tuple, np.ndarray] = {}
        self._pyramid: dict[tuple, tuple] = {}
        self._dev = None
        if self.device is not None:
            import torch

            self._dev = (torch.as_tensor(self.index.xs, device=self.device),
                         torch.as_tensor(self.index.ys, device=self.device))
        log.info("frames: %d points in Z-order, raster backend %r", self.n, self.backend.name)

    # -- columns and colourings ------------------------------------------------------------
    def columns(self) -> list[str]:
        """Names usable as ``color_by``."""
        names = list(self._extra_columns)
        if self.ds is not None:
            names += [c for c in self.ds.meta.columns if c not in ("id",)]
        return ["density"] + [c for c in dict.fromkeys(names) if c not in ("key",)]

    def column(self, name: str) -> np.ndarray:
        """A per-point column in id order: a layout column or a metadata column."""
        if name in self._extra_columns:
            return np.asarray(self._extra_columns[name])
        if self.ds is not None and name in self.ds.meta.columns:
            return self.ds.meta[name].to_numpy()
        raise InputError(f"color_by: no column {name!r}; available: {self.columns()}")

    def colouring(self, color_by: str | None) -> Colouring:
        key = color_by or "density"
        c = self._colourings.get(key)
        if c is None:
            c = self._make_colouring(key)
            self._colourings[key] = c
        return c

    def _make_colouring(self, name: str) -> Colouring:
        import pandas as pd

        if name == "density":
            return Colouring("density", "density")
        col = self.column(name)
        ids = self.index.ids
        if name == "correct":
            err = 1.0 - np.asarray(col, np.float64)
            return Colouring(name, "mean", err[ids], span=(0.0, 1.0), cmap=ERROR_CMAP)
        if col.dtype.kind == "f":
            v = np.asarray(col, np.float64)
            fin = v[np.isfinite(v)]
            span = (float(fin.min()), float(fin.max())) if len(fin) else (0.0, 1.0)
            if span[0] == span[1]:
                span = (span[0], span[0] + 1.0)
            if name == "knn_preservation":
                span = (0.0, 1.0)
            return Colouring(name, "mean", v[ids], span=span, cmap=MEAN_CMAP)
        if col.dtype.kind in "iub":
            # Integer labels: codes from np.unique (numeric order), no text conversion of N
            # values (a second of work at 4M points).
            uniq, inv = np.unique(col, return_inverse=True)
            if len(uniq) <= MAX_CATEGORIES:
                return Colouring(name, "categorical", inv.astype(np.int64)[ids],
                                 tuple(str(u) for u in uniq.tolist()), _palette(len(uniq)))
        cats = pd.Categorical(pd.Series(col).astype(str))
        if len(cats.categories) > MAX_CATEGORIES:
            if col.dtype.kind in "iub":
                v = np.asarray(col, np.float64)
                return Colouring(name, "mean", v[ids], span=(float(v.min()), float(v.max()) or 1.0),
                                 cmap=MEAN_CMAP)
            raise InputError(f"color_by: column {name!r} has {len(cats.categories)} distinct "
                             f"values; at most {MAX_CATEGORIES} can be told apart by colour")
        cat_names = tuple(str(c) for c in cats.categories)
        if col.dtype.kind in "iu":
            # Order integer labels numerically, not as strings ("10" after "9").
            cat_names = tuple(sorted(cat_names, key=lambda s: int(s)))
            cats = pd.Categorical(pd.Series(col).astype(str), categories=list(cat_names))
        codes = np.asarray(cats.codes, np.int64)[ids]
        return Colouring(name, "categorical", codes, cat_names, _palette(len(cat_names)))

    def legend(self, color_by: str | None = None) -> dict:
        """What the colours mean: categories and colours, or a span and colour map."""
        c = self.colouring(color_by)
        if c.kind == "categorical":
            return {"kind": "categorical", "column": c.name,
                    "items": [{"name": n, "color": col} for n, col in zip(c.categories, c.colors)]}
        if c.kind == "mean":
            return {"kind": "mean", "column": c.name, "span": list(c.span), "cmap": c.cmap}
        return {"kind": "density", "column": "density", "cmap": DENSITY_CMAP}

    # -- aggregation -----------------------------------------------------------------------
    def default_range(self, pad: float = 0.02):
        (x0, x1), (y0, y1) = self.index.bounds
        px = (x1 - x0) * pad or 1.0
        py = (y1 - y0) * pad or 1.0
        return (x0 - px, x1 + px), (y0 - py, y1 + py)

    def _pyramid_level(self, x_range, y_range, width, height) -> int | None:
        """Coarsest level whose cells are at most ``PYRAMID_CELL_PX`` pixel on both axes."""
        px = (x_range[1] - x_range[0]) / width * PYRAMID_CELL_PX
        py = (y_range[1] - y_range[0]) / height * PYRAMID_CELL_PX
        for lv in range(self.index.levels + 1):
            cw, ch = self.index.cell_size(lv)
            if cw <= px and ch <= py:
                return lv
        return None

    def _cells(self, level: int, colouring: Colouring):
        """Pyramid arrays of ``level``: centroid x, y, weight, values (cached)."""
        key = (level, colouring.name)
        got = self._pyramid.get(key)
        if got is not None:
            return got
        base = self._pyramid.get((level, None))
        starts = self.index.level_starts(level)
        if base is None:
            cnt = np.diff(starts).astype(np.float64)
            head = starts[:-1]
            # float32 like the layout itself: half the memory of the finest levels
            mx = (np.add.reduceat(self.index.xs.astype(np.float64), head) / cnt).astype(np.float32)
            my = (np.add.reduceat(self.index.ys.astype(np.float64), head) / cnt).astype(np.float32)
            base = (mx, my, cnt.astype(np.float32))
            self._pyramid[(level, None)] = base
        mx, my, cnt = base
        head = starts[:-1]
        if colouring.kind == "categorical":
            # Sparse (cell, category, count) triples sorted by cell, with per-cell offsets,
            # so a frame takes the triples of its cells as runs, without a dense scan.
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
        self._pyramid[key] = got
        return got

    def aggregate(self, *, x_range, y_range, width, height, color_by=None, mode="auto",
                  where=None):
        """The per-pixel aggregate of a view as an xarray DataArray, plus how it was made.

        Returns (agg, mode, level, points): agg has shape (height, width) (density: counts;
        mean: per-pixel mean, NaN where empty) or (height, width, categories).
        """
        if self._numba:
            return self._aggregate_cpu(self._plan(x_range, y_range, width, height, color_by,
                                                  mode, where))
        if self.device is not None:
            plan = self._plan(x_range, y_range, width, height, color_by, mode, where)
            if plan[5] == "exact":
                return self._aggregate_device_exact(plan)
        sel = self._select(x_range, y_range, width, height, color_by, mode, where)
        x_range, y_range, width, height, c, mode, level, x, y, w, vals = sel
        agg = self._bin(x, y, w, vals, c, x_range, y_range, width, height, weighted=mode == "pyramid")
        return agg, mode, level, int(len(x))

    def filter_mask(self, where: dict | None):
        """Bool array of shape (n,) in spatial order: points whose columns match ``where``.

        ``where``: column -> allowed values (compared as text, e.g. ``{"label": ["3", "5"],
        "correct": ["False"]}``); None or empty: no filter (returns None). Cached.
        """
        if not where:
            return None
        key = tuple(sorted((k, tuple(sorted(map(str, v)))) for k, v in where.items()))
        got = self._filters.get(key)
        if got is not None:
            return got
        mask = np.ones(self.n, bool)
        for col, allowed in key:
            if col == "density" or col not in self.columns():
                raise InputError(f"filter: no column {col!r}; available: {self.columns()[1:]}")
            v = np.asarray(self.column(col))
            if v.dtype.kind == "f" and col != "correct":
                raise InputError(f"filter: column {col!r} is numeric; filter on a categorical "
                                 f"column (label, prediction, correct)")
            text = v.astype(str)
            known = set(np.unique(text).tolist())
            bad = [a for a in allowed if a not in known]
            if bad:
                raise InputError(f"filter: column {col!r} has no value {bad[0]!r}; it has "
                                 f"{sorted(known)[:20]}")
            mask &= np.isin(text, list(allowed))[self.index.ids]
        if len(self._filters) > 32:
            self._filters.clear()
        self._filters[key] = mask
        return mask

    def _plan(self, x_range, y_range, width, height, color_by, mode, where=None):
        """Validate a view and pick what it aggregates: the points in view or pyramid cells.

        Returns (x_range, y_range, width, height, colouring, mode, level, runs, mask): runs
        (r, 2) of point positions (exact) or of cell numbers at ``level`` (pyramid). A filter
        (``where``) aggregates the matching points in view exactly (the pyramid holds all
        points), so its cost follows the visible points.
        """
        x_range = _check_range("x_range", x_range)
        y_range = _check_range("y_range", y_range)
        width = _check_side("width", width)
        height = _check_side("height", height)
        if mode not in ("auto", "exact", "pyramid"):
            raise InputError(f"mode must be 'auto', 'exact' or 'pyramid', got {mode!r}")
        c = self.colouring(color_by)
        level = self._pyramid_level(x_range, y_range, width, height)
        fmask = self.filter_mask(where)
        if fmask is not None or not self.index.sorted:
            mode = "exact"
        runs = None
        if mode == "auto":
            runs, _ = self.index.ranges(x_range, y_range)
            visible = int((runs[:, 1] - runs[:, 0]).sum())
            mode = "pyramid" if (visible > self.exact_budget and level is not None) else "exact"
        if mode == "pyramid" and level is None:
            mode = "exact"
        if mode == "exact":
            if runs is None:
                runs, _ = self.index.ranges(x_range, y_range)
            level = None
        else:
            runs, _ = self.index.ranges(x_range, y_range, max_level=level)
            starts = self.index.level_starts(level)
            runs = np.stack([np.searchsorted(starts, runs[:, 0]),
                             np.searchsorted(starts, runs[:, 1])], 1)
        return x_range, y_range, width, height, c, mode, level, runs, fmask

    def _select(self, x_range, y_range, width, height, color_by, mode, where=None):
        """:meth:`_plan`, then the arrays of what is aggregated (gathered)."""
        plan = self._plan(x_range, y_range, width, height, color_by, mode, where)
        x_range, y_range, width, height, c, mode, level, runs, fmask = plan
        if mode == "exact":
            pos = self.index.positions(runs)
            if fmask is not None:
                pos = pos[fmask[pos]]
            x, y = self.index.xs[pos], self.index.ys[pos]
            vals = None if c.values is None else c.values[pos]
            w = None
        else:
            g0, g1 = runs[:, 0], runs[:, 1]
            cells = SpatialIndex.positions(runs)
            mx, my, cnt, extra = self._cells(level, c)
            x, y, w = mx[cells], my[cells], cnt[cells]
            if c.kind == "categorical":
                pc, pcat, pw, offs = extra
                pairs = SpatialIndex.positions(np.stack([offs[g0], offs[g1]], 1))
                x, y = mx[pc[pairs]], my[pc[pairs]]
                vals = (pcat[pairs], pw[pairs])
            elif c.kind == "mean":
                vals = (extra[0][cells], extra[1][cells])
            else:
                vals = None
        return x_range, y_range, width, height, c, mode, level, x, y, w, vals

    # -- the CPU path: numba kernels over the runs, nothing gathered -------------------------
    def _lut(self, c: Colouring, mix: bool) -> np.ndarray:
        """Per category what a point adds: one-hot counts, or (1, r, g, b) to mix colours."""
        if not mix:
            return np.eye(len(c.categories), dtype=np.float64)
        from .shade import _rgb

        return np.c_[np.ones(len(c.categories)), _rgb(c.colors)]

    def _cell_weights(self, level: int, c: Colouring, mix: bool):
        """(x, y, weights (cells, ch)) of a pyramid level for the run kernels (cached)."""
        key = (level, c.name, "w", mix)
        got = self._pyramid.get(key)
        if got is not None:
            return got
        # (categorical: the per-cell colour sums below, not _cells' sparse triples)
        mx, my, cnt, extra = self._cells(level, self.colouring(None) if c.kind == "categorical"
                                         else c)
        if c.kind == "density":
            w = cnt.astype(np.float64)[:, None]
        elif c.kind == "mean":
            w = np.stack([extra[0], extra[1]], 1)
        else:
            starts = self.index.level_starts(level)
            group = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
            lut = self._lut(c, mix)
            w = np.stack([np.bincount(group, weights=lut[:, j][c.values],
                                      minlength=len(starts) - 1)
                          for j in range(lut.shape[1])], 1)
        got = (mx, my, np.ascontiguousarray(w))
        if len(self._pyramid) > 64:
            self._pyramid.clear()
        self._pyramid[key] = got
        return got

    def _acc_cpu(self, plan, *, mix: bool = False):
        """Per-pixel accumulators (H*W, ch) of a planned view, and the items visited."""
        from ..kernels.raster import bin_runs

        x_range, y_range, width, height, c, mode, level, runs, fmask = plan
        kw = dict(x_range=x_range, y_range=y_range, width=width, height=height)
        touched = int((runs[:, 1] - runs[:, 0]).sum()) if len(runs) else 0
        if mode == "pyramid":
            mx, my, w = self._cell_weights(level, c, mix)
            acc, hits = bin_runs(mx, my, runs, weights=w, **kw)
        elif c.kind == "density":
            acc, hits = bin_runs(self.index.xs, self.index.ys, runs, mask=fmask, **kw)
        elif c.kind == "mean":
            acc, hits = bin_runs(self.index.xs, self.index.ys, runs, mean_of=c.values,
                                 mask=fmask, **kw)
        elif mix:
            acc, hits = bin_runs(self.index.xs, self.index.ys, runs, codes=c.values,
                                 lut=self._lut(c, mix), mask=fmask, **kw)
        else:
            acc, hits = bin_runs(self.index.xs, self.index.ys, runs, codes=c.values,
                                 n_codes=len(c.categories), mask=fmask, **kw)
        # Items visited; with a filter, the matching points in view.
        return acc, (hits if fmask is not None else touched)

    def _on_device(self, key, array):
        """``array`` as a tensor on the raster device, kept per ``key`` (colourings, masks)."""
        import torch

        cache = self.__dict__.setdefault("_dev_cache", {})
        got = cache.get(key)
        if got is None or got[0] is not array:
            if len(cache) > 16:
                cache.clear()
            got = (array, torch.as_tensor(np.ascontiguousarray(array), device=self.device))
            cache[key] = got
        return got[1]

    def _aggregate_device_exact(self, plan):
        """An exact frame on the torch device: the layout stays there (copied once at start);
        only the view's runs go to the device and only the aggregate comes back."""
        import torch

        from ..kernels.raster import bin_points_torch, run_positions_torch

        x_range, y_range, width, height, c, mode, level, runs, fmask = plan
        pos = run_positions_torch(torch.as_tensor(runs, device=self.device))
        if fmask is not None:
            pos = pos[self._on_device(("mask", id(fmask)), fmask)[pos]]
        x, y = self._dev[0][pos], self._dev[1][pos]
        kw = dict(x_range=x_range, y_range=y_range, width=width, height=height)
        if c.kind == "density":
            arr = bin_points_torch(x, y, **kw)
        elif c.kind == "categorical":
            codes = self._on_device(("values", c.name), c.values)[pos]
            arr = bin_points_torch(x, y, categories=codes, n_categories=len(c.categories), **kw)
        else:
            v = self._on_device(("values", c.name), c.values)[pos]
            fin = torch.isfinite(v)
            tot = bin_points_torch(x, y, weights=torch.where(fin, v, torch.zeros_like(v)), **kw)
            num = bin_points_torch(x, y, weights=fin.to(torch.float64), **kw)
            arr = torch.where(num > 0, tot / num.clamp(min=1e-300),
                              torch.full_like(tot, float("nan")))
        return (_as_xarray(arr.cpu().numpy(), c, x_range, y_range, width, height), mode, None,
                int(pos.shape[0]))

    def _aggregate_cpu(self, plan):
        x_range, y_range, width, height, c, mode, level, runs, fmask = plan
        acc, touched = self._acc_cpu(plan)
        if c.kind == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                a = np.where(acc[:, 1] > 0, acc[:, 0] / np.where(acc[:, 1] > 0, acc[:, 1], 1),
                             np.nan).reshape(height, width)
        elif c.kind == "categorical":
            a = acc.reshape(height, width, -1)
        else:
            a = acc[:, 0].reshape(height, width)
        return _as_xarray(a, c, x_range, y_range, width, height), mode, level, touched

    def _bin(self, x, y, w, vals, c, x_range, y_range, width, height, *, weighted):
        if self.device is not None:
            return self._bin_torch(x, y, w, vals, c, x_range, y_range, width, height, weighted)
        if weighted:
            # Pyramid cells are weighted points; numpy's bincount (the kernel's reference
            # twin, same pixel mapping as Datashader) sums them faster than a dataframe.
            return self._bin_weighted_numpy(x, y, w, vals, c, x_range, y_range, width, height)
        import datashader as dsh
        import pandas as pd

        cv = dsh.Canvas(plot_width=width, plot_height=height, x_range=x_range, y_range=y_range)
        df = {"x": x, "y": y}
        if not weighted:
            if c.kind == "density":
                return cv.points(pd.DataFrame(df), "x", "y", agg=dsh.count())
            if c.kind == "categorical":
                df["c"] = pd.Categorical.from_codes(vals, categories=list(c.categories))
                return cv.points(pd.DataFrame(df), "x", "y", agg=dsh.count_cat("c"))
            df["v"] = vals
            return cv.points(pd.DataFrame(df), "x", "y", agg=dsh.mean("v"))
        if c.kind == "density":
            df["w"] = w
            return cv.points(pd.DataFrame(df), "x", "y", agg=dsh.sum("w"))
        if c.kind == "categorical":
            cell, cat = np.nonzero(vals)
            d2 = pd.DataFrame({"x": x[cell], "y": y[cell], "w": vals[cell, cat],
                               "c": pd.Categorical.from_codes(cat, categories=list(c.categories))})
            return cv.points(d2, "x", "y", agg=dsh.by("c", dsh.sum("w")))
        s, m = vals
        df["s"], df["m"] = s, m
        frame = pd.DataFrame(df)
        tot = cv.points(frame, "x", "y", agg=dsh.sum("s"))
        num = cv.points(frame, "x", "y", agg=dsh.sum("m"))
        with np.errstate(invalid="ignore", divide="ignore"):
            out = tot / num.where(num > 0)
        return out

    def _bin_weighted_numpy(self, x, y, w, vals, c, x_range, y_range, width, height):
        from ..kernels.raster import bin_points_reference

        kw = dict(x_range=x_range, y_range=y_range, width=width, height=height)
        if c.kind == "density":
            a = bin_points_reference(x, y, weights=w, **kw)
        elif c.kind == "categorical":
            cat, cw = vals
            a = bin_points_reference(x, y, weights=cw, categories=cat,
                                     n_categories=len(c.categories), **kw)
        else:
            s, m = vals
            tot = bin_points_reference(x, y, weights=s, **kw)
            num = bin_points_reference(x, y, weights=m, **kw)
            with np.errstate(invalid="ignore", divide="ignore"):
                a = np.where(num > 0, tot / np.where(num > 0, num, 1), np.nan)
        return _as_xarray(a, c, x_range, y_range, width, height)

    def _bin_torch(self, x, y, w, vals, c, x_range, y_range, width, height, weighted):
        import torch

        from ..kernels.raster import bin_points_torch

        dev = self.device
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), device=dev)  # noqa: E731
        kw = dict(x_range=x_range, y_range=y_range, width=width, height=height)
        tx, ty = t(x), t(y)
        tw = None if w is None else t(w)
        if c.kind == "density":
            arr = bin_points_torch(tx, ty, weights=tw, **kw)
        elif c.kind == "categorical":
            ncat = len(c.categories)
            if weighted:
                cat, cw = vals
                arr = bin_points_torch(tx, ty, weights=t(cw), categories=t(cat),
                                       n_categories=ncat, **kw)
            else:
                arr = bin_points_torch(tx, ty, categories=t(vals), n_categories=ncat, **kw)
        else:
            if weighted:
                s, m = vals
            else:
                fin = np.isfinite(vals)
                s, m = np.where(fin, vals, 0.0), fin.astype(np.float64)
            tot = bin_points_torch(tx, ty, weights=t(s), **kw)
            num = bin_points_torch(tx, ty, weights=t(m), **kw)
            arr = torch.where(num > 0, tot / num.clamp(min=1e-300),
                              torch.full_like(tot, float("nan")))
        return _as_xarray(arr.cpu().numpy(), c, x_range, y_range, width, height)

    # -- shading ---------------------------------------------------------------------------
    def shade(self, agg, color_by=None):
        """Shade an aggregate to a Datashader image (RGBA, transparent where empty).

        Uses :mod:`bigembed.view.shade` (``tf.shade``'s formulas on non-empty pixels only),
        then ``dynspread`` (Datashader's, with a faster density test): isolated points stay visible.
        """
        import colorcet as cc
        import datashader.transfer_functions as tf

        from . import shade as sh

        c = self.colouring(color_by)
        a = np.asarray(agg.data)
        if c.kind == "categorical":
            img = sh.shade_categorical(a, c.colors, min_alpha=CAT_MIN_ALPHA)
        elif c.kind == "mean":
            img = sh.shade_mean(a, getattr(cc, c.cmap), c.span)
        else:
            img = sh.shade_density(a, getattr(cc, DENSITY_CMAP)[DENSITY_FROM:])
        dims = agg.dims[:2]
        out = tf.Image(img, coords={d: agg.coords[d] for d in dims}, dims=dims)
        return sh.dynspread(out, threshold=SPREAD_THRESHOLD, max_px=SPREAD_MAX_PX)

    def _render_categorical(self, x_range, y_range, width, height, color_by, mode, where):
        """A categorical frame without the dense (H, W, C) aggregate: O(points + pixels)."""
        import datashader.transfer_functions as tf

        from ..kernels.raster import pixel_index
        from . import shade as sh

        sel = self._select(x_range, y_range, width, height, color_by, mode, where)
        x_range, y_range, width, height, c, mode, level, x, y, w, vals = sel
        if mode == "pyramid":
            cat, weight = vals
        else:
            cat, weight = vals, None
        pix, keep = pixel_index(x, y, x_range=x_range, y_range=y_range, width=width,
                                height=height)
        img = sh.shade_categorical_sparse(pix, cat[keep],
                                          None if weight is None else weight[keep],
                                          shape=(height, width), colors=c.colors,
                                          min_alpha=CAT_MIN_ALPHA)
        out = tf.Image(img, coords={"y": _centres(y_range, height),
                                    "x": _centres(x_range, width)}, dims=("y", "x"))
        out = sh.dynspread(out, threshold=SPREAD_THRESHOLD, max_px=SPREAD_MAX_PX)
        return out, mode, level, int(len(x))

    def _render_numba(self, x_range, y_range, width, height, color_by, mode, where):
        """A density or mean frame from the accumulators straight to RGBA (no xarray); the
        image is wrapped for Datashader's ``spread`` only when it must be spread."""
        import colorcet as cc

        from . import shade as sh

        plan = self._plan(x_range, y_range, width, height, color_by, mode, where)
        x_range, y_range, width, height, c, mode, level = plan[:7]
        acc, pts = self._acc_cpu(plan)
        if c.kind == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                a = np.where(acc[:, 1] > 0, acc[:, 0] / np.where(acc[:, 1] > 0, acc[:, 1], 1),
                             np.nan).reshape(height, width)
            img = sh.shade_mean(a, getattr(cc, c.cmap), c.span)
            nz = None
        else:
            img, nz = sh.shade_density(acc[:, 0].reshape(height, width),
                                       getattr(cc, DENSITY_CMAP)[DENSITY_FROM:], return_nz=True)
        return self._spread(img, x_range, y_range, width, height, nz), mode, level, pts

    @staticmethod
    def _spread(img, x_range, y_range, width, height, nz=None):
        """Datashader's dynspread of an RGBA array; wrapped as an Image only to spread it."""
        from . import shade as sh

        px = sh.spread_px(img, threshold=SPREAD_THRESHOLD, max_px=SPREAD_MAX_PX, nz=nz)
        if px:
            import datashader.transfer_functions as tf

            img = tf.spread(tf.Image(img, coords={"y": _centres(y_range, height),
                                                  "x": _centres(x_range, width)},
                                     dims=("y", "x")), px, shape="circle")
        return img

    def _render_mixed(self, x_range, y_range, width, height, color_by, mode, where):
        """A categorical frame from four accumulators per pixel (count and the count-weighted
        r, g, b of its points' categories), whatever the number of categories. Returns
        (None, ...) in the one case it cannot match Datashader: every pixel non-empty (then
        Datashader subtracts the smallest per-category count, which needs every count)."""
        from . import shade as sh

        plan = self._plan(x_range, y_range, width, height, color_by, mode, where)
        x_range, y_range, width, height, c, mode, level = plan[:7]
        acc, pts = self._acc_cpu(plan, mix=True)
        img, nz = sh.shade_categorical_mixed(acc, shape=(height, width), colors=c.colors,
                                             min_alpha=CAT_MIN_ALPHA, return_nz=True)
        if img is None:
            return None, mode, level, pts
        return self._spread(img, x_range, y_range, width, height, nz), mode, level, pts

    def shade_reference(self, agg, color_by=None):
        """The same image made by Datashader's ``tf.shade`` itself (the trusted reference)."""
        import colorcet as cc
        import datashader.transfer_functions as tf

        c = self.colouring(color_by)
        if c.kind == "categorical":
            img = tf.shade(agg, color_key=dict(zip(c.categories, c.colors)), how="eq_hist",
                           min_alpha=CAT_MIN_ALPHA)
        elif c.kind == "mean":
            img = tf.shade(agg, cmap=getattr(cc, c.cmap), how="linear", span=list(c.span))
        else:
            img = tf.shade(agg, cmap=getattr(cc, DENSITY_CMAP)[DENSITY_FROM:], how="eq_hist")
        return tf.dynspread(img, threshold=SPREAD_THRESHOLD, max_px=SPREAD_MAX_PX)

    def warm_up(self, width: int = 800, height: int = 800, color_by=None) -> None:
        """Render a few views (JIT-compiles Datashader's kernels, builds pyramid levels)."""
        (x0, x1), (y0, y1) = self.default_range()
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        for z in (1, 2, 4, 64):
            hw, hh = (x1 - x0) / z / 2, (y1 - y0) / z / 2
            self.render(x_range=(cx - hw, cx + hw), y_range=(cy - hh, cy + hh), width=width,
                        height=height, color_by=color_by)

    def render(self, *, x_range=None, y_range=None, width=800, height=800, color_by=None,
               mode="auto", where=None) -> Frame:
        """Render one frame to PNG bytes; ``None`` ranges mean the whole layout.

        ``where`` filters points (see :meth:`filter_mask`).
        """
        t0 = time.perf_counter()
        if x_range is None or y_range is None:
            dx, dy = self.default_range()
            x_range = dx if x_range is None else x_range
            y_range = dy if y_range is None else y_range
        c = self.colouring(color_by)
        img = None
        if self._numba:
            how = self._render_mixed if c.kind == "categorical" else self._render_numba
            img, mode, level, pts = how(x_range, y_range, width, height, color_by, mode, where)
        if img is not None:
            pass  # (a mixed categorical frame is None only when every pixel is non-empty)
        elif c.kind == "categorical" and self.device is None:
            img, mode, level, pts = self._render_categorical(x_range, y_range, width, height,
                                                             color_by, mode, where)
        else:
            agg, mode, level, pts = self.aggregate(x_range=x_range, y_range=y_range,
                                                   width=width, height=height,
                                                   color_by=color_by, mode=mode, where=where)
            img = self.shade(agg, color_by)
        png = png_rgba(np.asarray(getattr(img, "data", img)))
        return Frame(png, mode, level, pts, time.perf_counter() - t0)

    def render_png(self, *, x_range, y_range, width, height, color_by=None) -> bytes:
        """PNG bytes of the view (x_range, y_range) at width x height pixels."""
        return self.render(x_range=x_range, y_range=y_range, width=width, height=height,
                           color_by=color_by).png

    # -- picking ---------------------------------------------------------------------------
    def pick(self, x: float, y: float, radius: float) -> int | None:
        """Id of the nearest point to (x, y) within ``radius`` (data units), or None."""
        ids, _ = self.index.nearest(float(x), float(y), k=1, radius=float(radius))
        return int(ids[0]) if len(ids) else None

    def xy(self, ids) -> np.ndarray:
        """Coordinates of ``ids``: array of shape (len(ids), 2)."""
        ids = np.asarray(ids, np.int64)
        if not hasattr(self, "_pos_of_id"):
            pos = np.empty(self.n, np.int64)
            pos[self.index.ids] = np.arange(self.n)
            self._pos_of_id = pos
        p = self._pos_of_id[ids]
        return np.stack([self.index.xs[p], self.index.ys[p]], 1)

    def neighbors_2d(self, id: int, k: int) -> np.ndarray:
        """The ``k`` nearest other points of ``id`` in the layout; array of ids, shape (<=k,)."""
        px, py = self.xy([id])[0]
        ids, _ = self.index.nearest(float(px), float(py), k=k, exclude=int(id))
        return ids
