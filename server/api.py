"""HTTP endpoints next to the Bokeh app: frames, neighbours, selection export.

``GET /frame.png?x0=&x1=&y0=&y1=&w=&h=[&color=][&layout=][&where=label:1|2;correct:False]``
-> PNG of the view (``where`` keeps only the points whose columns take those values).
``GET /api/neighbors?id=&k=[&space=][&layout=]`` (or ``key=``) -> JSON, the shape of
``bigembed neighbors --json`` plus ``x, y, neighbor_2d`` per neighbour and ``also_2d``.
``GET /api/select?box=x0,x1,y0,y1`` or ``poly=x,y,x,y,...`` ``[&format=json|csv|parquet]``
``[&stats=1]`` (JSON: adds ``stats``, :func:`bigembed.analysis.group_stats` of the selection).
``GET /api/thumb?id=[&size=]`` -> PNG thumbnail of the ``image`` metadata column (hover).

Every parameter is validated; bad input (invalid UTF-8 included) answers 400 with
``{"error": ...}``, never 5xx. Work runs on thread pools, never on the event loop: frames on
their own pool (:class:`Pools`), with a cap on the pixels of a frame and on the frames waiting,
so heavy frames never delay neighbour lookups, selections, thumbnails or page loads.
With a secret, every request must carry a signed ``session`` id of this server.
"""

from __future__ import annotations

import io
import json
import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tornado.ioloop import IOLoop
from tornado.web import HTTPError, RequestHandler

from ..errors import BigembedError, InputError
from ..view.frames import MAX_SIDE
from .state import MAX_K
from .thumbs import MAX_PX, MIN_PX, THUMB_PX, NoImage

log = logging.getLogger(__name__)

MAX_POLY = 2000
#: the most pixels one frame may have (the page asks for 800 x 800)
MAX_FRAME_PIXELS = 2048 * 2048
#: frames waiting or running, per frame worker, beyond which a frame answers 503 (retry)
FRAMES_QUEUED_PER_WORKER = 16


@dataclass
class Pools:
    """The server's thread pools: ``work`` answers small requests (neighbours, selections,
    thumbnails, session callbacks); ``frames`` renders frames. Separate, so a burst of frames
    queues behind itself and never in front of a neighbour lookup; ``frame_slots`` bounds the
    frames in flight."""

    work: ThreadPoolExecutor
    frames: ThreadPoolExecutor
    frame_slots: threading.BoundedSemaphore

    @classmethod
    def make(cls, *, workers: int = 4, frame_workers: int = 2) -> "Pools":
        return cls(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bigembed-work"),
                   ThreadPoolExecutor(max_workers=frame_workers,
                                      thread_name_prefix="bigembed-frame"),
                   threading.BoundedSemaphore(frame_workers * FRAMES_QUEUED_PER_WORKER))

    def shutdown(self) -> None:
        for ex in (self.work, self.frames):
            ex.shutdown(wait=False, cancel_futures=True)


class _Base(RequestHandler):
    def initialize(self, explorer, pools, secret=None):
        self.explorer = explorer
        self.pools = pools
        self.executor = pools.work
        self.secret = secret

    def set_default_headers(self):
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")

    def fail(self, status: int, msg: str):
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": msg}))

    # -- parameters ------------------------------------------------------------------------
    def _raw(self, name, default=None, required=False):
        try:
            v = self.get_query_argument(name, None)
        except HTTPError:  # Tornado's "Invalid unicode": %ff, an overlong %c0%af, ...
            raise InputError(f"parameter {name!r} is not valid UTF-8") from None
        if v is None:
            if required:
                raise InputError(f"parameter {name!r} is required")
            return default
        if len(v) > 20000:
            raise InputError(f"parameter {name!r} is too long ({len(v)} characters)")
        return v

    def int_arg(self, name, lo, hi, default=None, required=False):
        v = self._raw(name, default, required)
        if v is None or isinstance(v, int):
            return v
        try:
            i = int(v)
        except ValueError:
            raise InputError(f"parameter {name!r} must be an integer, got {v!r}") from None
        if not lo <= i <= hi:
            raise InputError(f"parameter {name!r} must be in {lo}..{hi}, got {i}")
        return i

    def float_arg(self, name, required=True):
        v = self._raw(name, None, required)
        if v is None:
            return None
        try:
            f = float(v)
        except ValueError:
            raise InputError(f"parameter {name!r} must be a number, got {v!r}") from None
        if not math.isfinite(f):
            raise InputError(f"parameter {name!r} must be finite, got {v!r}")
        return f

    def choice_arg(self, name, allowed, default=None):
        v = self._raw(name, default)
        if v is not None and v not in allowed:
            raise InputError(f"parameter {name!r} must be one of {list(allowed)}, got {v!r}")
        return v

    def check_session(self):
        if not self.secret:
            return True
        from bokeh.util.token import check_session_id_signature

        try:
            sid = self._raw("session", "")
        except InputError as e:
            self.fail(400, str(e))
            return False
        if not sid or not sid.isascii() or not check_session_id_signature(
                sid, secret_key=self.secret.encode(), signed=True):
            self.fail(403, "a signed session id is required (parameter 'session')")
            return False
        return True

    async def run(self, fn, pool=None):
        """Parse and compute ``fn()`` on ``pool`` (the work pool by default); 400 on bad
        input, 500 only on a bug."""
        if not self.check_session():
            return None
        try:
            return await IOLoop.current().run_in_executor(pool or self.executor, fn)
        except NoImage as e:
            self.fail(404, str(e))
        except BigembedError as e:
            self.fail(400, str(e))
        except Exception:  # a bug: log it, answer without leaking a traceback
            log.exception("error answering %s", self.request.uri)
            self.fail(500, "internal error")
        return None

    # -- frames (the single map's and the comparison's) ------------------------------------
    def view_args(self):
        """The view a frame request asks for: ``x0, x1, y0, y1, w, h`` -> ``((x0, x1), (y0,
        y1), w, h)``, with at most :data:`MAX_FRAME_PIXELS` pixels."""
        x0, x1 = self.float_arg("x0"), self.float_arg("x1")
        y0, y1 = self.float_arg("y0"), self.float_arg("y1")
        w = self.int_arg("w", 1, MAX_SIDE, required=True)
        h = self.int_arg("h", 1, MAX_SIDE, required=True)
        if w * h > MAX_FRAME_PIXELS:
            raise InputError(f"parameters 'w' x 'h' must be at most {MAX_FRAME_PIXELS} pixels, "
                             f"got {w} x {h}")
        return (x0, x1), (y0, y1), w, h

    async def run_frame(self, work):
        """:meth:`run` ``work`` on the frame pool, within the cap on frames in flight: beyond
        it, 503 with ``Retry-After`` (and None)."""
        slots = self.pools.frame_slots
        if not slots.acquire(blocking=False):
            self.set_header("Retry-After", "1")
            self.fail(503, "too many frames in flight; retry")
            return None
        try:
            return await self.run(work, self.pools.frames)
        finally:
            slots.release()

    def send_png(self, png: bytes, headers: dict | None = None) -> None:
        """Answer a PNG body, with extra ``headers`` (name -> value)."""
        self.set_header("Content-Type", "image/png")
        for name, value in (headers or {}).items():
            self.set_header(name, value)
        self.finish(png)

    def send_frame(self, frame) -> None:
        """Answer a rendered frame (:class:`bigembed.view.frames.Frame`): its PNG with how it
        was made (``X-Frame-Mode``: mode:level:points) and how long it took."""
        self.send_png(frame.png, {"X-Frame-Mode": f"{frame.mode}:{frame.level}:{frame.points}",
                                  "X-Frame-Seconds": f"{frame.seconds:.4f}"})


class FrameHandler(_Base):
    async def get(self):
        ex = self.explorer

        def work():
            layout = ex.layout_name(self._raw("layout"))
            r = ex.renderer(layout)
            color = self._raw("color") or None
            if color is not None and color not in r.columns():
                raise InputError(f"parameter 'color' must be one of {r.columns()}, got {color!r}")
            xr, yr, w, h = self.view_args()
            where = parse_where(self._raw("where"))
            return r.render(x_range=xr, y_range=yr, width=w, height=h,
                            color_by=None if color == "density" else color, where=where)

        frame = await self.run_frame(work)
        if frame is not None:
            self.send_frame(frame)


class NeighborsHandler(_Base):
    async def get(self):
        ex = self.explorer

        def work():
            from ..search.lookup import resolve_id

            k = self.int_arg("k", 1, MAX_K, default=10)
            space = self.choice_arg("space", ex.spaces)
            layout = ex.layout_name(self._raw("layout"))
            key = self._raw("key")
            raw_id = self._raw("id")
            if raw_id is None and key is None:
                raise InputError("parameter 'id' (or 'key') is required")
            if raw_id is not None:
                i = self.int_arg("id", 0, ex.ds.rows - 1)
            else:
                i = resolve_id(ex.ds, key=key)
            return ex.neighbors(id=i, k=k, space=space, layout=layout)

        out = await self.run(work)
        if out is None:
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(out))


class CompareHandler(_Base):
    """``GET /api/compare?a=&b=&id=[&k=15][&top=20]``: space A against space B (the JSON of
    ``bigembed compare --json``) with the point's gained and lost neighbours under ``point``."""

    async def get(self):
        ex = self.explorer

        def work():
            a = self.choice_arg("a", ex.spaces)
            b = self.choice_arg("b", ex.spaces)
            if a is None or b is None:
                raise InputError("parameters 'a' and 'b' (spaces) are required")
            i = self.int_arg("id", 0, ex.ds.rows - 1, required=True)
            k = self.int_arg("k", 1, min(MAX_K, ex.ds.rows - 1), default=15)
            top = self.int_arg("top", 1, 1000, default=20)
            r = ex.compare(a=a, b=b, k=k)
            return dict(r.to_json(top), point=r.point(i))

        out = await self.run(work)
        if out is None:
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(out))


class ThumbHandler(_Base):
    """``GET /api/thumb?id=[&size=]``: the instance's image as a PNG fitting ``size`` px
    (default 96); 404 when the dataset or the instance has no readable image."""

    async def get(self):
        ex = self.explorer

        def work():
            i = self.int_arg("id", 0, ex.ds.rows - 1, required=True)
            size = self.int_arg("size", MIN_PX, MAX_PX, default=THUMB_PX)
            return ex.thumbnail(i, size)

        png = await self.run(work)
        if png is None:
            return
        # an id's thumbnail never changes while the server runs: let the browser keep it
        self.send_png(png, {"Cache-Control": "private, max-age=3600"})


def parse_where(text: str | None) -> dict | None:
    """``label:1|2;correct:False`` -> {"label": ["1", "2"], "correct": ["False"]}."""
    if not text:
        return None
    out = {}
    for part in text.split(";"):
        col, sep, vals = part.partition(":")
        values = [v for v in vals.split("|") if v != ""]
        if not sep or not col or not values:
            raise InputError(f"parameter 'where' must look like col:v1|v2;col2:v3, got {text!r}")
        out[col] = values
    return out


def format_where(where: dict | None) -> str:
    return ";".join(f"{k}:{'|'.join(map(str, v))}" for k, v in (where or {}).items() if v)


def _floats(name: str, text: str) -> list[float]:
    try:
        out = [float(t) for t in text.split(",")]
    except ValueError:
        raise InputError(f"parameter {name!r} must be comma-separated numbers") from None
    if not all(math.isfinite(f) for f in out):
        raise InputError(f"parameter {name!r} must hold finite numbers")
    return out


def parse_geometry_text(box: str | None, poly: str | None) -> dict:
    """``box`` "x0,x1,y0,y1" or ``poly`` "x,y,x,y,..." -> {"box": ((x0, x1), (y0, y1))} or
    {"polygon": ([x...], [y...])}, the keywords of :meth:`Explorer.select`.

    The one parser of a selection, for ``/api/select`` and for the page URL alike.
    """
    if (box is None) == (poly is None):
        raise InputError("give exactly one of 'box' (x0,x1,y0,y1) or 'poly' (x,y,x,y,...)")
    for name, v in (("box", box), ("poly", poly)):
        if v is not None and len(v) > 20000:
            raise InputError(f"parameter {name!r} is too long ({len(v)} characters)")
    if box is not None:
        v = _floats("box", box)
        if len(v) != 4 or not (v[0] <= v[1] and v[2] <= v[3]):
            raise InputError(f"parameter 'box' must be x0,x1,y0,y1 with x0<=x1, y0<=y1, got {box!r}")
        return {"box": ((v[0], v[1]), (v[2], v[3]))}
    v = _floats("poly", poly)
    if len(v) % 2 or not 6 <= len(v) <= 2 * MAX_POLY:
        raise InputError(f"parameter 'poly' must hold 3..{MAX_POLY} x,y pairs")
    return {"polygon": (v[0::2], v[1::2])}


def parse_geometry(handler) -> dict:
    return parse_geometry_text(handler._raw("box"), handler._raw("poly"))


class SelectHandler(_Base):
    async def get(self):
        ex = self.explorer

        def work():
            fmt = self.choice_arg("format", ("json", "csv", "parquet"), "json")
            layout = ex.layout_name(self._raw("layout"))
            st = ex.select(layout=layout, **parse_geometry(self))
            if fmt == "json":
                out = st.to_json(with_ids=True)
                if self._raw("stats") in ("1", "true", "yes"):
                    from ..analysis import group_stats  # confusion, histograms, worst-first

                    out["stats"] = group_stats(ex.ds, st.ids).to_json()
                return fmt, json.dumps(out).encode()
            meta = ex.ds.meta.iloc[st.ids]
            buf = io.BytesIO()
            if fmt == "csv":
                meta.to_csv(buf, index=False)
            else:
                meta.to_parquet(buf, index=False)
            return fmt, buf.getvalue()

        out = await self.run(work)
        if out is None:
            return
        fmt, body = out
        ctype = {"json": "application/json", "csv": "text/csv",
                 "parquet": "application/vnd.apache.parquet"}[fmt]
        self.set_header("Content-Type", ctype)
        if fmt != "json":
            self.set_header("Content-Disposition", f'attachment; filename="selection.{fmt}"')
        self.finish(body)


def patterns(explorer, pools: Pools, secret=None) -> list:
    """Tornado URL patterns of the endpoints, for ``Server(extra_patterns=...)``."""
    kw = dict(explorer=explorer, pools=pools, secret=secret)
    return [(r"/frame\.png", FrameHandler, kw),
            (r"/api/neighbors", NeighborsHandler, kw),
            (r"/api/compare", CompareHandler, kw),
            (r"/api/select", SelectHandler, kw),
            (r"/api/thumb", ThumbHandler, kw)]
