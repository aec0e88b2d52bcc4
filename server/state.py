"""What every session of one served dataset shares: renderers, neighbour lookups, selection.

Thread-safe enough for the server's worker pool: renderers are built once under a lock;
everything else is read-only or a per-call computation.
"""

from __future__ import annotations

import logging
import math
import threading

import numpy as np

from ..analysis.stats import GroupSummary
from ..errors import InputError

log = logging.getLogger(__name__)

MAX_K = 200
MAX_SEARCH_HITS = 20
#: a filter widget lists at most this many values of a column
MAX_FILTER_OPTIONS = 200


def true_neighbors(ds, *, space, id, k):
    """The k true (high-dimensional) neighbours of ``id``: a dict shaped as the CLI's --json.

    The one place the view calls the neighbour-search stage (``bigembed.search``), so the
    map, ``/api/neighbors`` and ``bigembed neighbors --json`` answer the same.
    """
    from ..search.lookup import neighbors

    return neighbors(ds, space=space, id=id, k=k).to_json()


def _finite_or_none(v):
    v = float(v)
    return v if math.isfinite(v) else None


def points_in_polygon(x: np.ndarray, y: np.ndarray, px, py) -> np.ndarray:
    """Boolean mask of shape (n,): which points (x, y) lie inside the polygon (px, py)."""
    px = np.asarray(px, np.float64)
    py = np.asarray(py, np.float64)
    inside = np.zeros(len(x), bool)
    j = len(px) - 1
    for i in range(len(px)):
        # Even-odd rule: count edge crossings of a ray to +x.
        yi, yj, xi, xj = py[i], py[j], px[i], px[j]
        cond = (yi > y) != (yj > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xcross = (xj - xi) * (y - yi) / (yj - yi) + xi
        inside ^= cond & (x < xcross)
        j = i
    return inside


def _media_root(path):
    from pathlib import Path

    p = Path(path).expanduser()
    if not p.is_dir():
        raise InputError(f"media_root must be an existing directory, got {str(path)!r}")
    return p.resolve()


class Explorer:
    """Shared state of one served dataset.

    ``dataset``: a path or :class:`~bigembed.dataset.Dataset`. Renderers of its layouts are
    built on first use and kept (a layout in Z-order plus its pyramid). ``media_root``: the
    directory image paths of the ``image`` column are read from (default: the dataset
    directory); no file outside it is opened.

    Everything a page needs from the whole dataset (filter values, ...) is computed once here
    and shared, so a session costs only its widgets.
    """

    def __init__(self, dataset, *, backend: str = "auto", media_root=None):
        from ..dataset.layouts import find_layouts
        from ..dataset.reader import Dataset

        self.ds = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
        self.layouts = find_layouts(self.ds)
        if not self.layouts:
            raise InputError(f"dataset {self.ds.path} has no layout to show; make one with "
                             f"`bigembed reduce {self.ds.path}`")
        self.backend = backend
        self._renderers = {}
        self._lock = threading.Lock()
        self._compares: dict = {}
        self._clusters: dict = {}
        self._compare_lock = threading.Lock()
        self._thumbs = None
        self._filter_options: dict = {}
        self.media_root = None if media_root is None else _media_root(media_root)

    @property
    def spaces(self) -> list[str]:
        return sorted(self.ds.spaces)

    def layout_name(self, name: str | None) -> str:
        if name is None or name == "":
            return self.layouts[0]
        if name not in self.layouts:
            raise InputError(f"layout must be one of {self.layouts}, got {name!r}")
        return name

    def renderer(self, name: str | None = None):
        from ..view.frames import FrameRenderer

        name = self.layout_name(name)
        with self._lock:
            r = self._renderers.get(name)
            if r is None:
                r = FrameRenderer(self.ds, name, backend=self.backend)
                cl = self.clusters(name)
                if cl is not None:  # "colour by cluster" and the clusters panel
                    r.set_column("cluster", cl.labels)
                self._renderers[name] = r
        return r

    def clusters(self, layout: str | None = None):
        """The newest stored clusters of ``layout`` (or of its space), or None; read once."""
        from ..analysis import load_clusters

        name = self.layout_name(layout)
        if name not in self._clusters:
            self._clusters[name] = load_clusters(self.ds, layout=name)
        return self._clusters[name]

    def set_clusters(self, layout: str, result) -> None:
        """Show ``result`` (a :class:`~bigembed.analysis.ClusterResult`) for ``layout``."""
        name = self.layout_name(layout)
        self._clusters[name] = result
        r = self._renderers.get(name)
        if r is not None:
            r.set_column("cluster", result.labels)

    def filter_options(self, column: str) -> list[str]:
        """The values a filter on ``column`` offers (at most :data:`MAX_FILTER_OPTIONS`, short
        first), computed once: a page load must not scan N rows."""
        with self._lock:
            opts = self._filter_options.get(column)
        if opts is None:
            opts = sorted(self._distinct_text(column),
                          key=lambda v: (len(v), v))[:MAX_FILTER_OPTIONS]
            with self._lock:
                self._filter_options[column] = opts
        return list(opts)

    def known_filter_options(self, column: str) -> list[str] | None:
        """The filter values of ``column`` if computed already, else None (nothing read)."""
        with self._lock:
            opts = self._filter_options.get(column)
        return None if opts is None else list(opts)

    def _distinct_text(self, column: str) -> set:
        """The distinct values of ``column`` as text (what a filter compares): a categorical
        colouring's categories when it has one (a stored map keeps them: no pass over N rows),
        else from the column."""
        r = self.renderer()
        c = None
        if column != "correct":  # filters compare `correct` as text, not as its colouring
            try:
                c = r.colouring(column)
            except InputError:  # too many values to colour
                c = None
        if c is not None and c.kind == "categorical":
            return set(c.categories)
        v = np.asarray(r.column(column))
        if v.dtype.kind in "biuf":
            return set(np.unique(v).astype(str).tolist())
        import pandas as pd

        return set(np.asarray(pd.unique(v)).astype(str).tolist())

    def warm(self, *, width: int = 800, height: int = 800, columns=()) -> None:
        """Do once what the first visitor would otherwise wait for: the default layout's
        renderer and its JIT and pyramid, a neighbour lookup (loads or builds the index), a
        selection, and the filter values of ``columns``."""
        r = self.renderer()
        r.warm_up(width, height)
        for c in columns:
            if c in r.columns():
                self.filter_options(c)
        try:
            self.neighbors(id=0, k=1)
        except Exception as e:  # the map works without neighbours; the tap will say why
            log.warning("neighbour lookup not available: %s", e)
        # a small box at the centre: the selection code is what is warmed, and a quarter of
        # a billion-point map would be 250M rows to count before the server starts
        (x0, x1), (y0, y1) = r.default_range()
        cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 64, (y1 - y0) / 64
        self.select(box=((cx - hw, cx + hw), (cy - hh, cy + hh)))
        # The group panel's contrast kernel is not compiled here: `make install` puts it in
        # numba's on-disk cache (bigembed.analysis.units.warm_contrast_cache), and the first
        # contrast loads it from there.
        self.meta(0)

    def space_of(self, layout: str | None) -> str | None:
        rec = self.ds.manifest.get("layouts", {}).get(self.layout_name(layout), {})
        sp = rec.get("space")
        return sp if sp in self.ds.spaces else None

    # -- lookups ---------------------------------------------------------------------------
    def meta(self, id: int) -> dict:
        from ..search.lookup import meta_rows

        return meta_rows(self.ds, [int(id)])[0]

    @property
    def has_images(self) -> bool:
        """Whether the metadata has an ``image`` column (hover shows thumbnails)."""
        from .thumbs import IMAGE_COLUMN

        return IMAGE_COLUMN in self.ds.meta_columns()

    def thumbnail(self, id: int, size: int | None = None) -> bytes:
        """PNG bytes of ``id``'s image, scaled to fit ``size`` px (default 96); cached.

        Raises :class:`~bigembed.server.thumbs.NoImage` when the dataset or the instance has
        no (readable) image.
        """
        from .thumbs import IMAGE_COLUMN, THUMB_PX, NoImage, Thumbnails

        if not self.has_images:
            raise NoImage(f"dataset {self.ds.path.name!r} has no {IMAGE_COLUMN!r} metadata column")
        with self._lock:
            if self._thumbs is None:
                self._thumbs = Thumbnails(self.ds.meta[IMAGE_COLUMN].to_numpy(),
                                          self.media_root or self.ds.path)
        return self._thumbs.png(int(id), THUMB_PX if size is None else int(size))

    def compare(self, *, a: str, b: str, k: int):
        """:func:`bigembed.compare.compare` of two spaces, once per process per (a, b, k): the
        result is a stored artifact, and its graphs stay in memory for gained/lost lookups."""
        from ..compare import compare

        key = (a, b, int(k))
        with self._compare_lock:
            hit = self._compares.get(key)
            if hit is None:
                hit = self._compares[key] = compare(self.ds.path, a=a, b=b, k=k,
                                                    progress=False)
        return hit

    def neighbors(self, *, id, k, space=None, layout=None) -> dict:
        """True neighbours of ``id`` plus, per neighbour, whether it is a 2-D neighbour too."""
        if space is None:
            space = self.space_of(layout)
        out = true_neighbors(self.ds, space=space, id=id, k=k)
        r = self.renderer(layout)
        ids = [n["id"] for n in out["neighbors"]]
        near2d = set(r.neighbors_2d(int(out["query"]["id"]), len(ids)).tolist()) if ids else set()
        xy = r.xy(ids) if ids else np.empty((0, 2))
        for n, (x, y) in zip(out["neighbors"], xy):
            n["x"], n["y"] = float(x), float(y)
            n["neighbor_2d"] = n["id"] in near2d
        out["also_2d"] = int(sum(n["neighbor_2d"] for n in out["neighbors"]))
        out["layout"] = r.layout.name
        return out

    def search(self, text: str) -> list[int]:
        """Ids matching ``text``: an id, an exact key, or a substring of any text column."""
        text = (text or "").strip()
        if not text:
            return []
        meta = self.ds.meta
        hits: list[int] = []
        if text.lstrip("-").isdigit():
            i = int(text)
            if 0 <= i < self.ds.rows:
                hits.append(i)
        if "key" in meta.columns:
            hits += np.flatnonzero(meta["key"].astype(str).to_numpy() == text)[:MAX_SEARCH_HITS].tolist()
        if len(hits) < MAX_SEARCH_HITS:
            for c in meta.columns:
                if c == "image":  # bytes or file paths, not text to search
                    continue
                if meta[c].dtype == object or str(meta[c].dtype) in ("string", "category"):
                    m = meta[c].astype(str).str.contains(text, case=False, regex=False).to_numpy()
                    hits += np.flatnonzero(m)[:MAX_SEARCH_HITS].tolist()
        return list(dict.fromkeys(int(h) for h in hits))[:MAX_SEARCH_HITS]

    def select(self, *, layout=None, box=None, polygon=None) -> GroupSummary:
        """Points inside ``box`` ((x0, x1), (y0, y1)) or ``polygon`` ((xs), (ys)) and stats."""
        r = self.renderer(layout)
        if box is not None:
            pos = r.index.box(*box)
        elif polygon is not None:
            px, py = polygon
            pos = r.index.box((min(px), max(px)), (min(py), max(py)))
            m = points_in_polygon(r.index.xs[pos].astype(np.float64),
                                  r.index.ys[pos].astype(np.float64), px, py)
            pos = pos[m]
        else:
            raise InputError("give a box or a polygon to select")
        ids = np.sort(r.index.ids[pos])
        cols = self.ds.meta_columns()
        mix = {}
        if "label" in cols and len(ids):
            if r.store is not None and r.colouring("label").kind == "categorical":
                # a big map: the stored label codes of the selected positions, counted
                lab = r.colouring("label")
                counts = np.bincount(np.asarray(lab.values)[pos], minlength=len(lab.categories))
                top = np.argsort(-counts, kind="stable")[:20]
                mix = {lab.categories[i]: int(counts[i]) for i in top if counts[i]}
            else:
                vc = self.ds.meta["label"].iloc[ids].astype(str).value_counts()
                mix = {str(k): int(v) for k, v in vc.head(20).items()}
        err = err_all = conf = conf_all = None
        if "correct" in cols:
            c = self.ds.meta_column("correct").astype(np.float64)
            err_all = _finite_or_none(1 - c.mean()) if len(c) else None
            err = _finite_or_none(1 - c[ids].mean()) if len(ids) else None
        if "confidence" in cols:
            c = self.ds.meta_column("confidence").astype(np.float64)
            conf_all = _finite_or_none(np.nanmean(c)) if len(c) else None
            conf = _finite_or_none(np.nanmean(c[ids])) if len(ids) else None
        return GroupSummary(int(len(ids)), self.ds.rows, ids, mix, err, err_all, conf, conf_all)
