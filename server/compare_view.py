"""The comparison page: two spaces side by side, linked, coloured by change.

Two maps, each its own layout and each rendered on the server (``/compare/frame.png``).
Hover, tap and box/lasso selection in one mark the same rows in the other: the hovered and
tapped points as markers, a selection as a second server-rendered image above each frame
(``/compare/overlay.png``: only the selected rows are binned, so it holds at millions of
points). Pan and zoom are independent, with a toggle linking them when the two layouts are
aligned. A tap lists the point's neighbours in A and in B side by side (gained and lost
marked; a row click taps that neighbour); the movers table lists the points whose
neighbourhood changed most, filterable, and a click centres both maps on one. A slider walks
B through an ordered list of spaces (the layers of a network, a run's checkpoints) over
layouts aligned to each other, keeping the selection drawn; per-class agreement curves over
the same list mark the slider's position. The URL keeps it all (``cmp=A,B``, ``step``, the
views, colours, the tapped id and the selection), so a link reopens the same comparison.
"""

from __future__ import annotations

import html
import logging
import math
from functools import partial
from urllib.parse import quote, urlencode

import numpy as np

from ..errors import InputError
from .widgets import (HOVER_PX, TAP_PX, BackgroundWork, _arg, _colour_options, _legend_html, _meta_html, _shown,
                  selection_outline, selection_query)
from .compare_state import CORRECT_FILTERS, FLIP_FILTERS, Comparisons, Pair

log = logging.getLogger(__name__)

MAP_W = 560
MAP_H = 560
SIDES = ("a", "b")
STATUS_COLOURS = {"kept": "#1f77b4", "lost": "#d62728", "gained": "#2ca02c"}


def _pct(v):
    return "–" if v is None else f"{100 * v:.1f}%"


def group_html(st: dict) -> str:
    mix = ", ".join(f"{html.escape(k)}: {v}" for k, v in st.get("label_mix", {}).items())
    mo = st.get("mean_overlap")
    return (f"<b class='sel-count'>{st['count']}</b> of {st['total']} selected "
            f"(space {html.escape(st['space'])})<br>labels: {mix or '–'}<br>"
            f"error rate here {_pct(st.get('error_rate'))}; mean overlap A~B "
            f"{'–' if mo is None else f'{mo:.3f}'}")


class _Map:
    """One of the two maps: its plot, frame and overlay images, markers and widgets."""

    def __init__(self, page, side: str, layout: str, color: str, view, options):
        from bokeh.models import ColumnDataSource, Div, Select
        from bokeh.plotting import figure

        self.page, self.side, self.layout, self.color = page, side, layout, color
        self.view = view
        x0, x1, y0, y1 = view
        p = figure(frame_width=MAP_W, frame_height=MAP_H, x_range=(x0, x1), y_range=(y0, y1),
                   tools="pan,wheel_zoom,box_select,lasso_select,tap,reset",
                   active_scroll="wheel_zoom", active_drag="pan", toolbar_location="above",
                   title=self.title(), name=f"map_{side}")
        p.grid.visible = False
        self.frame_src = ColumnDataSource(dict(url=[], x=[], y=[], w=[], h=[]),
                                          name=f"frame_src_{side}")
        p.image_url(url="url", x="x", y="y", w="w", h="h", anchor="bottom_left",
                    source=self.frame_src, name=f"frame_{side}")
        self.overlay_src = ColumnDataSource(dict(url=[], x=[], y=[], w=[], h=[]),
                                            name=f"overlay_src_{side}")
        p.image_url(url="url", x="x", y="y", w="w", h="h", anchor="bottom_left",
                    source=self.overlay_src, name=f"overlay_{side}")
        self.sel_src = ColumnDataSource(dict(x=[], y=[]))
        p.patch("x", "y", source=self.sel_src, fill_alpha=0.0, line_color="#00a0e0",
                line_dash="dashed", line_width=1.5, name=f"selection_outline_{side}")
        self.nb_src = ColumnDataSource(dict(x=[], y=[], color=[]))
        p.scatter("x", "y", source=self.nb_src, size=11, fill_alpha=0, line_color="color",
                  line_width=2, name=f"neighbour_markers_{side}")
        self.q_src = ColumnDataSource(dict(x=[], y=[]))
        p.scatter("x", "y", source=self.q_src, size=16, marker="star", fill_color="#00ff88",
                  line_color="black", name=f"query_marker_{side}")
        self.hover_src = ColumnDataSource(dict(x=[], y=[]))
        p.scatter("x", "y", source=self.hover_src, size=13, fill_alpha=0, line_color="black",
                  line_width=2, name=f"hover_marker_{side}")
        self.plot = p
        self.color_select = Select(title=f"Colour map {side.upper()} by", value=color,
                                   options=options, name=f"color_{side}", width=260)
        self.legend = Div(text="", width=MAP_W, name=f"legend_{side}")
        self.stats = Div(text="<i>box or lasso select in either map</i>", width=MAP_W,
                         name=f"selection_{side}")

    def title(self) -> str:
        pair = self.page.pair
        space = pair.a if self.side == "a" else pair.b
        return f"{self.side.upper()}: space {space} ({self.layout})"

    @property
    def space(self) -> str:
        return self.page.pair.a if self.side == "a" else self.page.pair.b

    def pixel(self):
        x0, x1, y0, y1 = self.view
        return (x1 - x0) / MAP_W, (y1 - y0) / MAP_H

    def frame_url(self) -> str:
        x0, x1, y0, y1 = self.view
        q = dict(self.page.pair_query(), layout=self.layout, color=self.color, x0=repr(x0),
                 x1=repr(x1), y0=repr(y0), y1=repr(y1), w=MAP_W, h=MAP_H)
        return "/compare/frame.png?" + urlencode(self.page.signed(q), quote_via=quote)

    def refresh(self):
        x0, x1, y0, y1 = self.view
        self.frame_src.data = dict(url=[self.frame_url()], x=[x0], y=[y0], w=[x1 - x0],
                                   h=[y1 - y0])
        self.refresh_overlay()

    def refresh_overlay(self):
        sel = self.page.sel
        if sel is None:
            self.overlay_src.data = dict(url=[], x=[], y=[], w=[], h=[])
            return
        x0, x1, y0, y1 = self.view
        q = dict(layout=self.layout, src=sel["layout"], x0=repr(x0), x1=repr(x1), y0=repr(y0),
                 y1=repr(y1), w=MAP_W, h=MAP_H, **sel["q"])
        url = "/compare/overlay.png?" + urlencode(self.page.signed(q), quote_via=quote)
        self.overlay_src.data = dict(url=[url], x=[x0], y=[y0], w=[x1 - x0], h=[y1 - y0])

    def set_view(self, view):
        x0, x1, y0, y1 = view
        self.view = tuple(float(v) for v in view)
        self.plot.x_range.update(start=x0, end=x1)
        self.plot.y_range.update(start=y0, end=y1)


class CompareSession(BackgroundWork):
    """One browser session's comparison page."""

    def __init__(self, doc, explorer, comps: Comparisons, pair: Pair, executor, secret=None):
        from bokeh.events import MouseMove, RangesUpdate, SelectionGeometry, Tap
        from bokeh.layouts import column, row
        from bokeh.models import (Button, ColumnDataSource, CustomJS, DataTable, Div, Select,
                                  Slider, TableColumn, Toggle)

        self.doc, self.ex, self.comps, self.pair = doc, explorer, comps, pair
        self.executor, self.secret = executor, secret
        ctx = self._ctx = doc.session_context
        self.session_id = ctx.id if ctx is not None else ""
        args = (ctx.request.arguments if ctx is not None and ctx.request is not None else {}) or {}
        self.default_path = comps.spaces_with_layouts()
        self.tapped = None
        self.sel = None  # {"layout", "side", "q": {"box"|"poly": text}, "geom"}
        self.result = None

        self.maps = {}
        for side in SIDES:
            layout = pair.la if side == "a" else pair.lb
            r = explorer.renderer(layout)
            opts = self._options(layout)
            color = _arg(args, f"c{side}", default="change:overlap" if side == "b" else "density")
            if color not in [o[0] for o in opts]:
                color = "density"
            (dx0, dx1), (dy0, dy1) = r.default_range()
            v = [_arg(args, f"{side}{n}", float) for n in ("x0", "x1", "y0", "y1")]
            view = tuple(v) if None not in v and v[0] < v[1] and v[2] < v[3] else \
                (dx0, dx1, dy0, dy1)
            self.maps[side] = _Map(self, side, layout, color, view, opts)
        ma, mb = self.maps["a"], self.maps["b"]

        # -- the comparison control (cmp=A,B), an error line, the pan/zoom link --------------
        spaces = list(explorer.ds.spaces)
        self.sel_a = Select(title="Space A", value=pair.a, options=spaces, name="space_a",
                            width=200)
        self.sel_b = Select(title="Space B", value=pair.b, options=spaces, name="space_b",
                            width=200)
        go = Button(label="Compare", name="compare_go", width=100)
        go.js_on_event("button_click", CustomJS(args=dict(a=self.sel_a, b=self.sel_b), code="""
            const q = new URLSearchParams();
            q.set('cmp', a.value + ',' + b.value);
            window.location.search = q.toString();
        """))
        single = Div(text="<a href='/?cmp=none'>single map</a>", name="single_link")
        self.link = Toggle(label="link pan/zoom", active=bool(_arg(args, "link", int, 0)) and
                           pair.aligned, disabled=not pair.aligned, name="link", width=140)
        self.error = Div(text="", name="error", styles={"color": "#b00020"}, width=900)
        self.info = Div(text=self._info_text(), name="cmpinfo", width=900)

        # -- tap: neighbours in A and in B --------------------------------------------------
        self.tap_div = Div(text="<i>tap a point in either map to list its neighbours in A "
                           "and in B</i>", width=1100, name="tapinfo")
        self.hover_div = Div(text="<i>hover over a point</i>", width=300, name="hover")
        self.nbr = {}
        tables = []
        for side in SIDES:
            src = ColumnDataSource(dict(id=[], label=[], status=[]), name=f"nbr_src_{side}")
            cols = [TableColumn(field="id", title="id"), TableColumn(field="label", title="label"),
                    TableColumn(field="status", title="in B" if side == "b" else "in A")]
            t = DataTable(source=src, columns=cols, width=300, height=240, index_position=None,
                          name=f"neighbours_{side}")
            src.selected.on_change("indices", partial(self.on_nbr_click, side))
            self.nbr[side] = src
            tables.append(column(Div(text=f"<b>neighbours in {side.upper()}</b>",
                                     name=f"nbr_title_{side}"), t))

        # -- movers --------------------------------------------------------------------------
        meta = explorer.ds.meta
        labels = ["any"]
        if "label" in meta.columns:
            labels += explorer.filter_options("label")
        self.f_label = Select(title="label", value="any", options=labels, name="movers_label",
                              width=120)
        self.f_correct = Select(title="correctness", value="any", options=list(CORRECT_FILTERS),
                                name="movers_correct", width=140)
        self.f_flip = Select(title="prediction flip", value="any", options=list(FLIP_FILTERS),
                             name="movers_flip", width=140)
        for w in (self.f_label, self.f_correct, self.f_flip):
            w.on_change("value", self.on_movers_filter)
        self.movers_src = ColumnDataSource(dict(id=[], overlap=[], label=[], prediction_a=[],
                                                prediction_b=[], flip=[]), name="movers_src")
        mcols = [TableColumn(field=f, title=t) for f, t in
                 (("id", "id"), ("overlap", "overlap"), ("label", "label"),
                  ("prediction_a", "pred. A"), ("prediction_b", "pred. B"), ("flip", "flip"))]
        self.movers = DataTable(source=self.movers_src, columns=mcols, width=520, height=260,
                                index_position=None, name="movers")
        self.movers_src.selected.on_change("indices", self.on_mover_click)
        self.movers_note = Div(text="", name="movers_note", width=520)

        # -- the slider through the path and the per-class agreement curves ------------------
        n = len(pair.path)
        step = pair.path.index(pair.b) if pair.b in pair.path else 0
        self.slider = Slider(start=0, end=max(n - 1, 1), value=step, step=1,
                             title=self._slider_title(step), disabled=n < 2, name="slider",
                             width=520)
        self.slider.on_change("value_throttled", self.on_slider)
        self.curves_box = column(Div(text="<i>per-class agreement curves: computing…</i>"
                                     if n >= 2 else "<i>one space: no path to follow</i>",
                                     name="curves_note"), name="curves_box")
        self.span = None

        self.state = Div(text="", visible=False, name="state")
        self.state.js_on_change("text", CustomJS(code="""
            const q = cb_obj.text;
            if (q) { window.history.replaceState(null, '', '?' + q); }
        """))

        for side, m in self.maps.items():
            m.plot.on_event(RangesUpdate, partial(self.on_ranges, side))
            m.plot.on_event(MouseMove, partial(self.on_move, side))
            m.plot.on_event(Tap, partial(self.on_tap, side))
            m.plot.on_event(SelectionGeometry, partial(self.on_select, side))
            m.color_select.on_change("value", partial(self.on_color, side))
        self.link.on_change("active", self.on_link)

        maps = row(*(column(m.plot, m.color_select, m.legend, m.stats) for m in (ma, mb)))
        controls = row(self.sel_a, self.sel_b, go, self.link, single)
        lower = row(column(self.tap_div, row(*tables, self.hover_div)),)
        path_box = column(self.slider, self.curves_box)
        movers_box = column(Div(text="<b>movers</b>: least neighbourhood overlap A~B"),
                            row(self.f_label, self.f_correct, self.f_flip), self.movers,
                            self.movers_note)
        doc.add_root(column(controls, self.info, self.error, maps, lower,
                            row(path_box, movers_box), self.state))
        # the URL names the comparison from the start (not only after the first change)
        doc.js_on_event("document_ready", CustomJS(args=dict(state=self.state), code="""
            if (state.text) { window.history.replaceState(null, '', '?' + state.text); }
        """))
        doc.title = f"bigembed: {explorer.ds.path.name}: {pair.a} vs {pair.b}"

        # colourings and legends on the pool; frames only once their colouring exists
        for m in self.maps.values():
            self._recolour(m)
        self._load_result()
        self._load_curves()
        tapped = _arg(args, "id", int)
        if tapped is not None and 0 <= tapped < explorer.ds.rows:
            self.tap_id(tapped)
        self._restore_selection(args)
        self._sync_state()

    # -- helpers ---------------------------------------------------------------------------
    def signed(self, q: dict) -> dict:
        if self.secret:
            q = dict(q, session=self.session_id)
        return q

    def pair_query(self) -> dict:
        q = {"a": self.pair.a, "b": self.pair.b, "k": self.pair.k}
        if list(self.pair.path) != self.default_path:
            q["path"] = ",".join(self.pair.path)
        return q

    def _options(self, layout: str) -> list:
        r = self.ex.renderer(layout)
        return ([(c, c) for c in _colour_options(r)] +
                [(v, f"change: {t}") for v, t in self.comps.changes(self.pair, layout)])

    def _info_text(self) -> str:
        p = self.pair
        res = self.result
        mo = "" if res is None else f"; mean neighbourhood overlap <b>{res.mean_overlap:.3f}</b>"
        al = "aligned layouts" if p.aligned else "layouts not aligned (pan/zoom cannot be linked)"
        return (f"<span class='cmp-pair'>A = <b>{html.escape(p.a)}</b>, B = "
                f"<b>{html.escape(p.b)}</b></span>, k = {p.k}, {al}{mo}")

    def _slider_title(self, step: int) -> str:
        path = self.pair.path
        if not path:
            return "path"
        return f"B along the path: {step + 1}/{len(path)} = {path[step]}"

    def _fail(self, what: str, e: Exception):
        if not isinstance(e, InputError):
            log.error("comparison page: %s: %r", what, e)
        self.error.text = f"<b>{html.escape(what)}:</b> {html.escape(str(e))}"

    def _sync_state(self):
        q = {"cmp": f"{self.pair.a},{self.pair.b}", "k": self.pair.k}
        if list(self.pair.path) != self.default_path:
            q["path"] = ",".join(self.pair.path)
        if self.pair.b in self.pair.path:
            q["step"] = self.pair.path.index(self.pair.b)
        for side, m in self.maps.items():
            q[f"c{side}"] = m.color
            for n, v in zip(("x0", "x1", "y0", "y1"), m.view):
                q[f"{side}{n}"] = f"{v:.6g}"
        if self.link.active:
            q["link"] = 1
        if self.tapped is not None:
            q["id"] = self.tapped
        if self.sel is not None:
            q.update(self.sel["q"])
            q["sel"] = self.sel["side"]
        self.state.text = urlencode(q, quote_via=quote)

    # -- colourings, comparison, curves ----------------------------------------------------
    def _recolour(self, m: _Map):
        pair, layout, color = self.pair, m.layout, m.color

        def work():
            return self.comps.legend(pair, layout, color)

        def done(res):
            if (m.layout, m.color, self.pair) != (layout, color, pair):
                return  # changed meanwhile
            if isinstance(res, Exception):
                self._fail(f"cannot colour map {m.side.upper()} by {color}", res)
                return
            m.legend.text = _legend_html(res)
            m.refresh()
            self._sync_state()

        self._in_background(work, done)

    def _load_result(self):
        pair = self.pair

        def done(res):
            if pair != self.pair:
                return
            if isinstance(res, Exception):
                self._fail("cannot compare", res)
                return
            self.result = res
            self.info.text = self._info_text()
            self._refresh_movers()
            if self.sel is not None:
                self._show_groups()

        self._in_background(lambda: self.comps.result(pair), done)

    def _load_curves(self):
        pair = self.pair
        if len(pair.path) < 2:
            return

        def done(res):
            if isinstance(res, Exception):
                self._fail("cannot follow the path", res)
                return
            if res is None:
                self.curves_box.children = [Div_(text="<i>no labels: no agreement curves</i>")]
                return
            self._draw_curves(res)

        from bokeh.models import Div as Div_

        self._in_background(lambda: self.comps.trajectory(pair), done)

    def _draw_curves(self, traj):
        import colorcet as cc
        from bokeh.models import Legend, LegendItem, Span
        from bokeh.plotting import figure

        path = list(self.pair.path)
        f = figure(width=520, height=280, title="per-class agreement of neighbours along the path",
                   x_range=(-0.2, len(path) - 0.8), y_range=(0, 1.02), toolbar_location=None,
                   name="curves")
        f.xaxis.ticker = list(range(len(path)))
        f.xaxis.major_label_overrides = {i: s for i, s in enumerate(path)}
        f.yaxis.axis_label = "share of neighbours with the label"
        items = []
        pal = cc.glasbey_category10
        for j, (lab, ys) in enumerate(list(traj.curves.items())[:12]):
            colour = cc.rgb_to_hex(*[int(255 * c) for c in pal[j % len(pal)]])
            ys = [np.nan if v is None else v for v in ys]
            r = f.line(list(range(len(path))), ys, line_width=2, color=colour,
                       name=f"curve_{lab}")
            items.append(LegendItem(label=str(lab), renderers=[r]))
        mean = np.nanmean(traj.agreement, 0).tolist()
        r = f.line(list(range(len(path))), mean, line_width=3, color="black", line_dash="dashed",
                   name="curve_mean")
        items.append(LegendItem(label="all", renderers=[r]))
        f.add_layout(Legend(items=items, label_text_font_size="8pt", spacing=0), "right")
        step = self.slider.value
        self.span = Span(location=step, dimension="height", line_color="#d62728", line_width=2,
                         name="curves_position")
        f.add_layout(self.span)
        self.curves_box.children = [f]

    # -- callbacks -------------------------------------------------------------------------
    def on_ranges(self, side, ev):
        vals = (ev.x0, ev.x1, ev.y0, ev.y1)
        if any(v is None or not math.isfinite(v) for v in vals) or not (ev.x0 < ev.x1 and
                                                                         ev.y0 < ev.y1):
            return
        m = self.maps[side]
        view = tuple(float(v) for v in vals)
        if view == m.view:
            return
        m.view = view
        m.refresh()
        if self.link.active and self.pair.aligned:
            other = self.maps["b" if side == "a" else "a"]
            if other.view != view:
                other.set_view(view)
                other.refresh()
        self._sync_state()

    def on_link(self, attr, old, new):
        if new and self.pair.aligned:
            b = self.maps["b"]
            b.set_view(self.maps["a"].view)
            b.refresh()
        self._sync_state()

    def on_move(self, side, ev):
        if ev.x is None or ev.y is None:
            return
        m = self.maps[side]
        i = self.ex.renderer(m.layout).pick(ev.x, ev.y, HOVER_PX * max(m.pixel()))
        if i is None:
            for mm in self.maps.values():
                mm.hover_src.data = dict(x=[], y=[])
            return
        for mm in self.maps.values():
            (px, py), = self.ex.renderer(mm.layout).xy([i])
            mm.hover_src.data = dict(x=[float(px)], y=[float(py)])
        self.hover_div.text = f"<b>hover</b>{_meta_html(_shown(self.ex.meta(i)))}"

    def on_tap(self, side, ev):
        if ev.x is None or ev.y is None:
            return
        m = self.maps[side]
        i = self.ex.renderer(m.layout).pick(ev.x, ev.y, TAP_PX * max(m.pixel()))
        if i is not None:
            self.tap_id(i)

    def tap_id(self, i: int):
        self.tapped = int(i)
        pair = self.pair
        self.tap_div.text = f"<i>looking up the neighbours of id {i} in A and in B…</i>"

        def work():
            res = self.comps.result(pair)
            na, nb = res.neighbours(i)
            pt = res.point(i)
            labels = {}
            if "label" in self.ex.ds.meta.columns:
                lab = self.ex.ds.meta["label"]
                labels = {j: str(lab.iat[j]) for j in set(na) | set(nb) | {i}}
            xy = {s: self.ex.renderer(lay).xy([i, *na, *nb]) for s, lay in
                  (("a", pair.la), ("b", pair.lb))}
            return pt, na, nb, labels, xy

        self._in_background(work, partial(self._show_tap, pair))
        self._sync_state()

    def _show_tap(self, pair, res):
        if pair != self.pair:
            return
        if isinstance(res, Exception):
            self._fail("neighbour lookup failed", res)
            return
        pt, na, nb, labels, xy = res
        gained, lost = set(pt["gained"]), set(pt["lost"])
        sa = ["lost" if j in lost else "kept" for j in na]
        sb = ["gained" if j in gained else "kept" for j in nb]
        self.nbr["a"].data = dict(id=na, label=[labels.get(j, "") for j in na], status=sa)
        self.nbr["b"].data = dict(id=nb, label=[labels.get(j, "") for j in nb], status=sb)
        for side, ids, status in (("a", na, sa), ("b", nb, sb)):
            m = self.maps[side]
            p = xy[side]
            off = 1 if side == "a" else 1 + len(na)
            pts = p[off:off + len(ids)]
            m.nb_src.data = dict(x=pts[:, 0].tolist(), y=pts[:, 1].tolist(),
                                 color=[STATUS_COLOURS[s] for s in status])
            m.q_src.data = dict(x=[float(p[0, 0])], y=[float(p[0, 1])])
        ids = lambda v: ", ".join(str(j) for j in v) or "none"  # noqa: E731
        meta = _meta_html(_shown({k: v for k, v in (pt.get("meta") or {}).items() if k != "id"}))
        self.tap_div.text = (
            f"<b>id {pt['id']}</b>: overlap <b>{pt['overlap']:.3f}</b> of its {pair.k} "
            f"neighbours in A ({html.escape(pair.a)}) and B ({html.escape(pair.b)}){meta}"
            f"<span class='gained' style='color:{STATUS_COLOURS['gained']}'>gained in B: "
            f"<span class='ids'>{ids(pt['gained'])}</span></span><br>"
            f"<span class='lost' style='color:{STATUS_COLOURS['lost']}'>lost from A: "
            f"<span class='ids'>{ids(pt['lost'])}</span></span>")

    def on_nbr_click(self, side, attr, old, new):
        if not new:
            return
        ids = self.nbr[side].data["id"]
        if 0 <= new[0] < len(ids):
            self.tap_id(int(ids[new[0]]))

    def on_select(self, side, ev):
        from .api import parse_geometry_text

        if not getattr(ev, "final", True):
            return
        q = selection_query(ev.geometry)
        if q is None:
            return
        try:
            geom = parse_geometry_text(q.get("box"), q.get("poly"))
        except InputError:
            return
        self._set_selection(side, self.maps[side].layout, q, geom)

    def _restore_selection(self, args):
        from .api import parse_geometry_text

        q = {k: _arg(args, k) for k in ("box", "poly") if _arg(args, k)}
        side = _arg(args, "sel", default="a")
        if len(q) != 1 or side not in SIDES:
            return
        try:
            geom = parse_geometry_text(q.get("box"), q.get("poly"))
        except InputError as e:
            self._fail("the selection in the URL is ignored", e)
            return
        self._set_selection(side, self.maps[side].layout, q, geom)

    def _set_selection(self, side, layout, q, geom):
        self.sel = {"side": side, "layout": layout, "q": q, "geom": geom}
        xs, ys = selection_outline(geom)
        for s, m in self.maps.items():
            drawn = s == side or self.comps.aligned(m.layout, layout)
            m.sel_src.data = dict(x=xs, y=ys) if drawn else dict(x=[], y=[])
            m.refresh_overlay()
        self._show_groups()
        self._sync_state()

    def _show_groups(self):
        sel, pair = self.sel, self.pair
        for m in self.maps.values():
            m.stats.text = "<i>counting the selection…</i>"
        key = sel["q"].get("box") or "poly:" + sel["q"]["poly"]

        def work():
            ids = self.comps.selection_ids(sel["layout"], sel["geom"], key)
            return {s: self.comps.group(pair, ids, pair.a if s == "a" else pair.b)
                    for s in SIDES}

        def done(res):
            if sel is not self.sel or pair != self.pair:
                return
            if isinstance(res, Exception):
                self._fail("selection failed", res)
                return
            for s, m in self.maps.items():
                m.stats.text = group_html(res[s])

        self._in_background(work, done)

    def on_color(self, side, attr, old, new):
        m = self.maps[side]
        m.color = new
        self._recolour(m)

    def on_slider(self, attr, old, new):
        step = int(new)
        path = self.pair.path
        if not 0 <= step < len(path):
            return
        b, lb = path[step], self.pair.path_layouts[step]
        aligned = self.comps.aligned(self.pair.la, lb)
        self.pair = self.pair.with_b(b, lb, aligned)
        self.slider.title = self._slider_title(step)
        if self.span is not None:
            self.span.location = step
        if not aligned:
            self.link.active = False
        self.link.disabled = not aligned
        self.sel_b.value = b
        self.result = None
        self.info.text = self._info_text()
        mb = self.maps["b"]
        mb.layout = lb
        mb.plot.title.text = mb.title()
        opts = self._options(lb)
        mb.color_select.options = opts
        if mb.color not in [o[0] for o in opts]:
            mb.color = "density"
            mb.color_select.value = "density"
        if not aligned:  # another coordinate system: show all of it
            (x0, x1), (y0, y1) = self.ex.renderer(lb).default_range()
            mb.set_view((x0, x1, y0, y1))
        ma = self.maps["a"]
        if ma.color.startswith("change:") and ma.color not in [o[0] for o in self._options(
                ma.layout)]:
            ma.color = "density"
            ma.color_select.value = "density"
        # the frame of the new space now (density or a column), the change colourings after
        mb.refresh()
        for m in self.maps.values():
            self._recolour(m)
        if self.sel is not None:
            self._set_selection(self.sel["side"], self.sel["layout"], self.sel["q"],
                                self.sel["geom"])
        self._load_result()
        if self.tapped is not None:
            self.tap_id(self.tapped)
        self._sync_state()

    def on_movers_filter(self, attr, old, new):
        self._refresh_movers()

    def _refresh_movers(self):
        pair = self.pair
        label = None if self.f_label.value == "any" else self.f_label.value
        correct, flip = self.f_correct.value, self.f_flip.value
        self.movers_note.text = "<i>finding the movers…</i>"

        def done(res):
            if pair != self.pair:
                return
            if isinstance(res, Exception):
                self.movers_src.data = {k: [] for k in self.movers_src.data}
                self.movers_note.text = f"<b>movers:</b> {html.escape(str(res))}"
                return
            cols = {k: [r.get(k, "") for r in res] for k in self.movers_src.data}
            self.movers_src.selected.indices = []
            self.movers_src.data = cols
            self.movers_note.text = (f"<span class='movers-count'>{len(res)}</span> points "
                                     f"(least overlap first); click one to centre both maps")

        self._in_background(lambda: self.comps.movers(pair, label=label, correct=correct,
                                                      flip=flip), done)

    def on_mover_click(self, attr, old, new):
        if not new:
            return
        ids = self.movers_src.data["id"]
        if not 0 <= new[0] < len(ids):
            return
        i = int(ids[new[0]])
        self.centre_on(i)
        self.tap_id(i)

    def centre_on(self, i: int):
        """Centre both maps on row ``i``, keeping each map's zoom."""
        for m in self.maps.values():
            (px, py), = self.ex.renderer(m.layout).xy([i])
            x0, x1, y0, y1 = m.view
            hw, hh = (x1 - x0) / 2, (y1 - y0) / 2
            m.set_view((float(px) - hw, float(px) + hw, float(py) - hh, float(py) + hh))
            m.refresh()
        self._sync_state()


def compare_link(explorer, layout: str) -> str | None:
    """HTML of the single map's "compare" control: links to ``?cmp=SPACE,OTHER`` for the
    shown layout's space and each other space (None with one space)."""
    spaces = list(explorer.ds.spaces)
    here = (explorer.ds.manifest.get("layouts", {}).get(layout) or {}).get("space")
    if len(spaces) < 2 or here not in spaces:
        return None
    links = " · ".join(f"<a class='compare-link' href='/?{html.escape(urlencode({'cmp': f'{here},{s}'}))}'>"
                       f"{html.escape(s)}</a>" for s in spaces if s != here)
    return f"<b>compare {html.escape(here)} with</b> {links}"


def page_factory(explorer, comps: Comparisons, executor, secret, single, default=None):
    """``make_doc(doc)`` for the server's one app: the comparison page when the URL (or the
    server's ``--compare`` default) asks for one, else ``single(doc)``. A comparison that
    cannot be shown (normally refused with 400 before Bokeh, see
    :func:`~bigembed.server.compare_api.install`) becomes a page with the reason."""
    from .compare_api import page_pair

    def make_doc(doc):
        ctx = doc.session_context
        args = (ctx.request.arguments if ctx is not None and ctx.request is not None else {}) or {}
        try:
            pair = page_pair(comps, args, default)
        except InputError as e:
            from bokeh.models import Div

            doc.add_root(Div(text=f"<h2>This comparison cannot be shown</h2><p class="
                                  f"'bigembed-error'>{html.escape(str(e))}</p>", name="error"))
            return
        if pair is None:
            single(doc)
        else:
            CompareSession(doc, explorer, comps, pair, executor, secret)

    return make_doc


def setup(explorer, compare: str | None, path: str | None = None):
    """The server's comparison state and its default page arguments (``serve --compare A,B
    [--compare-path S1,S2,...]``), validated now so a bad one fails before serving."""
    from .compare_api import page_pair

    comps = Comparisons(explorer)
    if compare is None:
        if path is not None:
            raise InputError("compare_path needs compare (two spaces A,B)")
        return comps, None
    default = {"cmp": compare}
    if path is not None:
        default["path"] = path
    try:
        page_pair(comps, {}, default)
    except InputError as e:
        name = "compare_path" if str(e).startswith("path") or "'path'" in str(e) else "compare"
        raise InputError(f"{name}: {e}") from None
    return comps, default


def warm(comps: Comparisons, default) -> None:
    """The default comparison's result, trajectory and renderers, before the first visitor."""
    from .compare_api import page_pair

    if default:
        comps.warm(page_pair(comps, {}, default), width=MAP_W, height=MAP_H)
