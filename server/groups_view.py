"""Why a group is where it is: the page's group panel and its HTTP endpoints.

The panel (:class:`GroupsPanel`, beside the map) shows for the current group (the whole
dataset until a box or lasso selection, a cluster row or a member is picked):

- the group's confusion matrix beside the dataset's (Bokeh heatmaps; tapping a cell filters
  the map to that label and prediction),
- its confidence and loss histograms overlaid on the rest's,
- its members worst-first by loss (thumbnails or text snippets; tapping one centres the map on
  it and lists its neighbours),
- a bar chart of the dimensions that set it apart (:func:`bigembed.analysis.contrast`) with a
  space chooser and CSV export,
- the clusters of the layout sorted by error rate (a click centres the map on the cluster and
  makes it the group), with their names drawn on the map (more of them as you zoom in).

``GET /api/contrast?box=|poly=|cluster=|label=[&layout=][&space=][&top=20][&format=json|csv]`` and
``GET /api/clusters?[layout=]`` answer the same from HTTP (``/api/select?...&stats=1`` adds
:func:`bigembed.analysis.group_stats`).
"""

from __future__ import annotations

import html
import io
import json
import logging
import math
from urllib.parse import urlencode

import numpy as np

from ..errors import InputError
from .api import _Base

log = logging.getLogger(__name__)

#: classes shown in a confusion heatmap (the most frequent in the dataset)
HEATMAP_CLASSES = 20
#: members listed worst-first
MEMBERS = 24
#: cluster names drawn on the whole map; more as the view narrows
NAMES_AT_FULL_VIEW = 8
MAX_NAMES = 60
CONTRAST_TOP = 20
SNIPPET_CHARS = 80


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


def group_ids(explorer, *, layout=None, box=None, poly=None, cluster=None,
              label=None) -> np.ndarray:
    """Row ids of a group named by a selection (``box``/``poly`` text), a ``cluster`` id of
    ``layout``'s stored clusters or a ``label`` value."""
    from .api import parse_geometry_text

    given = [k for k, v in (("box", box), ("poly", poly), ("cluster", cluster),
                            ("label", label)) if v is not None]
    if len(given) != 1:
        raise InputError("give exactly one of 'box' (x0,x1,y0,y1), 'poly' (x,y,x,y,...), "
                         "'cluster' (a cluster id) or 'label' (a label value)")
    if label is not None:
        return label_ids(explorer, label)
    if cluster is not None:
        cl = explorer.clusters(layout)
        if cl is None:
            raise InputError(f"layout {explorer.layout_name(layout)!r} has no clusters; make "
                             f"them with `bigembed cluster {explorer.ds.path}`")
        try:
            c = int(cluster)
        except (TypeError, ValueError):
            raise InputError(f"parameter 'cluster' must be an integer, got {cluster!r}") from None
        if not 0 <= c < cl.n_clusters:
            raise InputError(f"parameter 'cluster' must be in 0..{cl.n_clusters - 1}, got {c}")
        return np.flatnonzero(cl.labels == c)
    geom = parse_geometry_text(box, poly)
    return explorer.select(layout=layout, **geom).ids


def label_ids(explorer, value: str) -> np.ndarray:
    """Rows whose label (as text) is ``value``."""
    meta = explorer.ds.meta
    if "label" not in meta.columns:
        raise InputError("parameter 'label': the metadata has no label column")
    ids = np.flatnonzero(meta["label"].astype(str).to_numpy() == str(value))
    if not len(ids):
        raise InputError(f"parameter 'label': no row has label {value!r}")
    return ids


class ContrastHandler(_Base):
    """``GET /api/contrast``: :func:`bigembed.analysis.contrast` of a group as JSON or CSV."""

    async def get(self):
        ex = self.explorer

        def work():
            from ..analysis.units import contrast, contrast_json

            fmt = self.choice_arg("format", ("json", "csv"), "json")
            layout = ex.layout_name(self._raw("layout"))
            space = self.choice_arg("space", ex.spaces) or ex.space_of(layout)
            top = self.int_arg("top", 1, 100000, default=CONTRAST_TOP)
            ids = group_ids(ex, layout=layout, box=self._raw("box"), poly=self._raw("poly"),
                            cluster=self._raw("cluster"), label=self._raw("label"))
            df = contrast(ex.ds, ids, space=space, top=top, progress=False)
            if fmt == "csv":
                buf = io.StringIO()
                df.to_csv(buf, index=False)
                return fmt, buf.getvalue().encode()
            return fmt, json.dumps(contrast_json(df)).encode()

        out = await self.run(work)
        if out is None:
            return
        fmt, body = out
        self.set_header("Content-Type", "text/csv" if fmt == "csv" else "application/json")
        if fmt == "csv":
            self.set_header("Content-Disposition", 'attachment; filename="contrast.csv"')
        self.finish(body)


class ClustersHandler(_Base):
    """``GET /api/clusters?[layout=]``: the stored clusters of a layout (the JSON of
    ``bigembed cluster --json``)."""

    async def get(self):
        ex = self.explorer

        def work():
            layout = ex.layout_name(self._raw("layout"))
            cl = ex.clusters(layout)
            if cl is None:
                raise InputError(f"layout {layout!r} has no clusters; make them with "
                                 f"`bigembed cluster {ex.ds.path} --layout {layout}`")
            return cl.to_json()

        out = await self.run(work)
        if out is None:
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(out))


def patterns(explorer, pools, secret=None) -> list:
    kw = dict(explorer=explorer, pools=pools, secret=secret)
    return [(r"/api/contrast", ContrastHandler, kw), (r"/api/clusters", ClustersHandler, kw)]


# --------------------------------------------------------------------------------------------
# Data for the charts (pure functions: timed by the benchmark without a browser)
# --------------------------------------------------------------------------------------------


def heatmap_data(st, which: str = "group", limit: int = HEATMAP_CLASSES) -> dict:
    """Cells of a confusion heatmap (``which``: "group" or "all") over at most ``limit``
    classes (the most frequent in the dataset): columns label, prediction, count, share (of
    the row's label)."""
    m = st.confusion if which == "group" else st.confusion_all
    if m is None:
        return dict(label=[], prediction=[], count=[], share=[])
    keep = np.argsort(-st.confusion_all.sum(1), kind="stable")[:limit]
    keep = np.sort(keep)
    sub = m[np.ix_(keep, keep)]
    rows = sub.sum(1, keepdims=True)
    share = np.where(rows > 0, sub / np.maximum(rows, 1), 0.0)
    names = [st.classes[i] for i in keep]
    li, pj = np.nonzero(sub >= 0)
    return dict(label=[names[i] for i in li], prediction=[names[j] for j in pj],
                count=sub[li, pj].tolist(), share=share[li, pj].round(4).tolist())


def histogram_data(h) -> dict:
    """Quads of a histogram, group and rest each as a share of their rows."""
    g = h.group / max(int(h.group.sum()), 1)
    r = h.rest / max(int(h.rest.sum()), 1)
    return dict(left=h.edges[:-1].tolist(), right=h.edges[1:].tolist(), group=g.tolist(),
                rest=r.tolist())


def panel_data(st) -> dict:
    """Everything the charts of a group show, from its :class:`GroupStats`."""
    return {"heat_group": heatmap_data(st, "group"), "heat_all": heatmap_data(st, "all"),
            "hists": {k: histogram_data(h) for k, h in st.histograms.items()}}


def _fmt_pct(v):
    return "–" if v is None else f"{100 * v:.1f}%"


def _fmt_num(v):
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"


# --------------------------------------------------------------------------------------------
# The panel
# --------------------------------------------------------------------------------------------


class GroupsPanel:
    """The group panel of one session (see the module docstring). ``session``: the
    :class:`~bigembed.server.app.Session` it sits in (map, view, pool, tap)."""

    def __init__(self, session):
        from bokeh.layouts import column
        from bokeh.models import ColumnDataSource, Div

        self.s = session
        self.ex = session.ex
        self.ids = None  # None: the whole dataset
        self.group_q: dict = {}
        self.built = False
        self._pending = (None, "everything", None)
        self.title = Div(text="<b>group: everything</b>", width=440, name="group_title")
        # cluster names on the map, fewer when zoomed out
        self.names_src = ColumnDataSource(dict(x=[], y=[], text=[]))
        session.plot.text("x", "y", text="text", source=self.names_src, text_align="center",
                          text_baseline="middle", text_font_size="10pt",
                          text_font_style="bold", text_color="#111111",
                          background_fill_color="white", background_fill_alpha=0.6,
                          name="cluster_names")
        self.root = column(self.title, name="groups_panel")
        self.clusters = self.ex.clusters(session.layout)
        self.on_view()
        # The charts (some two hundred Bokeh models) are built once the browser has shown
        # the page (its DocumentReady event): a page load stays as light as before, and a
        # client that only fetches the document costs nothing more.
        from bokeh.events import DocumentReady

        session.doc.on_event(DocumentReady, lambda event: self._build())

    def _build(self):
        if self.built or self.s.closed:
            return
        from bokeh.layouts import row

        from bokeh.models import (
            Button,
            ColumnDataSource,
            DataTable,
            Div,
            FactorRange,
            NumberFormatter,
            Select,
            TableColumn,
            TextInput,
        )
        from bokeh.plotting import figure
        from bokeh.transform import linear_cmap

        session = self.s
        ex = self.ex
        heat_kw = dict(width=220, height=220, tools="tap", toolbar_location=None,
                       x_axis_label="prediction", y_axis_label="label")
        self.heat_src = ColumnDataSource(dict(label=[], prediction=[], count=[], share=[]))
        self.heat_all_src = ColumnDataSource(dict(label=[], prediction=[], count=[], share=[]))
        self.heat = figure(title="group", x_range=FactorRange(), y_range=FactorRange(),
                           name="confusion_group", **heat_kw)
        self.heat_all = figure(title="whole dataset", x_range=FactorRange(),
                               y_range=FactorRange(), name="confusion_all", **heat_kw)
        cmap = linear_cmap("share", "Viridis256", 0, 1)
        for fig, src in ((self.heat, self.heat_src), (self.heat_all, self.heat_all_src)):
            fig.rect("prediction", "label", 1, 1, source=src, fill_color=cmap, line_color=None,
                     name="cells")
            fig.text("prediction", "label", text="count", source=src, text_font_size="7pt",
                     text_align="center", text_baseline="middle", text_color="white")
            fig.xaxis.major_label_orientation = 0.8
            fig.grid.visible = False
            src.selected.on_change("indices", lambda a, o, n, src=src: self._on_cell(src, n))
        self.hist_figs, self.hist_srcs = {}, {}
        for col in ("confidence", "loss"):
            src = ColumnDataSource(dict(left=[], right=[], group=[], rest=[]))
            fig = figure(title=f"{col}: group vs rest", width=220, height=160,
                         toolbar_location=None, tools="", name=f"hist_{col}")
            fig.quad(left="left", right="right", bottom=0, top="rest", source=src,
                     fill_color="#999999", fill_alpha=0.45, line_color=None, legend_label="rest")
            fig.quad(left="left", right="right", bottom=0, top="group", source=src,
                     fill_color="#d62728", fill_alpha=0.45, line_color=None,
                     legend_label="group")
            fig.legend.label_text_font_size = "7pt"
            fig.legend.location = "top_left" if col == "loss" else "top_right"
            fig.visible = False
            self.hist_figs[col], self.hist_srcs[col] = fig, src
        self.members = Div(text="", width=440, name="members")
        # a member tapped in the grid lands here (set from the page's JS), then on the server
        self.member_pick = TextInput(value="", visible=False, name="member_pick")
        self.member_pick.on_change("value", self._on_member)
        spaces = ex.spaces
        self.space_select = Select(title="Contrast in space", options=spaces,
                                   value=ex.space_of(session.layout) or (spaces[0] if spaces
                                                                           else ""),
                                   width=200, name="contrast_space")
        self.space_select.on_change("value", lambda a, o, n: self._run_contrast())
        self.con_src = ColumnDataSource(dict(dim=[], effect=[], color=[], mean_in=[],
                                             mean_out=[]))
        self.con_fig = figure(title="dimensions that set the group apart (effect size)",
                              width=440, height=300, y_range=FactorRange(),
                              toolbar_location=None, tools="hover", name="contrast",
                              tooltips=[("dim", "@dim"), ("effect", "@effect{0.000}"),
                                        ("mean in", "@mean_in{0.000}"),
                                        ("mean out", "@mean_out{0.000}")])
        self.con_fig.hbar(y="dim", right="effect", height=0.8, source=self.con_src,
                          fill_color="color", line_color=None)
        self.con_info = Div(text="<i>select a group to see the dimensions that set it "
                            "apart</i>", width=440, name="contrast_info")
        self.cl_src = ColumnDataSource(dict(cluster=[], name=[], size=[], error_rate=[],
                                            mean_loss=[], mean_confidence=[], x=[], y=[]))
        pct = NumberFormatter(format="0.0%")
        num = NumberFormatter(format="0.000")
        self.cl_table = DataTable(source=self.cl_src, width=440, height=220, index_position=None,
                                  name="clusters_table", sortable=True, columns=[
                                      TableColumn(field="name", title="cluster", width=170),
                                      TableColumn(field="size", title="size", width=60),
                                      TableColumn(field="error_rate", title="errors",
                                                  formatter=pct, width=60),
                                      TableColumn(field="mean_loss", title="loss",
                                                  formatter=num, width=60),
                                      TableColumn(field="mean_confidence", title="conf.",
                                                  formatter=num, width=60)])
        self.cl_src.selected.on_change("indices", lambda a, o, n: self._on_cluster(n))
        self.cl_info = Div(text="", width=440, name="clusters_info")
        self.find_button = Button(label="find clusters", width=140, name="find_clusters")
        self.find_button.on_click(self._find_clusters)
        self.all_button = Button(label="whole dataset", width=140, name="group_all")
        self.all_button.on_click(lambda: self.show_group(None, "everything"))
        labels = (ex.filter_options("label") if "label" in ex.ds.meta.columns else [])
        self.label_select = Select(title="or a label", options=[""] + labels, value="",
                                   width=140, name="group_label")
        self.label_select.on_change("value", lambda a, o, n: self._on_label(n))
        self.root.children = [self.title, row(self.all_button, self.label_select),
                              row(self.heat, self.heat_all), row(*self.hist_figs.values()),
                              self.members, self.member_pick, self.space_select,
                              self.con_fig, self.con_info, self.cl_info, self.find_button,
                              self.cl_table]
        self.built = True
        self._layout_changed()
        self.show_group(*self._pending)

    # -- group ------------------------------------------------------------------------------
    def show_group(self, ids, what: str, query: dict | None = None):
        """Make ``ids`` (None: every row) the group: stats now, contrast in the background."""
        from ..analysis import group_stats

        if not self.built:
            self._pending = (ids, what, query)
            return
        self.ids = None if ids is None else np.asarray(ids)
        self.group_q = dict(query or {})
        if ids is not None and len(ids) == 0:
            self.title.text = f"<b>group: {html.escape(what)}</b> is empty"
            return
        sel = np.arange(self.ex.ds.rows) if ids is None else ids
        try:
            st = group_stats(self.ex.ds, sel, worst=MEMBERS)
        except InputError as e:
            self.title.text = f"<b>group:</b> {html.escape(str(e))}"
            return
        self.stats = st
        data = panel_data(st)
        self._show_heat(self.heat, self.heat_src, data["heat_group"])
        self._show_heat(self.heat_all, self.heat_all_src, data["heat_all"])
        for col, fig in self.hist_figs.items():
            h = data["hists"].get(col)
            fig.visible = h is not None
            if h is not None:
                self.hist_srcs[col].data = h
        self.title.text = (
            f"<b>group: {html.escape(what)}</b> <span class='group-count'>{st.count}</span> of "
            f"{st.total} rows · error rate {_fmt_pct(st.error_rate)} (all "
            f"{_fmt_pct(st.error_rate_all)}) · mean loss {_fmt_num(st.mean_loss)} (all "
            f"{_fmt_num(st.mean_loss_all)})")
        self.members.text = self._members_html(st)
        self._run_contrast()

    @staticmethod
    def _show_heat(fig, src, d):
        names = list(dict.fromkeys(d["label"]))
        fig.x_range.factors = names
        fig.y_range.factors = names[::-1]
        src.selected.indices = []
        src.data = d

    def _members_html(self, st) -> str:
        if not len(st.worst):
            return ""
        meta = self.ex.ds.meta
        from ..analysis.names import text_column
        from .thumbs import IMAGE_COLUMN

        tcol = text_column(meta)
        cells = []
        for i in st.worst.tolist():
            pick = ("Bokeh.documents[0].get_model_by_name('member_pick').value="
                    f"'{int(i)}:'+Date.now()")
            row = meta.iloc[i]
            cap = []
            for c in ("label", "prediction", "loss"):
                if c in meta.columns:
                    v = row[c]
                    cap.append(f"{c[0]}={v:.2f}" if isinstance(v, float) else f"{c[0]}={v}")
            if IMAGE_COLUMN in meta.columns:
                q = {"id": int(i), "size": 64}
                if self.s.secret:
                    q["session"] = self.s.session_id
                body = (f"<img src='{html.escape('/api/thumb?' + urlencode(q))}' "
                        f"style='width:64px;height:64px;image-rendering:pixelated' "
                        f"alt='id {int(i)}'>")
            elif tcol is not None:
                t = str(row[tcol])
                t = t if len(t) <= SNIPPET_CHARS else t[:SNIPPET_CHARS - 1] + "…"
                body = f"<div style='font-size:11px;width:130px'>{html.escape(t)}</div>"
            else:
                body = f"<div style='font-size:11px'>id {int(i)}</div>"
            cells.append(f"<div class='member' data-id='{int(i)}' onclick=\"{pick}\" "
                         f"title='id {int(i)}' style='cursor:pointer;border:1px solid #ddd;"
                         f"padding:2px;margin:2px;display:inline-block;vertical-align:top'>"
                         f"{body}<div style='font-size:10px'>{html.escape(' '.join(cap))}"
                         f"</div></div>")
        by = f"by {st.worst_by}" if st.worst_by else "in id order"
        return (f"<b>members, worst first ({by})</b><div class='member-grid'>"
                + "".join(cells) + "</div>")

    def _on_label(self, value):
        if not value:
            return
        try:
            ids = label_ids(self.ex, value)
        except InputError as e:
            self.title.text = f"<b>group:</b> {html.escape(str(e))}"
            return
        self.show_group(ids, f"label {value}", {"label": value})

    def _on_member(self, attr, old, new):
        try:
            i = int(str(new).split(":")[0])
        except ValueError:
            return
        if not 0 <= i < self.ex.ds.rows:
            return
        r = self.ex.renderer(self.s.layout)
        (px, py), = r.xy([i])
        self._centre(float(px), float(py))
        self.s.tap_id(i)

    def _on_cell(self, src, indices):
        if not indices:
            return
        d = src.data
        i = indices[0]
        lab, pred = str(d["label"][i]), str(d["prediction"][i])
        filters = self.s.filters
        for col, v in (("label", lab), ("prediction", pred)):
            if col in filters and v in filters[col].options:
                filters[col].value = [v]  # its on_change refreshes the frame and the URL

    # -- contrast -------------------------------------------------------------------------
    def _run_contrast(self):
        space = self.space_select.value
        if not space:
            self.con_info.text = "<i>the dataset has no space to contrast</i>"
            return
        if self.ids is None:
            self.con_src.data = dict(dim=[], effect=[], color=[], mean_in=[], mean_out=[])
            self.con_info.text = "<i>select a group to see the dimensions that set it apart</i>"
            return
        ids = self.ids
        self.con_info.text = "<i>comparing the group with the rest…</i>"

        def work():
            from ..analysis.units import contrast

            return contrast(self.ex.ds, ids, space=space, top=CONTRAST_TOP, progress=False)

        def done(df):
            if ids is not self.ids or space != self.space_select.value:
                return  # a newer group or space is on its way
            if isinstance(df, Exception):
                self.con_src.data = dict(dim=[], effect=[], color=[], mean_in=[], mean_out=[])
                self.con_info.text = f"<b>contrast:</b> {html.escape(str(df))}"
                return
            eff = np.nan_to_num(df["effect"].to_numpy(), posinf=1e6, neginf=-1e6)
            dims = [f"d{int(d)}" for d in df["dim"]]
            self.con_fig.y_range.factors = dims[::-1]
            self.con_src.data = dict(dim=dims, effect=eff.tolist(),
                                     color=["#d62728" if e > 0 else "#1f77b4" for e in eff],
                                     mean_in=df["mean_in"].tolist(),
                                     mean_out=df["mean_out"].tolist())
            link = self._contrast_link()
            self.con_info.text = (
                f"<span class='contrast-done'>top {len(dims)} of the dimensions of "
                f"{html.escape(space)}</span> (group {df.attrs['n_in']} vs rest "
                f"{df.attrs['n_out']})" + (f" · <a href='{link}' download>CSV</a>" if link
                                           else ""))

        self.s._in_background(work, done)

    def _contrast_link(self) -> str | None:
        if not self.group_q:
            return None
        q = dict(self.group_q, layout=self.s.layout, space=self.space_select.value,
                 top=100000, format="csv")
        if self.s.secret:
            q["session"] = self.s.session_id
        return html.escape("/api/contrast?" + urlencode(q))

    # -- clusters -------------------------------------------------------------------------
    def _layout_changed(self):
        cl = self.ex.clusters(self.s.layout)
        self.clusters = cl
        if not self.built:
            self.on_view()
            return
        sp = self.ex.space_of(self.s.layout)
        if sp:
            self.space_select.value = sp
        if cl is None:
            self.cl_src.data = {k: [] for k in self.cl_src.data}
            self.names_src.data = dict(x=[], y=[], text=[])
            self.cl_info.text = ("<i>no clusters for this layout yet: press the button or run "
                                 f"<code>bigembed cluster DATA --layout {html.escape(self.s.layout)}"
                                 "</code></i>")
            self.find_button.visible = True
            return
        self.find_button.visible = False
        t = cl.table.sort_values(["error_rate", "size"], ascending=[False, False],
                                 na_position="last", kind="stable")
        self.cl_src.selected.indices = []
        self.cl_src.data = {c: t[c].tolist() for c in self.cl_src.data}
        self.cl_info.text = (f"<b>{cl.n_clusters} clusters</b> ({cl.noise} noise points), "
                             f"highest error rate first; click one to centre the map on it")
        self.on_view()

    def on_layout(self):
        """The session switched layout: its clusters, names and an empty group."""
        self._layout_changed()
        self.show_group(None, "everything")

    def on_view(self):
        """Names of the clusters in view: the largest ``NAMES_AT_FULL_VIEW`` on the whole
        map, more as the view narrows."""
        cl = getattr(self, "clusters", None)
        if cl is None or not cl.n_clusters:
            if any(len(v) for v in self.names_src.data.values()):  # (no patch per pan)
                self.names_src.data = dict(x=[], y=[], text=[])
            return
        t = cl.table
        x, y = t["x"].to_numpy(), t["y"].to_numpy()
        ok = np.isfinite(x) & np.isfinite(y)
        x0, x1, y0, y1 = self.s.view
        r = self.ex.renderer(self.s.layout)
        (fx0, fx1), (fy0, fy1) = r.default_range()
        zoom = max(1.0, ((fx1 - fx0) * (fy1 - fy0)) / max((x1 - x0) * (y1 - y0), 1e-30))
        limit = int(min(MAX_NAMES, NAMES_AT_FULL_VIEW * math.sqrt(zoom)))
        inside = ok & (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
        idx = np.flatnonzero(inside)
        idx = idx[np.argsort(-t["size"].to_numpy()[idx], kind="stable")][:limit]
        self.names_src.data = dict(x=x[idx].tolist(), y=y[idx].tolist(),
                                   text=t["name"].to_numpy()[idx].tolist())

    def _on_cluster(self, indices):
        if not indices or self.clusters is None:
            return
        d = self.cl_src.data
        i = indices[0]
        c, x, y = int(d["cluster"][i]), d["x"][i], d["y"][i]
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y):
            self._centre(float(x), float(y))
        ids = np.flatnonzero(self.clusters.labels == c)
        self.show_group(ids, f"cluster {d['name'][i]}", {"cluster": c})

    def _find_clusters(self):
        layout = self.s.layout
        self.find_button.disabled = True
        self.cl_info.text = "<i>finding clusters…</i>"

        def work():
            from ..analysis import cluster

            return cluster(self.ex.ds.path, layout=layout, progress=False)

        def done(res):
            self.find_button.disabled = False
            if isinstance(res, Exception):
                self.cl_info.text = f"<b>clustering failed:</b> {html.escape(str(res))}"
                return
            self.ex.set_clusters(layout, res)
            if layout == self.s.layout:
                opts = list(self.s.color_select.options)
                if "cluster" not in opts:
                    self.s.color_select.options = opts + ["cluster"]
                self._layout_changed()

        self.s._in_background(work, done)

    def _centre(self, px: float, py: float):
        x0, x1, y0, y1 = self.s.view
        hw, hh = (x1 - x0) / 2, (y1 - y0) / 2
        self.s.plot.x_range.update(start=px - hw, end=px + hw)
        self.s.plot.y_range.update(start=py - hh, end=py + hh)
        self.s.view = (px - hw, px + hw, py - hh, py + hh)
        self.s._refresh_frame()
        self.on_view()
