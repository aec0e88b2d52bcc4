"""The pure render function of the map: (x range, y range, width, height, colouring) -> PNG.

:class:`FrameRenderer` keeps a layout in Z-order (:class:`~bigembed.view.spatial.
SpatialIndex`). A frame whose view holds few points aggregates exactly those points (the
same aggregate Datashader makes from the whole dataframe, since points outside the range
are dropped either way). A frame that would touch many points is answered from the
aggregate pyramid instead: each non-empty cell of the coarsest level whose cells are at most
one pixel wide becomes one weighted point at its points' centroid. So frame cost follows
the visible points or the pixels, whichever is smaller, never N. A filter on one categorical
column, with the frame coloured by density or by that column, is drawn from the pyramid too
(each cell's counts of the allowed categories); other filters are drawn exactly.

Colourings: ``None``/``"density"`` (count, histogram-equalised), a categorical column such
as ``label`` or ``prediction`` (count per category, with a legend), ``"correct"`` (error rate
per pixel), any numeric column, and layout columns such as ``knn_preservation`` (mean per
pixel, with a colour bar).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, replace

import numpy as np

from ..errors import DatasetError, InputError
from .colouring import (DENSITY_CMAP, ERROR_CMAP, MAX_CATEGORIES, MEAN_CMAP, Colouring,  # noqa: F401
                        _palette, code_dtype, colouring_of, int_codes)
from .pyramid import Pyramid
from .raster import RASTER, View
from .shade import png_rgba
from .spatial import SpatialIndex

log = logging.getLogger(__name__)

#: pyramid cells are at most this many pixels wide: each lands in its centroid's pixel, so a
#: cell straddling a pixel edge moves its points by less than one pixel
PYRAMID_CELL_PX = 1.0
MAX_SIDE = 4096
DENSITY_FROM = 30  # skip the near-black start of "fire" so sparse pixels stay visible
CAT_MIN_ALPHA = 120  # sparse categorical pixels must stay visible on white
SPREAD_THRESHOLD = 0.5
SPREAD_MAX_PX = 2
#: bump when the same data would give other frame bytes (shading, palettes, spreading, PNG):
#: part of the key of the whole-layout frames a stored map keeps (see ``FrameRenderer.render``)
FRAME_CACHE_FORMAT = 1


@dataclass(frozen=True)
class Frame:
    """One rendered frame: PNG bytes and how it was made (exact points or pyramid level)."""

    png: bytes
    mode: str
    level: int | None
    points: int
    seconds: float


def _read_kept_frame(path) -> Frame | None:
    """A frame kept by :func:`_keep_frame` (one file: a JSON header line, then the PNG), or
    None when there is none or it cannot be read."""
    try:
        data = path.read_bytes()
        head, png = data.split(b"\n", 1)
        meta = json.loads(head)
        if len(png) != meta["bytes"]:
            return None
        return Frame(png, meta["mode"], meta["level"], int(meta["points"]), 0.0)
    except (OSError, ValueError, KeyError):
        return None


def _keep_frame(path, frame: Frame) -> None:
    """Write ``frame`` under ``path`` atomically; a map on a read-only disk keeps none."""
    from ..dataset import _atomic

    head = json.dumps({"mode": frame.mode, "level": frame.level, "points": int(frame.points),
                       "bytes": len(frame.png)}).encode()
    try:
        path.parent.mkdir(exist_ok=True)
        _atomic.write_bytes(path, head + b"\n" + frame.png)
    except OSError as e:
        log.debug("frame not kept at %s: %s", path, e)


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


def _filter_key(where: dict) -> tuple:
    """A filter as a key: ((column, sorted allowed values as text), ...) by column."""
    return tuple(sorted((k, tuple(sorted(map(str, v)))) for k, v in where.items()))


def _allowed_codes(col: str, c, allowed) -> list:
    """The codes of the ``allowed`` values (text) of a categorical colouring ``c`` of column
    ``col``; InputError naming the first value it does not have."""
    bad = [a for a in allowed if a not in c.categories]
    if bad:
        raise InputError(f"filter: column {col!r} has no value {bad[0]!r}; it has "
                         f"{sorted(c.categories)[:20]}")
    return [c.categories.index(a) for a in allowed]


class _LayoutRef:
    """The name and manifest record of a layout whose coordinates are not loaded (a renderer
    over its on-disk map)."""

    def __init__(self, name: str, record: dict):
        self.name, self.record = name, record

    @property
    def space(self):
        return self.record.get("space")

    @property
    def method(self):
        return self.record.get("method")


class _LayoutColumns:
    """A layout's per-point columns (quality), named from the Arrow schema and read, memory-
    mapped, only when one is asked for; columns set on the renderer are kept here too."""

    def __init__(self, ds, name: str):
        import pyarrow as pa

        self._path = str(ds.path / ds.manifest["layouts"][name]["file"])
        with pa.memory_map(self._path, "r") as mm:
            schema = pa.ipc.open_file(mm).schema
        self._names = [c for c in schema.names if c not in ("x", "y")]
        self._got: dict[str, np.ndarray] = {}

    def __iter__(self):
        return iter(dict.fromkeys(self._names + list(self._got)))

    def __contains__(self, name) -> bool:
        return name in self._got or name in self._names

    def __getitem__(self, name):
        got = self._got.get(name)
        if got is None:
            import pyarrow as pa

            if name not in self._names:
                raise KeyError(name)
            table = pa.ipc.open_file(pa.memory_map(self._path, "r")).read_all()
            got = self._got[name] = table.column(name).to_numpy()
        return got

    def __setitem__(self, name, values) -> None:
        self._got[name] = values


class FrameRenderer:
    """Renders frames of one layout of a dataset. Build once, call :meth:`render_png` often.

    ``ds``: a :class:`~bigembed.dataset.Dataset` (or path); ``layout_name``: a stored layout
    (newest when None). Use :meth:`from_arrays` for a layout held only in memory.
    ``spatial=False`` skips the Z-order sort (every frame then aggregates all points exactly):
    for one frame of the whole layout, as ``bigembed render`` makes, where the sort would cost
    more than the frame. ``backend``: a name from the ``raster`` registry
    (:mod:`bigembed.view.raster`) or a :class:`~bigembed.view.raster.RasterBackend` object.
    """

    def __init__(self, ds, layout_name: str | None = None, *, backend: str = "auto",
                 exact_budget: int | None = None, spatial: bool = True, store: str = "auto"):
        from ..dataset.layouts import load_layout
        from ..dataset.reader import Dataset

        if not isinstance(ds, Dataset):
            ds = Dataset.open(ds)
        if store not in ("auto", "always", "never"):
            raise InputError(f"store must be 'auto', 'always' or 'never', got {store!r}")
        self.ds = ds
        st = self._open_store(ds, layout_name, store) if spatial else None
        if st is not None:
            self.layout = _LayoutRef(st.layout, ds.manifest["layouts"][st.layout])
            self._setup(None, None, _LayoutColumns(ds, st.layout), backend, exact_budget,
                        store=st)
            return
        lay = load_layout(ds, name=layout_name)
        self.layout = lay
        self._setup(lay.x, lay.y, dict(lay.columns), backend, exact_budget, spatial)

    @staticmethod
    def _open_store(ds, layout_name, store):
        """The layout's on-disk map (:mod:`bigembed.view.store`): opened when built; built
        now when ``store`` is "always", or "auto" and the layout has at least
        :data:`~bigembed.view.store.MIN_ROWS` points and the dataset is writable; else None
        (the layout is sorted in memory)."""
        from . import store as mapstore

        if store == "never":
            return None
        st = mapstore.open_map(ds, layout_name)
        if st is not None or (store == "auto" and ds.rows < mapstore.MIN_ROWS):
            return st
        try:
            mapstore.build_map(ds, layout_name)
        except DatasetError as e:
            if store == "always" or "not writable" not in str(e):
                raise
            log.info("frames: %s; the layout is sorted in memory", e)
            return None
        return mapstore.open_map(ds, layout_name)

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

    def _setup(self, x, y, columns, backend, exact_budget, spatial=True, store=None):
        if store is None:
            if x.shape != y.shape or x.ndim != 1:
                raise InputError(f"x and y must be arrays of the same shape (n,), got "
                                 f"{x.shape}, {y.shape}")
            if not (np.isfinite(x).all() and np.isfinite(y).all()):
                raise InputError("layout coordinates must be finite")
        if isinstance(backend, str):
            self.backend, self.raster = RASTER.create(backend)
        elif isinstance(backend, RASTER.interface):
            # an object made by hand: the CPU twin of a GPU backend (tests), say
            self.backend, self.raster = None, backend
        else:
            raise InputError(f"backend must be one of {RASTER.choices()} or a RasterBackend "
                             f"object, got {backend!r}")
        self.store = store
        if store is not None:  # memory-mapped: nothing of size n computed here
            self.index, self.pyramid = store.index, store.pyramid
        else:
            self.index = SpatialIndex(x, y, sort=spatial)
            self.pyramid = Pyramid(self.index)
        self.raster.hold(self.index, self.pyramid)
        self.n = self.index.n
        self.exact_budget = int(exact_budget if exact_budget is not None else
                                self.raster.exact_budget)
        self._extra_columns = columns
        self._set_columns: set[str] = set()
        self._added: dict[str, tuple] = {}
        self._colourings: dict[str, Colouring] = {}
        self._filters: dict[tuple, np.ndarray] = {}
        self._pyramid_filters: dict[tuple, tuple] = {}
        log.info("frames: %d points in Z-order%s, raster backend %r", self.n,
                 f" (memory-mapped from {store.path})" if store is not None else "",
                 self.backend.name if self.backend else type(self.raster).__name__)

    # -- columns and colourings ------------------------------------------------------------
    def columns(self) -> list[str]:
        """Names usable as ``color_by``."""
        names = self.layout_column_names() + self.meta_column_names()
        return ["density"] + [c for c in dict.fromkeys(names) if c not in ("key",)]

    def layout_column_names(self) -> list[str]:
        """Per-point columns of the layout (quality) and those set with :meth:`set_column`."""
        return list(self._extra_columns)

    def meta_column_names(self) -> list[str]:
        """The dataset's metadata columns (but ``id``), from its schema."""
        if self.ds is None:
            return []
        return [c for c in self.ds.meta_columns() if c != "id"]

    def add_column(self, name: str, values, *, span=None, categories=None) -> None:
        """Make ``values`` (id order, shape (n,)) usable as ``color_by=name`` without listing
        it in :meth:`columns`: a colouring a page computes, such as a comparison's
        neighbourhood overlap. ``span``: the fixed (lo, hi) of a numeric colouring (mean per
        pixel); ``categories``: names of the integer codes 0..C-1 of a categorical one.
        Registering the same name again with other values replaces its colouring."""
        v = np.asarray(values)
        if v.shape != (self.n,):
            raise InputError(f"column {name!r} must have shape ({self.n},), got {v.shape}")
        self._added[name] = (v, None if span is None else (float(span[0]), float(span[1])),
                             None if categories is None else tuple(map(str, categories)))
        self._colourings.pop(name, None)

    def remove_column(self, name: str) -> None:
        """Forget a column added with :meth:`add_column` and its colouring (frees memory)."""
        self._added.pop(name, None)
        self._colourings.pop(name, None)

    def has_column(self, name: str) -> bool:
        """Whether ``name`` can be a ``color_by`` (listed or added with :meth:`add_column`)."""
        return name in self._added or name in self.columns()

    def set_column(self, name: str, values) -> None:
        """Add or replace a listed per-point column (array of shape (n,), id order), usable
        as ``color_by`` and in filters and shown among :meth:`columns` (a clustering made
        after the renderer, say)."""
        v = np.asarray(values)
        if v.shape != (self.n,):
            raise InputError(f"column {name!r} must have shape ({self.n},), got {v.shape}")
        self._extra_columns[name] = v
        self._set_columns.add(name)
        self._colourings.pop(name, None)
        self._filters.clear()
        self._pyramid_filters.clear()

    def column(self, name: str) -> np.ndarray:
        """A per-point column in id order: a layout column or a metadata column."""
        if name in self._added:
            return self._added[name][0]
        if name in self._extra_columns:
            return np.asarray(self._extra_columns[name])
        if self.ds is not None and name in self.meta_column_names():
            return self.ds.meta_column(name)
        raise InputError(f"color_by: no column {name!r}; available: {self.columns()}")

    def colouring(self, color_by: str | None) -> Colouring:
        key = color_by or "density"
        c = self._colourings.get(key)
        if c is None:
            c = self._make_colouring(key)
            self._colourings[key] = c
        return c

    def _make_colouring(self, name: str) -> Colouring:
        if name == "density":
            return Colouring("density", "density")
        if self.store is not None:
            c = self.store.colouring(name, self)
            if c is not None:
                return c
        c = colouring_of(name, self.column(name), self._added.get(name))
        return replace(c, values=c.values[self.index.ids])

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

    def aggregate(self, *, x_range, y_range, width, height, color_by=None, mode="auto",
                  where=None):
        """The per-pixel aggregate of a view as an xarray DataArray, plus how it was made.

        Returns (agg, mode, level, points): agg has shape (height, width) (density: counts;
        mean: per-pixel mean, NaN where empty) or (height, width, categories).
        """
        view = self._plan(x_range, y_range, width, height, color_by, mode, where)
        a, items = self._bin(view)
        return (_as_xarray(a, view.colouring, view.x_range, view.y_range, view.width,
                           view.height), view.mode, view.level, items)

    def _bin(self, view: View):
        """The raster backend's aggregate of a planned view: (array, items binned)."""
        kind = view.colouring.kind
        if kind == "categorical":
            return self.raster.category_counts(view)
        if kind == "mean":
            return self.raster.means(view)
        return self.raster.counts(view)

    def filter_mask(self, where: dict | None):
        """Bool array of shape (n,) in spatial order: points whose columns match ``where``.

        ``where``: column -> allowed values (compared as text, e.g. ``{"label": ["3", "5"],
        "correct": ["False"]}``); None or empty: no filter (returns None). Cached.
        """
        if not where:
            return None
        key = _filter_key(where)
        got = self._filters.get(key)
        if got is not None:
            return got
        mask = np.ones(self.n, bool)
        for col, allowed in key:
            if col == "density" or col not in self.columns():
                raise InputError(f"filter: no column {col!r}; available: {self.columns()[1:]}")
            try:
                c = self.colouring(col) if col != "correct" else None
            except InputError:  # too many values to colour: compared as text below
                c = None
            if c is not None and c.kind == "categorical":
                # the colouring's codes, already in spatial order (a stored map's, memory-
                # mapped: no text of n values); its categories are the values as text
                codes = _allowed_codes(col, c, allowed)
                mask &= np.isin(np.asarray(c.values), np.asarray(codes, c.values.dtype))
                continue
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

    def pyramid_filter(self, where: dict | None, colouring: Colouring):
        """The filter ``where`` as a pyramid frame applies it to its cells, or None when it
        cannot: (filter colouring, sorted allowed codes) (:attr:`View.keep
        <bigembed.view.raster.View.keep>`).

        A pyramid frame can filter when ``where`` has one column, that column has a
        categorical colouring (not ``correct``: a text filter), and the frame is coloured
        by density or by that same column: the pyramid holds each cell's count per
        category, so the cell keeps the counts of the allowed categories. The allowed
        values are checked against the colouring's categories (InputError naming an unknown
        one), with no pass over the points: a stored map's filter mask is not computed.
        """
        if not where or len(where) != 1 or not self.index.sorted:
            return None
        key = _filter_key(where)
        ((col, allowed),) = key
        if colouring.kind != "density" and colouring.name != col:
            return None
        got = self._pyramid_filters.get(key)
        if got is not None and self._colourings.get(col) is got[0]:  # (no schema read)
            return got if colouring.kind == "density" or got[0] is colouring else None
        if col in ("density", "correct") or col not in self.columns():
            return None
        try:
            fc = self.colouring(col)
        except InputError:  # too many values to colour: a text filter (exact)
            return None
        if fc.kind != "categorical" or (colouring.kind != "density" and fc is not colouring):
            return None
        got = (fc, tuple(sorted(set(_allowed_codes(col, fc, allowed)))))
        if len(self._pyramid_filters) > 32:
            self._pyramid_filters.clear()
        self._pyramid_filters[key] = got
        return got

    def _plan(self, x_range, y_range, width, height, color_by, mode, where=None) -> View:
        """Validate a view and pick what it aggregates: the points in view or pyramid cells.

        Returns a :class:`~bigembed.view.raster.View`: runs (r, 2) of point positions (exact)
        or of cell numbers at ``level`` (pyramid). A filter (``where``) on one categorical
        column, in a frame coloured by density or by that column, is drawn from the pyramid
        when the frame would be anyway (``mode`` "pyramid", or "auto" with more than
        ``exact_budget`` points in view): each cell counts only its points of the allowed
        values (:meth:`pyramid_filter`), and no filter mask of the n points is made. Every
        other filter (several columns, ``correct``, a numeric column, a colouring by another
        column or a mean) aggregates the matching points in view exactly (the filter mask,
        :meth:`filter_mask`), so its cost follows the visible points.
        """
        x_range = _check_range("x_range", x_range)
        y_range = _check_range("y_range", y_range)
        width = _check_side("width", width)
        height = _check_side("height", height)
        if mode not in ("auto", "exact", "pyramid"):
            raise InputError(f"mode must be 'auto', 'exact' or 'pyramid', got {mode!r}")
        c = self.colouring(color_by)
        level = self._pyramid_level(x_range, y_range, width, height)
        keep = self.pyramid_filter(where, c) if where else None
        fmask = None
        if (where and keep is None) or not self.index.sorted:
            mode = "exact"
        runs = None
        if mode == "auto":
            runs, _ = self.index.ranges(x_range, y_range)
            visible = int((runs[:, 1] - runs[:, 0]).sum())
            mode = "pyramid" if (visible > self.exact_budget and level is not None) else "exact"
        if mode == "pyramid" and level is None:
            mode = "exact"
        if mode == "exact":
            fmask, keep = self.filter_mask(where), None
            if runs is None:
                runs, _ = self.index.ranges(x_range, y_range)
            level = None
        else:
            runs, _ = self.index.ranges(x_range, y_range, max_level=level)
            starts = self.index.level_starts(level)
            runs = np.stack([np.searchsorted(starts, runs[:, 0]),
                             np.searchsorted(starts, runs[:, 1])], 1)
        return View(x_range=x_range, y_range=y_range, width=width, height=height, colouring=c,
                    mode=mode, level=level, runs=runs, mask=fmask, keep=keep)

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

    def _image(self, view: View):
        """A frame's RGBA image (uint32 (H, W)) and the items binned, shaded straight from
        the backend's arrays (no xarray); wrapped for Datashader's ``spread`` only when it
        must be spread."""
        import colorcet as cc

        from . import shade as sh

        c = view.colouring
        if c.kind == "categorical":
            return self._categorical_image(view)
        a, items = self._bin(view)
        if c.kind == "mean":
            img, nz = sh.shade_mean(a, getattr(cc, c.cmap), c.span, return_nz=True)
        else:
            img, nz = sh.shade_density(a, getattr(cc, DENSITY_CMAP)[DENSITY_FROM:],
                                       return_nz=True)
        return self._spread(img, view, nz), items

    def _categorical_image(self, view: View):
        """A categorical frame from the first form the backend bins: colour sums (four
        accumulators per pixel whatever the number of categories), the pixel and category of
        each point in view (O(points + pixels), never the dense (H, W, C) aggregate), or the
        dense per-category counts."""
        from . import shade as sh

        c = view.colouring
        shape = (view.height, view.width)
        sums = self.raster.colour_sums(view)
        if sums is not None:
            acc, items = sums
            img, nz = sh.shade_categorical_mixed(acc, shape=shape, colors=c.colors,
                                                 min_alpha=CAT_MIN_ALPHA, return_nz=True)
            # None in the one case the sums cannot match Datashader: every pixel non-empty
            # (then Datashader subtracts the smallest per-category count, which needs them all)
            if img is not None:
                return self._spread(img, view, nz), items
        pixels = self.raster.category_pixels(view)
        if pixels is not None:
            pix, cat, weight, items = pixels
            img = sh.shade_categorical_sparse(pix, cat, weight, shape=shape, colors=c.colors,
                                              min_alpha=CAT_MIN_ALPHA)
        else:
            a, items = self.raster.category_counts(view)
            img = sh.shade_categorical(a.astype(np.uint32, copy=False), c.colors,
                                       min_alpha=CAT_MIN_ALPHA)
        return self._spread(img, view), items

    @staticmethod
    def _spread(img, view: View, nz=None):
        """Datashader's dynspread of an RGBA array; wrapped as an Image only to spread it."""
        from . import shade as sh

        px = sh.spread_px(img, threshold=SPREAD_THRESHOLD, max_px=SPREAD_MAX_PX, nz=nz)
        if px:
            from ..kernels.raster import spread_image  # Datashader's spread, cached kernel

            img = spread_image(np.asarray(getattr(img, "data", img)), px)
        return img

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
                        height=height, color_by=color_by, cache=False)

    def render(self, *, x_range=None, y_range=None, width=800, height=800, color_by=None,
               mode="auto", where=None, cache: bool = True) -> Frame:
        """Render one frame to PNG bytes; ``None`` ranges mean the whole layout.

        ``where`` filters points (see :meth:`filter_mask`); a frame of many points filtered
        on one categorical column and coloured by density or by that column is drawn from
        the pyramid (see :meth:`_plan`). ``cache``: the frame of the whole layout
        (:meth:`default_range`, no filter, ``mode="auto"``) of a stored map is kept in the
        map's directory (``frames/``, keyed by the colouring's stored key, the size, the
        exact budget, the raster backend and :data:`FRAME_CACHE_FORMAT`), so the first frame
        a new page or notebook cell shows is read, not rendered (no JIT code to load).
        """
        t0 = time.perf_counter()
        dx, dy = self.default_range()
        x_range = dx if x_range is None else x_range
        y_range = dy if y_range is None else y_range
        kept = None
        if cache and self.store is not None and where is None and mode == "auto":
            kept = self._kept_frame_path(x_range, y_range, width, height, color_by)
            got = _read_kept_frame(kept) if kept is not None else None
            if got is not None:
                return replace(got, seconds=time.perf_counter() - t0)
        view = self._plan(x_range, y_range, width, height, color_by, mode, where)
        img, items = self._image(view)
        png = png_rgba(np.asarray(getattr(img, "data", img)))
        frame = Frame(png, view.mode, view.level, items, time.perf_counter() - t0)
        if kept is not None:
            _keep_frame(kept, frame)
        return frame

    def _kept_frame_path(self, x_range, y_range, width, height, color_by):
        """Where the whole-layout frame of this colouring and size is kept in the stored map,
        or None when the view is not the whole layout or the colouring is not stored (a
        column set or added in memory has no key on disk)."""
        from .store import StoredColouring

        try:
            view = (tuple(map(float, x_range)), tuple(map(float, y_range)))
        except (TypeError, ValueError):
            return None  # _plan says what is wrong
        if view != tuple(tuple(map(float, r)) for r in self.default_range()):
            return None
        try:
            c = self.colouring(color_by)
        except InputError:
            return None
        if c.kind == "density":
            ck = "density"
        elif isinstance(c, StoredColouring):
            ck = c.path.name
        else:
            return None
        import xxhash

        from .._version import __version__

        backend = self.backend.name if self.backend else type(self.raster).__name__
        key = xxhash.xxh3_64(json.dumps([ck, int(width), int(height), self.exact_budget, backend,
                                         FRAME_CACHE_FORMAT, __version__]).encode()).hexdigest()
        return self.store.path / "frames" / f"{key}.frame"


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
        if not hasattr(self, "_pos_of_id") and self.store is not None:
            self._pos_of_id = self.store.pos
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
