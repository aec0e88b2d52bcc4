"""Small pieces every page of the explorer shares: URL arguments, selection geometry in the
URL, metadata and legend HTML (the single map, :mod:`bigembed.server.app`, and the comparison,
:mod:`bigembed.server.compare_view`)."""

from __future__ import annotations

import html
import math
from functools import partial

import numpy as np

HOVER_PX = 8
TAP_PX = 10
#: a lasso kept in the page URL has at most this many vertices (evenly thinned), so a shared
#: link stays a few kilobytes (Bokeh carries the URL's arguments in the session token); the
#: live selection counts the same thinned polygon, so the shared view shows the same numbers
URL_POLY_MAX = 200


def _arg(args, name, cast=str, default=None):
    v = args.get(name)
    if not v:
        return default
    try:
        x = cast(v[0].decode("utf-8", "replace"))
    except (TypeError, ValueError):
        return default
    if isinstance(x, float) and not math.isfinite(x):
        return default
    return x


def _coord(v) -> str:
    # 9 significant digits keep float32 layout coordinates exact enough; the selection is
    # counted from these parsed-back numbers, so the URL and the live view always agree.
    return f"{float(v):.9g}"


def selection_query(geometry: dict) -> dict | None:
    """A Bokeh ``SelectionGeometry`` (rect or poly) -> the URL parameter that encodes it:
    ``{"box": "x0,x1,y0,y1"}`` or ``{"poly": "x,y,x,y,..."}`` (what ``/api/select`` takes),
    or None when the geometry is not a usable box or lasso."""
    g = geometry or {}
    try:
        if g.get("type") == "rect":
            vals = [float(g[k]) for k in ("x0", "x1", "y0", "y1")]
            if not all(math.isfinite(v) for v in vals):
                return None
            xs, ys = sorted(vals[:2]), sorted(vals[2:])
            return {"box": ",".join(_coord(v) for v in (*xs, *ys))}
        if g.get("type") == "poly":
            px, py = [float(v) for v in g["x"]], [float(v) for v in g["y"]]
            if len(px) != len(py) or len(px) < 3 or not all(map(math.isfinite, px + py)):
                return None
            if len(px) > URL_POLY_MAX:
                keep = np.unique(np.linspace(0, len(px) - 1, URL_POLY_MAX).round().astype(int))
                px, py = [px[i] for i in keep], [py[i] for i in keep]
            return {"poly": ",".join(f"{_coord(a)},{_coord(b)}" for a, b in zip(px, py))}
    except (KeyError, TypeError, ValueError):
        return None
    return None


def selection_outline(geom: dict) -> tuple[list, list]:
    """The outline (xs, ys) of parsed selection keywords (``box`` or ``polygon``)."""
    if "box" in geom:
        (x0, x1), (y0, y1) = geom["box"]
        return [x0, x1, x1, x0], [y0, y0, y1, y1]
    px, py = geom["polygon"]
    return list(px), list(py)


def _colour_options(r) -> list[str]:
    # image bytes or paths are not something to colour by
    return [c for c in r.columns() if c != "image"]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _shown(meta: dict) -> dict:
    """Metadata to list as text: the image column is shown as a thumbnail instead."""
    return {k: v for k, v in meta.items() if k != "image"}


def _meta_html(meta: dict) -> str:
    rows = "".join(f"<tr><th style='text-align:left;padding-right:8px'>{html.escape(str(k))}</th>"
                   f"<td>{_fmt(v)}</td></tr>" for k, v in meta.items())
    return f"<table>{rows}</table>"


def _legend_html(leg: dict) -> str:
    if leg["kind"] == "categorical":
        items = "".join(
            f"<span style='display:inline-block;margin:1px 6px 1px 0'><span style='display:"
            f"inline-block;width:10px;height:10px;background:{it['color']}'></span> "
            f"{html.escape(it['name'])}</span>" for it in leg["items"])
        return f"<b>{html.escape(leg['column'])}</b><br>{items}"
    import colorcet as cc

    cmap = getattr(cc, leg["cmap"])
    stops = ",".join(cmap[i] for i in np.linspace(0, len(cmap) - 1, 8).astype(int))
    if leg["kind"] == "density":
        return (f"<b>density</b> (histogram-equalised)<div style='height:10px;width:220px;"
                f"background:linear-gradient(to right,{stops})'></div>")
    lo, hi = leg["span"]
    title = "error rate" if leg["column"] == "correct" else f"mean {leg['column']}"
    return (f"<b>{html.escape(title)}</b><div style='height:10px;width:220px;background:"
            f"linear-gradient(to right,{stops})'></div><span>{lo:.3g}</span>"
            f"<span style='float:right;margin-right:40px'>{hi:.3g}</span>")


class BackgroundWork:
    """Pool work for a page's Bokeh session (the single map's and the comparison's): the page
    sets ``self.doc``, ``self.executor`` and ``self._ctx`` (its session context)."""

    def _in_background(self, fn, done):
        """Run ``fn()`` on the pool; apply ``done(result_or_exception)`` on the document."""
        def finished(fut):
            if self.closed:
                return
            try:
                res = fut.result()
            except Exception as e:  # shown to the user, not raised into the event loop
                res = e
            try:
                self.doc.add_next_tick_callback(partial(self._apply, done, res))
            except Exception:  # the session closed meanwhile
                pass

        self.executor.submit(fn).add_done_callback(finished)

    def _apply(self, done, res):
        if not self.closed:
            done(res)

    @property
    def closed(self) -> bool:
        """Whether Bokeh has destroyed this session (background results are then dropped)."""
        return self._ctx is not None and self._ctx.destroyed
