"""HTTP endpoints of the comparison page: frames coloured by change, selection overlays,
movers, and the 400 page for a comparison URL that cannot be shown.

``GET /compare/frame.png?layout=&x0=&x1=&y0=&y1=&w=&h=&a=&b=[&k=][&path=][&color=]`` -> PNG
of one map; ``color`` is a column or a change (``change:overlap``, ``change:agreement``,
``change:flip``, ``change:displacement``, ``change:depth``, ``change:traj``), aggregated per
pixel. ``GET /compare/overlay.png?layout=&x0=..&w=&h=&src=LAYOUT&box=|poly=`` -> PNG of the
rows selected by ``box``/``poly`` on layout ``src``, drawn where ``layout`` puts them
(transparent elsewhere). ``GET /api/compare/movers?a=&b=[&k=][&label=][&correct=][&flip=]``
-> JSON rows. Bad parameters answer 400 with ``{"error": ...}``, never 5xx.
"""

from __future__ import annotations

import html
import json
import logging
from urllib.parse import parse_qs

from tornado.routing import Matcher, Rule
from tornado.web import RequestHandler

from ..errors import InputError
from .api import _Base, parse_geometry, parse_where
from .compare_state import CORRECT_FILTERS, FLIP_FILTERS, parse_spaces

log = logging.getLogger(__name__)


class _CompareBase(_Base):
    def initialize(self, explorer, pools, secret=None, comparisons=None):
        super().initialize(explorer, pools, secret)
        self.comps = comparisons

    def pair(self):
        """The comparison named by the query: ``a``, ``b``, ``k``, ``path``."""
        a, b = self._raw("a", required=True), self._raw("b", required=True)
        k = self.int_arg("k", 1, 200, default=15)
        path = self._raw("path")
        return self.comps.pair(a, b, k=k, path=None if path is None else
                               parse_spaces(path, "path"))


class CompareFrameHandler(_CompareBase):
    async def get(self):
        ex = self.explorer

        def work():
            layout = ex.layout_name(self._raw("layout"))
            pair = self.pair()
            color = self._raw("color") or "density"
            name = self.comps.colour(pair, layout, color)
            r = ex.renderer(layout)
            if not r.has_column(name):
                raise InputError(f"parameter 'color' must be one of {r.columns()} or a change "
                                 f"colouring, got {color!r}")
            xr, yr, w, h = self.view_args()
            return r.render(x_range=xr, y_range=yr, width=w, height=h,
                            color_by=None if name == "density" else name,
                            where=parse_where(self._raw("where")))

        frame = await self.run_frame(work)
        if frame is not None:
            self.send_frame(frame)


class OverlayHandler(_CompareBase):
    async def get(self):
        ex = self.explorer

        def work():
            import time

            t0 = time.perf_counter()
            layout = ex.layout_name(self._raw("layout"))
            src = ex.layout_name(self._raw("src", required=True))
            geom = parse_geometry(self)
            key = self._raw("box") or "poly:" + self._raw("poly")
            xr, yr, w, h = self.view_args()
            ids = self.comps.selection_ids(src, geom, key)
            png, n = self.comps.overlay_png(layout, ids, x_range=xr, y_range=yr, width=w,
                                            height=h)
            return png, len(ids), n, time.perf_counter() - t0

        out = await self.run_frame(work)
        if out is None:
            return
        png, total, shown, secs = out
        self.send_png(png, {"X-Overlay-Rows": f"{total}:{shown}", "X-Frame-Seconds": f"{secs:.4f}"})


class MoversHandler(_CompareBase):
    async def get(self):
        def work():
            pair = self.pair()
            top = self.int_arg("top", 1, 1000, default=100)
            return self.comps.movers(pair, label=self._raw("label"),
                                     correct=self.choice_arg("correct", CORRECT_FILTERS, "any"),
                                     flip=self.choice_arg("flip", FLIP_FILTERS, "any"), top=top)

        out = await self.run(work)
        if out is None:
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"movers": out}))


def page_pair(comps, arguments: dict, default: dict | None = None):
    """The comparison a page URL asks for (``cmp=A,B``, ``k``, ``path``, ``step``, ``la``,
    ``lb``), validated; None when the URL asks for the single map. ``default``: the
    arguments used when the URL has no ``cmp`` (``serve --compare``). Raises
    :class:`InputError` naming the parameter."""
    def one(name):
        v = arguments.get(name)
        if not v:
            return None
        x = v[0]
        if isinstance(x, bytes):
            try:
                x = x.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"parameter {name!r} is not valid UTF-8") from None
        if len(x) > 20000:
            raise InputError(f"parameter {name!r} is too long ({len(x)} characters)")
        return x

    if "cmp" not in arguments and default:
        arguments = dict({k: [str(v).encode()] for k, v in default.items()}, **arguments)
    cmp = one("cmp")
    if cmp is None or cmp in ("", "none"):
        return None
    names = parse_spaces(cmp, "cmp")
    if len(names) != 2:
        raise InputError(f"parameter 'cmp' must be two spaces A,B, got {cmp!r}")

    def num(name):
        v = one(name)
        if v is None:
            return None
        try:
            return int(v)
        except ValueError:
            raise InputError(f"parameter {name!r} must be an integer, got {v!r}") from None

    k = num("k")
    path = one("path")
    return comps.pair(names[0], names[1], k=15 if k is None else k,
                      path=None if path is None else parse_spaces(path, "path"),
                      step=num("step"), la=one("la"), lb=one("lb"))


class _BadCompareMatcher(Matcher):
    """Matches a page request ("/") whose comparison parameters cannot be shown."""

    def __init__(self, comps, default):
        self.comps = comps
        self.default = default

    def match(self, request):
        if request.path not in ("/", ""):
            return None
        try:
            args = parse_qs(request.query, keep_blank_values=True)
        except ValueError:
            return None
        if "cmp" not in args and self.default is None:
            return None
        try:
            page_pair(self.comps, {k: [v.encode("utf-8", "surrogateescape") for v in vs]
                                   for k, vs in args.items()}, self.default)
        except InputError as e:
            return {"path_args": [], "path_kwargs": {"message": str(e)}}
        except Exception:  # a bug: Bokeh's page shows it; never a 500 from here
            log.exception("checking the comparison of %s", request.uri)
        return None


class _BadCompare(RequestHandler):
    def initialize(self, message=""):
        self.message = message

    def set_default_headers(self):
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")

    def get(self, *args, message=None, **kwargs):
        self.set_status(400)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        msg = html.escape(message or self.message)
        self.finish(f"<!doctype html><title>bigembed: cannot compare</title>"
                    f"<h2>This comparison cannot be shown</h2>"
                    f"<p class='bigembed-error' id='error'>{msg}</p>"
                    f"<p><a href='/?cmp=none'>open the single map</a></p>")

    head = get


def patterns(explorer, pools, comparisons, secret=None) -> list:
    kw = dict(explorer=explorer, pools=pools, secret=secret, comparisons=comparisons)
    return [(r"/compare/frame\.png", CompareFrameHandler, kw),
            (r"/compare/overlay\.png", OverlayHandler, kw),
            (r"/api/compare/movers", MoversHandler, kw)]


def install(server, comparisons, default: dict | None = None) -> None:
    """Answer page URLs with a comparison that cannot be shown with 400 and the reason,
    before Bokeh builds a page for them (after the Host/Origin checks)."""
    rules = server._tornado.default_router.rules
    rules.insert(1 if rules else 0, Rule(_BadCompareMatcher(comparisons, default), _BadCompare))
