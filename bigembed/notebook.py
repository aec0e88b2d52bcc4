"""``bigembed.show()``: the explorer in a notebook cell, and what the user selects back in Python.

The cell holds the very Bokeh document a ``bigembed serve`` page holds (the server's
:class:`~bigembed.server.app.Session`: plot, hover, tap and neighbours, box/lasso selection and
its statistics, colourings, filters, layout switch), shared with the same
:class:`~bigembed.server.state.Explorer` (renderers, spatial index, lookups). The transport is
jupyter_bokeh's ``BokehModel``, an ipywidget that carries Bokeh document patches and events over
the kernel's comms in both directions, so it works wherever ipywidgets do (JupyterLab, Notebook
7 and the classic notebook are tested in a browser; VS Code is not) and needs no second process
or port.

What differs from the server page is only what the page fetched over HTTP: a frame is rendered
by the same :class:`~bigembed.view.frames.FrameRenderer` in the kernel, on a small thread pool,
and travels as PNG bytes, a binary buffer of the document patch that the page turns into a blob
URL (the first frame, in the document the cell loads, as a ``data:`` URL); the latest view
wins: views asked for while one renders are coalesced into one frame. Thumbnails travel as
``data:`` URLs; the selection's export links become the handle's :attr:`Map.selection`.
Results of background work come back on the kernel's event loop, never from a worker thread.

Dependencies: this module is an entry point like the CLI commands (it starts the view), so it
is the one library module besides them allowed to import :mod:`bigembed.server`.
"""

from __future__ import annotations

import base64
import logging
import math
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import BigembedError, InputError

log = logging.getLogger(__name__)

#: the BokehJS bundles a cell loads (inline, once per kernel)
BOKEHJS_COMPONENTS = ("bokeh", "bokeh-widgets", "bokeh-tables")
#: ids :meth:`Map.highlight` draws as markers at most (they are sent to the browser as points)
MAX_HIGHLIGHT = 20_000
_POOL_WORKERS = 2

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_explorers: dict = {}
_bokehjs_loaded = False


class View(NamedTuple):
    """The map's visible ranges in layout coordinates."""

    x0: float
    x1: float
    y0: float
    y1: float


def _the_pool() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_POOL_WORKERS,
                                       thread_name_prefix="bigembed-notebook")
        return _pool


def _one_line(e: BaseException) -> BaseException:
    """Make IPython show ``e`` as one line (its type and message), not a traceback wall:
    a bigembed error says what was wrong with the input; the stack adds nothing for a user."""
    line = f"{type(e).__name__}: {e}"
    e._render_traceback_ = lambda: [line]  # IPython's hook for custom traceback display
    return e


def _explorer(ds_or_path):
    """One :class:`~bigembed.server.state.Explorer` per dataset (and manifest version) per
    kernel, so showing a dataset again reuses its renderers, index and pyramid."""
    from .dataset.reader import Dataset
    from .server.state import Explorer

    if isinstance(ds_or_path, Dataset):
        ds = ds_or_path
    elif isinstance(ds_or_path, (str, Path)):
        p = Path(ds_or_path).expanduser()
        if not p.exists():
            raise InputError(f"ds_or_path: no dataset at {str(p)!r} (the path does not exist); "
                             f"give the directory a bigembed command wrote, or a "
                             f"bigembed.Dataset")
        ds = Dataset.open(p)
    else:
        raise InputError(f"ds_or_path must be a bigembed.Dataset or a dataset directory, got "
                         f"{type(ds_or_path).__name__}")
    mf = ds.path / "manifest.json"
    key = (str(ds.path.resolve()), mf.stat().st_mtime_ns if mf.exists() else 0)
    with _lock:
        ex = _explorers.get(key)
    if ex is None:
        ex = Explorer(ds)
        with _lock:
            _explorers[key] = ex
    return ex


def _resolve_layout(ex, layout) -> str:
    """An exact layout name, or a unique prefix of one (``"fc1.umap"``)."""
    if layout is None:
        return ex.layouts[0]
    if not isinstance(layout, str):
        raise InputError(f"layout must be a layout name (one of {ex.layouts}), got "
                         f"{type(layout).__name__}")
    if layout in ex.layouts:
        return layout
    hits = [n for n in ex.layouts if n.startswith(layout)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise InputError(f"layout {layout!r} matches {len(hits)} layouts {hits}; give one of "
                         f"them")
    raise InputError(f"layout must be one of {ex.layouts}, got {layout!r}")


#: the page's side of a frame sent as PNG bytes: a blob URL for the frame glyph (the previous
#: one released once the new image has had time to load)
_PNG_TO_URL = """
const d = cb_obj.data;
const png = d.png[0];
if (png == null || png.length === 0) { return; }
const url = URL.createObjectURL(new Blob([png], {type: "image/png"}));
const old = frame.data.url[0];
frame.data = {url: [url], x: [d.x[0]], y: [d.y[0]], w: [d.w[0]], h: [d.h[0]]};
if (typeof old === "string" && old.startsWith("blob:")) {
  setTimeout(() => URL.revokeObjectURL(old), 5000);
}
"""


#: the classic notebook (nbclassic, Notebook < 7) loads a widget's JavaScript with RequireJS by
#: its module name; jupyter_bokeh's wheel ships the module as an nbextension but does not enable
#: the nbextension that maps the name to it (without it: a 404 and a broken-widget box). This
#: is that mapping, set from the cell; other front ends (JupyterLab, Notebook 7, VS Code) have
#: no ``Jupyter.notebook`` and load the widget their own way.
_CLASSIC_REQUIRE_MAP = """
if (window.Jupyter && window.Jupyter.notebook && window.requirejs) {
  window.requirejs.config({map: {'*': {
    '@bokeh/jupyter_bokeh': 'nbextensions/jupyter_bokeh/index'}}});
}
"""


def _load_bokehjs() -> None:
    """BokehJS in the page, once per kernel (jupyter_bokeh's widget renders with it). Inline:
    the notebook may have no route to a CDN. In the classic notebook, also where RequireJS
    finds jupyter_bokeh's widget (:data:`_CLASSIC_REQUIRE_MAP`)."""
    global _bokehjs_loaded
    if _bokehjs_loaded:
        return
    from bokeh.io import output_notebook
    from bokeh.resources import Resources
    from IPython.display import publish_display_data

    # the parts the map's page uses (plot, widgets, the neighbour table): half of INLINE's
    # bytes (no WebGL, no MathJax), sent once per kernel
    output_notebook(Resources(mode="inline", components=list(BOKEHJS_COMPONENTS)),
                    hide_banner=True)
    publish_display_data({"application/javascript": _CLASSIC_REQUIRE_MAP})
    _bokehjs_loaded = True


def _call_soon(loop):
    """A thread-safe ``schedule(fn)`` onto the kernel's event loop (where comms are sent);
    without a running loop (a plain script), ``fn`` runs at once on the calling thread."""
    if loop is None:
        return lambda fn: fn()

    def schedule(fn):
        try:
            loop.call_soon_threadsafe(fn)
        except RuntimeError:  # the loop closed: the kernel is shutting down
            pass

    return schedule


def _session_class():
    from .server.app import FRAME_H, FRAME_W, Session

    class NotebookSession(Session):
        """The server page's session, with frames and thumbnails carried in the document."""

        def __init__(self, doc, explorer, executor, schedule, args):
            self._schedule = schedule
            self._frame_job = None  # the view being rendered
            self._frame_next = None  # the view asked for meanwhile (latest wins)
            self._frame_done = None  # the view of the frame shown
            self._frame_lock = threading.Lock()
            self.frame_error = None
            self.frames = 0
            self.neighbours = None
            super().__init__(doc, explorer, executor, args=args)
            from bokeh.models import ColumnDataSource, CustomJS

            # the page keeps its state in the URL; a notebook's URL is the notebook's own
            self.state.js_property_callbacks = {}
            # frames after the first travel as PNG bytes (a binary comm buffer, no base64 or
            # JSON of the image); the page turns them into a blob URL for the frame glyph
            self.png_src = ColumnDataSource(dict(png=[np.zeros(0, np.uint8)], x=[0.0],
                                                 y=[0.0], w=[0.0], h=[0.0]), name="frame_png")
            self.png_src.js_on_change("data", CustomJS(args=dict(frame=self.frame_src),
                                                       code=_PNG_TO_URL))
            doc.add_root(self.png_src)
            # What the page changes by itself and the kernel need not hear back: the ranges
            # (a pan's RangesUpdate event carries them) and the frame glyph's blob URL (set by
            # the callback above). jupyter_bokeh sends the page's changes one per kernel idle
            # (combine_events), so a pan's four range changes went first, one round trip
            # each, before its RangesUpdate; and each frame shown sent its URL back.
            for mdl in (self.plot.x_range, self.plot.y_range, self.frame_src, self.png_src):
                mdl.syncable = False
            self.widget = None  # the cell's BokehModel, set by show()
            self.hl_src = ColumnDataSource(dict(x=[], y=[], id=[]))
            self.hl_layout = self.layout
            self.plot.scatter("x", "y", source=self.hl_src, size=9, fill_alpha=0,
                              line_color="#ff00ff", line_width=2, name="highlight")
            self.plot.title.text = f"{explorer.ds.path.name}: {self.layout}"

        def on_ranges(self, ev):
            super().on_ranges(ev)
            # the page does not sync its ranges (above): keep the kernel's copy current, so
            # a later set_view to these values still changes them, without sending it back
            if self.widget is not None and self.view == (ev.x0, ev.x1, ev.y0, ev.y1):
                for rng, a, b in ((self.plot.x_range, ev.x0, ev.x1),
                                  (self.plot.y_range, ev.y0, ev.y1)):
                    rng.set_from_json("start", float(a), setter=self.widget)
                    rng.set_from_json("end", float(b), setter=self.widget)

        # -- frames: rendered here, sent in the document ---------------------------------
        def _frame_url(self) -> str:
            return ""  # the frame source is filled by render_now / _frame_ready

        def _frame_key(self):
            return (self.layout, self.color, self.view, tuple(sorted(
                (k, tuple(v)) for k, v in (self.where or {}).items())))

        def _render(self, key):
            layout, color, (x0, x1, y0, y1), where = key
            r = self.ex.renderer(layout)
            f = r.render(x_range=(x0, x1), y_range=(y0, y1), width=FRAME_W, height=FRAME_H,
                         color_by=None if color == "density" else color,
                         where=dict((k, list(v)) for k, v in where) or None)
            return key, f

        def _show_frame(self, key, frame, inline=False):
            """Show ``frame``: ``inline`` (the first frame, in the document the cell loads) as
            a PNG data URL in the frame source; later ones as PNG bytes in ``png_src``, a
            binary buffer of the document patch, which the page's callback shows."""
            _, _, (x0, x1, y0, y1), _ = key
            ext = dict(x=[x0], y=[y0], w=[x1 - x0], h=[y1 - y0])
            if inline:
                url = "data:image/png;base64," + base64.b64encode(frame.png).decode("ascii")
                self.frame_src.data = dict(url=[url], **ext)
            else:
                self.png_src.data = dict(png=[np.frombuffer(frame.png, np.uint8)], **ext)
            self._frame_done = key
            self.frames += 1
            self.last_frame = frame

        def render_now(self):
            """Render the current view on this thread: the first frame, in the document."""
            key, f = self._render(self._frame_key())
            self._show_frame(key, f, inline=True)

        def _sync_state(self):
            pass  # the page keeps its view in its URL; a notebook's URL is the notebook's

        def _filter_options(self, col):
            """Filter values computed before, or none yet: the cell shows its map first and
            fills the filter widgets from the pool (:meth:`fill_filters`)."""
            return self.ex.known_filter_options(col) or []

        def fill_filters(self, here: bool = False):
            """Compute the values of the filter widgets still shown without any (on this
            thread) and set them on the kernel's loop (``here``: at once, from the loop's
            thread)."""
            for col, mc in list(self.filters.items()):
                if mc.options:
                    continue
                opts = self.ex.filter_options(col)
                if here:
                    mc.options = opts
                else:
                    self._schedule(lambda mc=mc, opts=opts: setattr(mc, "options", opts))

        def _refresh_frame(self):
            key, start = self._frame_key(), False
            with self._frame_lock:
                if key in (self._frame_done, self._frame_job):
                    self._frame_next = None
                elif self._frame_job is not None:
                    self._frame_next = key  # rendered when the running one is done
                else:
                    self._frame_job, start = key, True
            if start:
                self._submit_frame(key)  # first: the render starts before the rest
            if self.hl_layout != self.layout:
                self._place_highlight()

        def _submit_frame(self, key):
            def finished(fut):
                try:
                    res = fut.result()
                except Exception as e:  # shown under the map, never raised into the loop
                    res = e
                self._schedule(lambda: self._frame_ready(key, res))

            self.executor.submit(self._render, key).add_done_callback(finished)

        def _frame_ready(self, key, res):
            if isinstance(res, Exception):
                self.frame_error = res
                log.warning("frame failed: %s", res)
                self.sel_div.text = f"<b>frame failed:</b> {res}"
            else:
                self.frame_error = None
                self._show_frame(*res)
            with self._frame_lock:
                nxt, self._frame_next = self._frame_next, None
                self._frame_job = nxt if nxt not in (None, self._frame_done) else None
            if self._frame_job is not None:
                self._submit_frame(self._frame_job)

        # -- background work comes back on the kernel's loop ----------------------------
        def _in_background(self, fn, done):
            def finished(fut):
                try:
                    res = fut.result()
                except Exception as e:  # shown to the user, not raised into the event loop
                    res = e
                self._schedule(lambda: done(res))

            self.executor.submit(fn).add_done_callback(finished)

        # -- what the page fetched over HTTP --------------------------------------------
        def _thumb_html(self, i: int) -> str:
            if not self.ex.has_images:
                return ""
            from .server.thumbs import NoImage

            try:
                png = self.ex.thumbnail(int(i))
            except NoImage:
                return ""
            src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            return (f"<img class='thumb' src='{src}' alt='image of id {int(i)}' "
                    f"style='display:block;max-width:96px;max-height:96px;margin:4px 0;"
                    f"image-rendering:pixelated;border:1px solid #ccc'>")

        def _export_html(self, q: dict) -> str:
            return "in Python: <code>.selection</code> (a DataFrame)"

        def _show_nbrs(self, res):
            super()._show_nbrs(res)
            self.neighbours = None if isinstance(res, Exception) else res

        # -- highlight ------------------------------------------------------------------
        def set_highlight(self, ids: np.ndarray):
            self.highlighted = ids
            self._place_highlight()

        def _place_highlight(self):
            ids = getattr(self, "highlighted", np.empty(0, np.int64))
            self.hl_layout = self.layout
            if not len(ids):
                self.hl_src.data = dict(x=[], y=[], id=[])
                return
            xy = self.ex.renderer(self.layout).xy(ids)
            self.hl_src.data = dict(x=xy[:, 0].astype(float), y=xy[:, 1].astype(float),
                                    id=ids.astype(np.int64))

    return NotebookSession


class Map:
    """The explorer shown in a notebook cell (returned by :func:`show`); live in both
    directions: what the user does in the cell shows here, and the methods change the cell.

    - :attr:`selection`: the selected rows (box or lasso) with their metadata, a DataFrame
      indexed by id; :attr:`selected_ids` the ids alone (sorted).
    - :attr:`tapped`: the id tapped last (or None); :attr:`neighbours` its true neighbours.
    - :attr:`view`: the visible ranges; :attr:`layout`, :attr:`color`, :attr:`where`.
    - :meth:`color_by`, :meth:`set_view`, :meth:`highlight`, :meth:`filter`, :meth:`select`,
      :meth:`tap`, :meth:`set_layout`.
    """

    def __init__(self, session, widget):
        self._s = session
        self.widget = widget

    def __repr__(self) -> str:
        s = self._s
        return (f"<bigembed map of {s.ex.ds.path.name!r}: {s.ex.ds.rows} points, layout "
                f"{s.layout!r}, colour {s.color!r}, {len(self.selected_ids)} selected>")

    # No _ipython_display_: show() has displayed the widget already, and a cell ending in
    # ``bigembed.show(ds)`` would otherwise show the map twice. ``display(m.widget)`` shows
    # another view of the same live map.

    # -- read ------------------------------------------------------------------------------
    @property
    def dataset(self):
        return self._s.ex.ds

    @property
    def layout(self) -> str:
        return self._s.layout

    @property
    def color(self) -> str:
        return self._s.color

    @property
    def where(self) -> dict:
        return {k: list(v) for k, v in (self._s.where or {}).items()}

    @property
    def view(self) -> View:
        return View(*(float(v) for v in self._s.view))

    @property
    def tapped(self) -> int | None:
        return self._s.tapped

    @property
    def neighbours(self):
        """The tapped point's true neighbours as a DataFrame (id, distance, x, y, whether
        also a 2-D neighbour, their metadata), or None before a tap has been answered."""
        import pandas as pd

        res = self._s.neighbours
        if res is None:
            return None
        return pd.DataFrame(res["neighbors"])

    @property
    def selected_ids(self) -> np.ndarray:
        st = self._s.selection
        return np.empty(0, np.int64) if st is None else np.asarray(st.ids, np.int64)

    @property
    def selection(self):
        """The rows selected in the cell (box or lasso): a pandas DataFrame of their metadata
        (index: id), empty with the metadata's columns when nothing is selected."""
        ids = self.selected_ids
        meta = self._s.ex.ds.meta
        out = meta.iloc[ids]
        if "id" in out.columns:
            out = out.set_index("id", drop=True)
        else:
            out = out.set_axis(ids, axis=0)
            out.index.name = "id"
        return out

    # -- change ----------------------------------------------------------------------------
    def color_by(self, name: str) -> "Map":
        """Colour the map by ``name``: ``density``, a metadata column or layout quality."""
        opts = list(self._s.color_select.options)
        if name not in opts:
            raise _one_line(InputError(f"color_by: name must be one of {opts}, got {name!r}"))
        self._s.color_select.value = name  # the widget's callback redraws, as in the cell
        return self

    def set_view(self, x0: float, x1: float, y0: float, y1: float) -> "Map":
        """Show the ranges x0..x1, y0..y1 (layout coordinates)."""
        try:
            vals = [float(v) for v in (x0, x1, y0, y1)]
        except (TypeError, ValueError):
            raise _one_line(InputError(f"set_view: x0, x1, y0, y1 must be numbers, got "
                                       f"{(x0, x1, y0, y1)!r}")) from None
        if not all(map(math.isfinite, vals)) or not (vals[0] < vals[1] and vals[2] < vals[3]):
            raise _one_line(InputError(f"set_view: need finite x0 < x1 and y0 < y1, got "
                                       f"{tuple(vals)}"))
        s = self._s
        s.plot.x_range.update(start=vals[0], end=vals[1])
        s.plot.y_range.update(start=vals[2], end=vals[3])
        s.view = tuple(vals)
        s._refresh_frame()
        return self

    def set_layout(self, name: str) -> "Map":
        """Switch to layout ``name`` (or a unique prefix of one)."""
        try:
            name = _resolve_layout(self._s.ex, name)
        except InputError as e:
            raise _one_line(e) from None
        self._s.layout_select.value = name
        return self

    def highlight(self, ids) -> "Map":
        """Mark ``ids`` on the map (e.g. a query's neighbours); ``None`` or ``[]`` clears.

        ``ids``: integers in 0..N-1 (a list, array, Series, or a DataFrame with an ``id``
        column or an id index), at most :data:`MAX_HIGHLIGHT`.
        """
        try:
            arr = _ids_of(ids, self._s.ex.ds.rows)
        except InputError as e:
            raise _one_line(e) from None
        self._s.set_highlight(arr)
        return self

    @property
    def highlighted(self) -> np.ndarray:
        return np.asarray(getattr(self._s, "highlighted", np.empty(0, np.int64)))

    def filter(self, where=None) -> "Map":
        """Show only points whose columns take the given values: ``{"label": [3, 5],
        "correct": [False]}`` or the page's text form ``"label:3|5;correct:False"``;
        ``None`` shows all."""
        from .server.api import parse_where

        s = self._s
        try:
            if where is None or where == {} or where == "":
                w = {}
            elif isinstance(where, str):
                w = parse_where(where) or {}
            elif isinstance(where, dict):
                w = {}
                for k, v in where.items():
                    vals = [v] if isinstance(v, (str, int, float, bool, np.generic)) else list(v)
                    w[str(k)] = [str(x) for x in vals]
            else:
                raise InputError(f"filter: where must be a dict, a text like "
                                 f"'label:3|5;correct:False' or None, got "
                                 f"{type(where).__name__}")
            s.ex.renderer(s.layout).filter_mask(w)  # validates columns and values
        except InputError as e:
            raise _one_line(e) from None
        s.where = {k: v for k, v in w.items()}
        s.fill_filters(here=True)  # (when the pool has not yet)
        for col, mc in s.filters.items():  # the cell's filter widgets show it too
            vals = [v for v in w.get(col, []) if v in mc.options]
            if list(mc.value) != vals:
                mc.value = vals  # its callback sets this column of s.where again
        s.where = {k: v for k, v in w.items()}
        s._refresh_frame()
        return self

    def select(self, *, box=None, polygon=None) -> "Map":
        """Select from Python, as a box ``((x0, x1), (y0, y1))`` or a lasso ``((xs), (ys))``;
        the cell shows the selection and its statistics, and :attr:`selection` has it at once."""
        from .server.app import selection_query

        if (box is None) == (polygon is None):
            raise _one_line(InputError("select: give exactly one of box=((x0, x1), (y0, y1)) "
                                       "or polygon=((xs), (ys))"))
        try:
            if box is not None:
                (x0, x1), (y0, y1) = box
                geometry = {"type": "rect", "x0": x0, "x1": x1, "y0": y0, "y1": y1}
            else:
                xs, ys = polygon
                geometry = {"type": "poly", "x": list(xs), "y": list(ys)}
        except (TypeError, ValueError):
            raise _one_line(InputError(f"select: box must be ((x0, x1), (y0, y1)) and polygon "
                                       f"((xs), (ys)), got {box if box is not None else polygon!r}"
                                       )) from None
        sel = selection_query(geometry)
        if sel is None:
            raise _one_line(InputError(f"select: not a usable box or polygon (finite numbers, "
                                       f"a polygon of at least 3 points): {geometry}"))
        from .server.api import parse_geometry_text

        s = self._s
        geom = parse_geometry_text(sel.get("box"), sel.get("poly"))
        st = s.ex.select(layout=s.layout, **geom)
        s._show_sel((st, dict(sel, layout=s.layout), sel, geom))
        return self

    def tap(self, id: int) -> "Map":
        """Tap point ``id`` from Python: the cell lists its true neighbours (and
        :attr:`neighbours` has them once looked up)."""
        n = self._s.ex.ds.rows
        if isinstance(id, bool) or not isinstance(id, (int, np.integer)) or not 0 <= id < n:
            raise _one_line(InputError(f"tap: id must be an integer in 0..{n - 1}, got {id!r}"))
        self._s.tap_id(int(id))
        return self


def _ids_of(ids, n: int) -> np.ndarray:
    if ids is None:
        return np.empty(0, np.int64)
    try:
        import pandas as pd

        if isinstance(ids, pd.DataFrame):
            ids = ids["id"].to_numpy() if "id" in ids.columns else ids.index.to_numpy()
        elif isinstance(ids, pd.Series):
            ids = ids.to_numpy()
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.size == 0:
        return np.empty(0, np.int64)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise InputError(f"highlight: ids must be a 1-D sequence of integer ids, got an array "
                         f"of dtype {arr.dtype} and shape {arr.shape}")
    bad = arr[(arr < 0) | (arr >= n)]
    if len(bad):
        raise InputError(f"highlight: ids must be in 0..{n - 1}, got {int(bad[0])}")
    arr = np.unique(arr.astype(np.int64))
    if len(arr) > MAX_HIGHLIGHT:
        raise InputError(f"highlight: at most {MAX_HIGHLIGHT} ids are drawn as markers, got "
                         f"{len(arr)}; filter() or a selection suits larger groups")
    return arr


def show(ds_or_path, layout: str | None = None, color: str | None = None, compare=None,
         *, display: bool = True) -> Map:
    """Show the explorer of a dataset in the notebook cell; returns its live :class:`Map`.

    ``ds_or_path``: a :class:`~bigembed.dataset.Dataset` or its directory. ``layout``: a
    layout name (or a unique prefix such as ``"fc1.umap"``; default the newest). ``color``:
    ``density`` (default), a metadata column or layout quality. ``compare``: a pair of space
    names ``(a, b)``; tapping a point then lists the neighbours it gains and loses from ``a``
    to ``b`` (see :func:`bigembed.compare.compare`). ``display``: show it in the cell now
    (otherwise ``IPython.display.display(m.widget)`` yourself).

    Raises :class:`~bigembed.errors.InputError` / :class:`~bigembed.errors.DatasetError`
    naming the parameter and what it allows; in a notebook they print as one line.
    """
    try:
        return _show(ds_or_path, layout, color, compare, display)
    except BigembedError as e:
        raise _one_line(e) from None


def _show(ds_or_path, layout, color, compare, display) -> Map:
    from bokeh.document import Document

    ex = _explorer(ds_or_path)
    layout = _resolve_layout(ex, layout)
    r = ex.renderer(layout)
    from .server.app import _colour_options

    opts = _colour_options(r)
    if color is not None and color not in opts:
        raise InputError(f"color must be one of {opts}, got {color!r}")
    pair = _compare_pair(ex, compare)
    args = {"layout": [layout.encode()], "color": [(color or "density").encode()]}
    schedule = _call_soon(_running_loop())
    doc = Document()
    session = _session_class()(doc, ex, _the_pool(), schedule, args)
    if pair is not None:
        _attach_compare(session, ex, pair)
    session.render_now()  # the first frame travels with the document: no round trip
    if display:  # before the widget: the page loads the widget's class when its comm opens
        _load_bokehjs()
    from jupyter_bokeh.widgets import BokehModel

    widget = BokehModel(doc.roots[0], combine_events=True)
    session.widget = widget
    m = Map(session, widget)
    if display:
        from IPython.display import display as ipy_display

        ipy_display(widget)
    _warm_later(session, r, _running_loop())
    return m


#: seconds after show() returns before its background work starts: that work holds the GIL
#: in long stretches (imports, loading compiled code), and the kernel's IOPub thread must
#: first send the cell's map to the page
WARM_DELAY_S = 1.0


def _warm_later(session, r, loop=None) -> None:
    """After the first frame is shown (:data:`WARM_DELAY_S` later when the kernel's loop
    runs), on the pool: the filter widgets' values (when not computed before), then, once per
    renderer, the map's compiled kernels and coarse pyramid levels (the first frame may have
    been read from the stored map, with no kernel loaded, and the user's first pan should
    not wait for them)."""
    from .server.app import FRAME_H, FRAME_W

    warm = not getattr(r, "_notebook_warm", False)
    r._notebook_warm = True

    def work():
        try:
            session.fill_filters()
            if warm:
                r.warm_up(FRAME_W, FRAME_H, session.color_key)
        except Exception as e:  # the frames say what is wrong when the user asks for one
            if not sys.is_finalizing() and "shutdown" not in str(e):  # (a script ending)
                log.warning("warming the map's kernels failed: %s", e)

    if loop is None:
        session.executor.submit(work)
    else:
        loop.call_later(WARM_DELAY_S, lambda: session.executor.submit(work))


def _running_loop():
    import asyncio

    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    try:  # ipykernel runs cells inside its loop; a plain script has none running
        from tornado.ioloop import IOLoop

        loop = IOLoop.current(instance=False)
        return None if loop is None else loop.asyncio_loop
    except Exception:
        return None


def _compare_pair(ex, compare):
    if compare is None:
        return None
    spaces = ex.spaces
    if (isinstance(compare, (tuple, list)) and len(compare) == 2
            and all(isinstance(s, str) for s in compare)):
        a, b = compare
    else:
        raise InputError(f"compare must be a pair of space names (a, b) from {spaces}, got "
                         f"{compare!r}")
    for name in (a, b):
        if name not in spaces:
            raise InputError(f"compare: no space {name!r}; the dataset has {spaces}")
    if a == b:
        raise InputError(f"compare: a and b must be different spaces, got {a!r} twice")
    return a, b


def _attach_compare(session, ex, pair) -> None:
    """With ``compare=(a, b)``: a tapped point also lists the neighbours it gains and loses
    from space a to space b (the comparison is computed once, on the pool, and stored)."""
    import html

    from bokeh.models import Div

    a, b = pair
    div = Div(text=f"<i>tap a point to compare its neighbours in {html.escape(a)} and "
                   f"{html.escape(b)}</i>", width=320, name="compare")
    session.compare_div = div
    session.compared = None
    side = session.doc.roots[0].children[1]
    side.children.append(div)
    k = 15
    orig = session.tap_id

    def tap_id(i):
        orig(i)
        div.text = f"<i>comparing the {k} nearest neighbours of id {i} in {a} and {b}…</i>"

        def work():
            return ex.compare(a=a, b=b, k=k).point(int(i))

        def done(res):
            if isinstance(res, Exception):
                div.text = f"<b>comparison failed:</b> {html.escape(str(res))}"
                return
            session.compared = res
            div.text = _compare_html(a, b, i, res)

        session._in_background(work, done)

    session.tap_id = tap_id


def _compare_html(a: str, b: str, i: int, pt: dict) -> str:
    import html

    def ids(v):
        return ", ".join(str(x) for x in v[:15]) + (" …" if len(v) > 15 else "") or "–"

    return (f"<b>id {int(i)}: {html.escape(a)} → {html.escape(b)}</b><br>"
            f"neighbour overlap <b class='cmp-overlap'>{pt['overlap']:.2f}</b> (k={pt['k']})<br>"
            f"gained: {ids(pt['gained'])}<br>lost: {ids(pt['lost'])}")
