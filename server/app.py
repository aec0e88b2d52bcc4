"""The Bokeh server app: a zoomable map of a layout, rendered on the server, with inspection.

The browser never receives the points: the plot shows one server-rendered image
(``/frame.png``, :mod:`bigembed.server.api`) for the current ranges, replaced after each pan
or zoom. Hover, tap and selection go to Python callbacks answered from the spatial index;
heavy work (neighbour search, selection statistics, building a renderer) runs on a thread
pool and comes back with ``doc.add_next_tick_callback``, so no session blocks another.
The view state (ranges, colouring, tapped id, layout, filters, box or lasso selection) is
kept in the page URL, so opening a shared URL restores the view, its neighbour list and its
group statistics. When the metadata has an ``image`` column, hover and tap show the
instance's thumbnail (``/api/thumb``).

A session is cheap and shared-nothing-heavy: what a page needs from the whole dataset is
computed once by the :class:`~bigembed.server.state.Explorer`, frames render on their own
pool, and expired sessions are torn down without full garbage collections on the event loop
(:class:`_PacedGC`). Every HTTP request passes the Host/Origin checks of
:mod:`bigembed.server.security` first.
"""

from __future__ import annotations

import errno
import gc
import html
import logging
import math
import time
from functools import partial
from urllib.parse import quote, urlencode


from ..errors import InputError
from .security import (allowed_hosts, check_address, is_loopback, normalise_origin,  # noqa: F401
                       websocket_origins)
from .state import MAX_K, Explorer
from .widgets import (HOVER_PX, TAP_PX, URL_POLY_MAX, BackgroundWork,  # noqa: F401
                      _arg, _colour_options, _legend_html, _meta_html, _shown,
                      selection_outline, selection_query)

log = logging.getLogger(__name__)

FRAME_W = 800
FRAME_H = 800
FILTER_COLUMNS = ("label", "prediction", "correct")


# --------------------------------------------------------------------------------------------
# Security settings (the checks themselves live in .security)
# --------------------------------------------------------------------------------------------


def check_serve_args(*, port, address, secret) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InputError(f"--port must be an integer in 1..65535, got {port!r}")
    check_address(address)
    if secret is not None and (not isinstance(secret, str) or len(secret) < 32):
        raise InputError("--secret must be at least 32 characters (try `bokeh secret`)")


def check_port_free(address: str, port: int) -> None:
    """Raise a one-line :class:`InputError` when ``address:port`` cannot be listened on
    (checked before the data is loaded, so a busy port fails at once)."""
    from tornado.netutil import bind_sockets

    try:
        socks = bind_sockets(port, address=address or None)
    except OSError as e:
        raise _listen_error(address, port, e) from None
    for s in socks:
        s.close()


def _listen_error(address, port, e: OSError) -> InputError:
    if e.errno == errno.EADDRINUSE:
        return InputError(f"port {port} is already in use on {address}; stop what listens "
                          f"there or choose another --port")
    return InputError(f"cannot listen on {address} port {port}: {e.strerror or e}")


# --------------------------------------------------------------------------------------------
# The document
# --------------------------------------------------------------------------------------------


class Session(BackgroundWork):
    """One browser session's document: widgets, callbacks and state."""

    def __init__(self, doc, explorer: Explorer, executor, secret=None, args=None):
        from bokeh.events import MouseMove, RangesUpdate, SelectionGeometry, Tap
        from bokeh.layouts import column, row
        from bokeh.models import (
            ColumnDataSource,
            CustomJS,
            DataTable,
            Div,
            MultiChoice,
            Select,
            Spinner,
            TableColumn,
            TextInput,
        )
        from bokeh.plotting import figure

        self.doc = doc
        self.ex = explorer
        self.executor = executor
        ctx = self._ctx = doc.session_context
        self.session_id = ctx.id if ctx is not None else ""
        self.secret = secret
        if args is None:  # the page URL's view state (a notebook passes its own)
            args = (ctx.request.arguments if ctx is not None and ctx.request is not None
                    else {}) or {}

        layout = _arg(args, "layout")
        self.layout = layout if layout in explorer.layouts else explorer.layouts[0]
        r = explorer.renderer(self.layout)
        color = _arg(args, "color", default="density")
        self.color = color if color in _colour_options(r) else "density"
        (dx0, dx1), (dy0, dy1) = r.default_range()
        x0, x1 = _arg(args, "x0", float, dx0), _arg(args, "x1", float, dx1)
        y0, y1 = _arg(args, "y0", float, dy0), _arg(args, "y1", float, dy1)
        if not (x0 < x1 and y0 < y1):
            (x0, x1), (y0, y1) = (dx0, dx1), (dy0, dy1)
        self.view = (x0, x1, y0, y1)
        self.tapped = None
        self.selection = None
        self.sel_q = None  # the URL parameter of the shown selection: {"box": ...} / {"poly": ...}
        from .api import parse_geometry_text, parse_where

        try:
            self.where = {k: v for k, v in (parse_where(_arg(args, "where")) or {}).items()
                          if k in FILTER_COLUMNS and k in r.columns()}
            r.filter_mask(self.where)
        except InputError:
            self.where = {}
        # A selection from a shared URL; a bad one is ignored (the page still loads).
        sel_args = {k: _arg(args, k) for k in ("box", "poly") if _arg(args, k)}
        restore = None
        if len(sel_args) == 1:
            try:
                restore = (parse_geometry_text(sel_args.get("box"), sel_args.get("poly")),
                           sel_args)
            except InputError:
                restore = None

        p = figure(frame_width=FRAME_W, frame_height=FRAME_H, x_range=(x0, x1), y_range=(y0, y1),
                   tools="pan,wheel_zoom,box_select,lasso_select,tap,reset",
                   active_scroll="wheel_zoom", active_drag="pan", toolbar_location="above",
                   title=f"{explorer.ds.path.name}: {self.layout}", name="map")
        p.grid.visible = False
        self.frame_src = ColumnDataSource(dict(url=[self._frame_url()], x=[x0], y=[y0],
                                               w=[x1 - x0], h=[y1 - y0]))
        p.image_url(url="url", x="x", y="y", w="w", h="h", anchor="bottom_left",
                    source=self.frame_src, name="frame")
        self.nb_src = ColumnDataSource(dict(x=[], y=[], id=[], distance=[], neighbor_2d=[],
                                            label=[]))
        p.scatter("x", "y", source=self.nb_src, size=11, fill_alpha=0, line_color="#00c0ff",
                  line_width=2, name="neighbour_markers")
        self.q_src = ColumnDataSource(dict(x=[], y=[]))
        p.scatter("x", "y", source=self.q_src, size=16, marker="star", fill_color="#00ff88",
                  line_color="black", name="query_marker")
        self.hover_src = ColumnDataSource(dict(x=[], y=[]))
        self.sel_src = ColumnDataSource(dict(x=[], y=[]))
        p.patch("x", "y", source=self.sel_src, fill_color="#00c0ff", fill_alpha=0.08,
                line_color="#00c0ff", line_dash="dashed", line_width=1.5, name="selection_outline")
        p.scatter("x", "y", source=self.hover_src, size=12, fill_alpha=0, line_color="black",
                  line_width=2, name="hover_marker")
        self.plot = p

        self.color_select = Select(title="Colour by", value=self.color, options=_colour_options(r),
                                   name="color")
        self.layout_select = Select(title="Layout", value=self.layout, options=explorer.layouts,
                                    name="layout")
        self.k_spin = Spinner(title="Neighbours (k)", low=1, high=MAX_K, step=1, value=10,
                              width=120, name="k")
        self.search = TextInput(title="Search id / key / text", name="search")
        self.filters = {}
        for col in FILTER_COLUMNS:
            if col in r.columns():
                opts = self._filter_options(col)
                mc = MultiChoice(title=f"Show only {col}", options=opts,
                                 value=[v for v in self.where.get(col, []) if v in opts],
                                 name=f"filter_{col}", width=320)
                mc.on_change("value", partial(self.on_filter, col))
                self.filters[col] = mc
        self.legend = Div(text=_legend_html(r.legend(self.color_key)), width=320, name="legend")
        self.hover_div = Div(text="<i>hover over a point</i>", width=320, name="hover")
        self.tap_div = Div(text="<i>tap a point to list its true neighbours</i>", width=320,
                           name="tapinfo")
        self.sel_div = Div(text="<i>box or lasso select to see group statistics</i>", width=320,
                           name="selection")
        cols = [TableColumn(field="id", title="id"), TableColumn(field="distance", title="distance"),
                TableColumn(field="label", title="label"),
                TableColumn(field="neighbor_2d", title="2-D nbr")]
        self.table = DataTable(source=self.nb_src, columns=cols, width=320, height=260,
                               index_position=None, name="neighbours_table")
        # The view state lives in the page URL so a view can be shared.
        self.state = Div(text="", visible=False, name="state")
        self.state.js_on_change("text", CustomJS(code="""
            const q = cb_obj.text;
            if (q) { window.history.replaceState(null, '', '?' + q); }
        """))
        from .compare_view import compare_link

        self.compare_div = Div(text=compare_link(explorer, self.layout) or "", width=320,
                               name="compare_link")

        p.on_event(RangesUpdate, self.on_ranges)
        p.on_event(MouseMove, self.on_move)
        p.on_event(Tap, self.on_tap)
        p.on_event(SelectionGeometry, self.on_select)
        self.color_select.on_change("value", self.on_color)
        self.layout_select.on_change("value", self.on_layout)
        self.search.on_change("value", self.on_search)

        side = column(self.compare_div, self.layout_select, self.color_select, self.legend, self.search,
                      *self.filters.values(), self.k_spin, self.hover_div, self.tap_div, self.table, self.sel_div,
                      self.state)
        from .groups_view import GroupsPanel

        self.groups = GroupsPanel(self)  # group statistics, contrast, clusters
        doc.add_root(row(p, side, self.groups.root))
        doc.title = f"bigembed: {explorer.ds.path.name}"
        # No doc.on_session_destroyed callback: Bokeh runs a full gc.collect() on the event
        # loop after any such callback, per session; ``closed`` asks the context instead.
        tapped = _arg(args, "id", int)
        if tapped is not None and 0 <= tapped < explorer.ds.rows:
            self.tap_id(tapped)
        if restore is not None:
            self._run_select(*restore)
        self._sync_state()

    # -- helpers ---------------------------------------------------------------------------
    def _filter_options(self, col: str) -> list[str]:
        """The values the filter widget of ``col`` offers: computed once per dataset (the
        server's warm-up has them before the first page)."""
        return self.ex.filter_options(col)

    @property
    def color_key(self):
        return None if self.color == "density" else self.color

    def _frame_url(self) -> str:
        x0, x1, y0, y1 = self.view
        q = {"layout": self.layout, "color": self.color, "x0": repr(x0), "x1": repr(x1),
             "y0": repr(y0), "y1": repr(y1), "w": FRAME_W, "h": FRAME_H}
        if self.where:
            from .api import format_where

            q["where"] = format_where(self.where)
        if self.secret:
            q["session"] = self.session_id
        return "/frame.png?" + urlencode(q, quote_via=quote)

    def _sync_state(self):
        x0, x1, y0, y1 = self.view
        q = {"layout": self.layout, "color": self.color, "x0": f"{x0:.6g}", "x1": f"{x1:.6g}",
             "y0": f"{y0:.6g}", "y1": f"{y1:.6g}"}
        if self.tapped is not None:
            q["id"] = self.tapped
        if self.where:
            from .api import format_where

            q["where"] = format_where(self.where)
        if self.sel_q:
            q.update(self.sel_q)
        self.state.text = urlencode(q, quote_via=quote)

    def _refresh_frame(self):
        x0, x1, y0, y1 = self.view
        self.frame_src.data = dict(url=[self._frame_url()], x=[x0], y=[y0], w=[x1 - x0],
                                   h=[y1 - y0])
        self._sync_state()

    # -- callbacks -------------------------------------------------------------------------
    def on_ranges(self, ev):
        vals = (ev.x0, ev.x1, ev.y0, ev.y1)
        if any(v is None or not math.isfinite(v) for v in vals) or not (ev.x0 < ev.x1 and ev.y0 < ev.y1):
            return
        self.view = tuple(float(v) for v in vals)
        self._refresh_frame()
        self.groups.on_view()

    def _pixel(self):
        x0, x1, y0, y1 = self.view
        return (x1 - x0) / FRAME_W, (y1 - y0) / FRAME_H

    def on_move(self, ev):
        if ev.x is None or ev.y is None:
            return
        r = self.ex.renderer(self.layout)
        i = r.pick(ev.x, ev.y, HOVER_PX * max(self._pixel()))
        if i is None:
            self.hover_src.data = dict(x=[], y=[])
            return
        (px, py), = r.xy([i])
        self.hover_src.data = dict(x=[float(px)], y=[float(py)])
        self.hover_div.text = (f"<b>hover</b> {self._thumb_html(i)}"
                               f"{_meta_html(_shown(self.ex.meta(i)))}")

    def _thumb_html(self, i: int) -> str:
        """An <img> of ``i``'s thumbnail (``/api/thumb``) when the metadata has images."""
        if not self.ex.has_images:
            return ""
        q = {"id": int(i)}
        if self.secret:
            q["session"] = self.session_id
        src = html.escape("/api/thumb?" + urlencode(q))
        # an instance without a readable image answers 404: hide the broken-image icon
        return (f"<img class='thumb' src='{src}' alt='image of id {int(i)}' "
                f"style='display:block;max-width:96px;max-height:96px;margin:4px 0;"
                f"image-rendering:pixelated;border:1px solid #ccc' "
                f"onerror=\"this.style.display='none'\">")

    def on_tap(self, ev):
        if ev.x is None or ev.y is None:
            return
        r = self.ex.renderer(self.layout)
        i = r.pick(ev.x, ev.y, TAP_PX * max(self._pixel()))
        if i is not None:
            self.tap_id(i)

    def tap_id(self, i: int):
        self.tapped = int(i)
        k = int(self.k_spin.value or 10)
        layout = self.layout
        self.tap_div.text = f"<i>looking up the {k} nearest neighbours of id {i}…</i>"
        self._in_background(lambda: self.ex.neighbors(id=i, k=k, layout=layout), self._show_nbrs)
        self._sync_state()

    def _show_nbrs(self, res):
        if isinstance(res, Exception):
            self.tap_div.text = f"<b>neighbour lookup failed:</b> {html.escape(str(res))}"
            return
        nb = res["neighbors"]
        r = self.ex.renderer(self.layout)
        q = res["query"]
        (qx, qy), = r.xy([q["id"]])
        self.q_src.data = dict(x=[float(qx)], y=[float(qy)])
        self.nb_src.data = dict(x=[n["x"] for n in nb], y=[n["y"] for n in nb],
                                id=[n["id"] for n in nb],
                                distance=[round(n["distance"], 4) for n in nb],
                                neighbor_2d=["yes" if n["neighbor_2d"] else "" for n in nb],
                                label=[str(n.get("label", "")) for n in nb])
        notes = "".join(f"<br><i>{html.escape(n)}</i>" for n in res.get("notes", []))
        self.tap_div.text = (
            f"<b>id {q['id']}</b> {self._thumb_html(q['id'])}"
            f"{_meta_html(_shown({k: v for k, v in q.items() if k != 'id'}))}"
            f"<span class='nbr-summary'>{len(nb)} true neighbours in space "
            f"{html.escape(str(res['space']))}; <b>{res['also_2d']} of {len(nb)}</b> are also "
            f"2-D neighbours</span>{notes}")

    def on_select(self, ev):
        if not getattr(ev, "final", True):
            return
        from .api import parse_geometry_text

        sel = selection_query(ev.geometry)
        if sel is None:
            return
        try:
            # Counted from the encoded numbers, so the URL restores exactly this selection.
            geom = parse_geometry_text(sel.get("box"), sel.get("poly"))
        except InputError:
            return
        self._run_select(geom, sel)

    def _run_select(self, geom: dict, sel: dict):
        """Count the selection ``geom`` on the pool, then show it; ``sel`` is its URL form."""
        layout = self.layout
        q = dict(sel, layout=layout)
        if self.secret:
            q["session"] = self.session_id
        self.sel_div.text = "<i>counting the selection…</i>"
        self._in_background(lambda: (self.ex.select(layout=layout, **geom), q, sel, geom),
                            self._show_sel)

    def _show_sel(self, res):
        if isinstance(res, Exception):
            self.sel_div.text = f"<b>selection failed:</b> {html.escape(str(res))}"
            return
        st, q, sel, geom = res
        if q["layout"] != self.layout:  # the layout changed while counting
            return
        self.selection = st
        self.sel_q = sel
        xs, ys = selection_outline(geom)
        self.sel_src.data = dict(x=xs, y=ys)
        self._sync_state()
        pct = lambda v: "–" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        num = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        mix = ", ".join(f"{html.escape(k)}: {v}" for k, v in st.label_mix.items())
        self.sel_div.text = (
            f"<b class='sel-count'>{st.count}</b> of {st.total} selected<br>"
            f"labels: {mix or '–'}<br>error rate {pct(st.error_rate)} (all {pct(st.error_rate_all)})"
            f"<br>mean confidence {num(st.mean_confidence)} (all {num(st.mean_confidence_all)})"
            f"<br>{self._export_html(q)}")
        self.groups.show_group(st.ids, "selection", sel)

    def _export_html(self, q: dict) -> str:
        """Where the selected ids can be taken: links to ``/api/select`` as CSV or Parquet."""
        link = lambda fmt: html.escape("/api/select?" + urlencode(dict(q, format=fmt)))  # noqa: E731
        return (f"export ids: <a href='{link('csv')}' download>CSV</a> · "
                f"<a href='{link('parquet')}' download>Parquet</a>")

    def on_filter(self, col, attr, old, new):
        where = dict(self.where)
        if new:
            where[col] = list(new)
        else:
            where.pop(col, None)
        self.where = where
        self._refresh_frame()

    def on_color(self, attr, old, new):
        self.color = new
        r = self.ex.renderer(self.layout)
        self.legend.text = _legend_html(r.legend(self.color_key))
        self._refresh_frame()

    def on_layout(self, attr, old, new):
        self.layout_select.disabled = True

        def done(res):
            self.layout_select.disabled = False
            if isinstance(res, Exception):
                self.sel_div.text = f"<b>cannot show layout:</b> {html.escape(str(res))}"
                return
            self.layout = new
            (x0, x1), (y0, y1) = res.default_range()
            self.plot.x_range.update(start=x0, end=x1)
            self.plot.y_range.update(start=y0, end=y1)
            self.plot.title.text = f"{self.ex.ds.path.name}: {new}"
            cols = _colour_options(res)
            self.color_select.options = cols
            if self.color not in cols:
                self.color = "density"
                self.color_select.value = "density"
            self.view = (x0, x1, y0, y1)
            self.nb_src.data = {k: [] for k in self.nb_src.data}
            self.q_src.data = dict(x=[], y=[])
            # a selection is a region of one layout: it means nothing in another
            self.selection = self.sel_q = None
            self.sel_src.data = dict(x=[], y=[])
            self.sel_div.text = "<i>box or lasso select to see group statistics</i>"
            self._refresh_frame()
            self.groups.on_layout()

        self._in_background(lambda: self.ex.renderer(new), done)

    def on_search(self, attr, old, new):
        hits = self.ex.search(new)
        if not hits:
            self.tap_div.text = f"<i>no instance matches {html.escape(str(new))!s}</i>"
            return
        r = self.ex.renderer(self.layout)
        (px, py), = r.xy([hits[0]])
        x0, x1, y0, y1 = self.view
        hw, hh = (x1 - x0) / 2, (y1 - y0) / 2
        self.plot.x_range.update(start=float(px) - hw, end=float(px) + hw)
        self.plot.y_range.update(start=float(py) - hh, end=float(py) + hh)
        self.view = (float(px) - hw, float(px) + hw, float(py) - hh, float(py) + hh)
        self._refresh_frame()
        self.tap_id(hits[0])


# --------------------------------------------------------------------------------------------
# Serving
# --------------------------------------------------------------------------------------------


class _PacedGC:
    """Stands in for the ``gc`` module inside Bokeh's document module.

    Bokeh's ``Document.destroy`` runs a full ``gc.collect()`` on the event loop for every
    expired session. With numba, Datashader, pandas and torch loaded that is about 10^6
    tracked objects and a third of a second here, so 150 page loads that expire together
    froze every request for over a minute. Two things make it cheap: the objects that live as
    long as the server are frozen (``gc.freeze()`` after warming up, so no collection walks
    them), and this pacing: at most one full collection every ``interval_s`` seconds, a
    young-generation one otherwise. A session's models reach the old generations and are
    collected at the next full pass (:func:`_reclaim`), not lost.
    """

    def __init__(self, interval_s: float = 5.0):
        self.interval_s = interval_s
        self._last = 0.0

    def collect(self, generation: int = 2) -> int:
        now = time.monotonic()
        if generation < 2 or now - self._last < self.interval_s:
            return gc.collect(0)
        self._last = now
        return gc.collect()

    def __getattr__(self, name):
        return getattr(gc, name)


def _pace_bokeh_gc() -> None:
    import bokeh.document.document as bokeh_document

    if not isinstance(bokeh_document.gc, _PacedGC):
        bokeh_document.gc = _PacedGC()


def _malloc_trim() -> None:
    """Give freed heap pages back to the system (glibc); a no-op elsewhere."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reclaim(server) -> None:
    """After sessions expire: one full collection (cheap: long-lived objects are frozen) and
    the freed memory returned to the system, so RSS comes back to its baseline."""
    n = len(server.get_sessions())
    last = getattr(server, "_bigembed_sessions", 0)
    server._bigembed_sessions = n
    if n < last:
        gc.collect()
        _malloc_trim()


def _warm_and_freeze(explorer, pools, secret) -> None:
    """Warm the explorer and build one throwaway page (imports Bokeh's models), then
    freeze what lives as long as the server, so collections never walk it again."""
    from bokeh.document import Document

    explorer.warm(width=FRAME_W, height=FRAME_H, columns=FILTER_COLUMNS)
    doc = Document()
    Session(doc, explorer, pools.work, secret)
    doc.validate()  # once: every session's page has this structure (see _App)
    del doc
    gc.collect()
    gc.freeze()


def _app(make_doc):
    """The Bokeh application of the map: ``make_doc(doc)`` fills each session's document.

    Bokeh validates every new document (a fifth of a page load here); each session's page
    has the same structure, validated once on the warm-up page, so sessions skip it.
    """
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler

    class _App(Application):
        def initialize_document(self, doc):
            for h in self._handlers:
                h.modify_document(doc)
                if h.failed:
                    log.error("error building a page: %s %s", h.error, h.error_detail)

    return _App(FunctionHandler(make_doc))


def make_server(dataset, *, port=5006, address="127.0.0.1", allow_origin=(), secret=None,
                backend="auto", workers=4, frame_workers=2, session_lifetime_s: float = 60.0,
                media_root=None, warm: bool = True, compare: str | None = None,
                compare_path: str | None = None):
    """A started-on-demand Bokeh :class:`~bokeh.server.server.Server` for ``dataset``.

    Returns (server, explorer). Call ``server.start()`` and run ``server.io_loop``.
    ``workers`` threads answer small requests and ``frame_workers`` render frames;
    sessions no browser holds are discarded after ``session_lifetime_s``; thumbnails read
    image paths only under ``media_root`` (default: the dataset directory). ``warm``: do the
    first visitor's work now (JIT, index, pyramid), then freeze the long-lived objects
    against the garbage collector (see :class:`_PacedGC`). ``compare``: "A,B", the
    comparison a page without ``cmp=`` shows (``compare_path``: its slider's spaces, in
    order; see :mod:`bigembed.server.compare_view`).
    """
    from bokeh.server.server import Server

    from . import security
    from .api import Pools, patterns
    from .groups_view import patterns as group_patterns

    check_serve_args(port=port, address=address, secret=secret)
    if not (isinstance(session_lifetime_s, (int, float)) and 1 <= session_lifetime_s <= 86400):
        raise InputError(f"--session-lifetime must be 1..86400 seconds, got {session_lifetime_s!r}")
    origins = websocket_origins(address, port, allow_origin)
    hosts = allowed_hosts(address, port, allow_origin)
    check_port_free(address, port)  # before loading anything: a busy port fails at once
    explorer = Explorer(dataset, backend=backend, media_root=media_root)
    from . import compare_api, compare_view

    comps, default_cmp = compare_view.setup(explorer, compare, compare_path)  # bad: fails now
    pools = Pools.make(workers=workers, frame_workers=frame_workers)
    if warm:
        _warm_and_freeze(explorer, pools, secret)
        compare_view.warm(comps, default_cmp)
    else:
        explorer.renderer()  # the default layout's spatial order, before the first visitor
    _pace_bokeh_gc()
    app = _app(compare_view.page_factory(explorer, comps, pools.work, secret, default=default_cmp,
                                         single=lambda doc: Session(doc, explorer, pools.work,
                                                                    secret)))
    kw = {}
    if secret:
        kw.update(sign_sessions=True, secret_key=secret, generate_session_ids=True)
    check_ms = int(max(min(session_lifetime_s / 2, 30), 0.5) * 1000)
    try:
        server = Server({"/": app}, port=port, address=address, allow_websocket_origin=origins,
                        extra_patterns=patterns(explorer, pools, secret)
                        + compare_api.patterns(explorer, pools, comps, secret)
                        + group_patterns(explorer, pools, secret), num_procs=1,
                        unused_session_lifetime_milliseconds=int(session_lifetime_s * 1000),
                        check_unused_sessions_milliseconds=check_ms, **kw)
    except OSError as e:  # taken between the check and now
        pools.shutdown()
        raise _listen_error(address, port, e) from None
    security.install(server._tornado, allowed=hosts)
    compare_api.install(server, comps, default_cmp)
    server._bigembed_pools = pools
    from tornado.ioloop import PeriodicCallback

    server._bigembed_reclaim = PeriodicCallback(partial(_reclaim, server), check_ms)
    server._bigembed_reclaim.start()
    return server, explorer


def serve(dataset, *, port: int = 5006, address: str = "127.0.0.1", allow_origin=(),
          secret: str | None = None, show: bool = False, backend: str = "auto",
          on_ready=None, media_root=None, session_lifetime_s: float = 60.0,
          compare: str | None = None, compare_path: str | None = None) -> None:
    """Serve the map of ``dataset`` until interrupted (blocking).

    ``on_ready(url)`` is called once the server listens (the CLI prints the URL there).
    A non-loopback ``address`` needs ``allow_origin``; it is allowed with a warning.
    ``media_root``: the directory image paths are read from (default: the dataset's).
    """
    server, explorer = make_server(dataset, port=port, address=address,
                                   allow_origin=allow_origin, secret=secret, backend=backend,
                                   media_root=media_root, session_lifetime_s=session_lifetime_s,
                                   compare=compare, compare_path=compare_path)
    if not is_loopback(address):
        log.warning("serving on non-loopback address %s: reachable from other machines; "
                    "websocket origins allowed: %s", address, list(allow_origin))
    server.start()
    host = "127.0.0.1" if address in ("0.0.0.0", "::") else address
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{port}/"
    log.info("serving %s (%d points) at %s", explorer.ds.path, explorer.ds.rows, url)
    if on_ready is not None:
        on_ready(url)
    if show:
        server.io_loop.add_callback(server.show, "/")
    try:
        server.io_loop.start()
    finally:
        server._bigembed_reclaim.stop()
        server._bigembed_pools.shutdown()
