"""The stage registry of ``bigembed bench``: one small function per stage.

Each stage function takes a :class:`BenchContext` (a synthetic dataset of size N) and returns
the :class:`Trial` that runs the library's own public stage function on it. A stage whose API
is not in this build raises :class:`StageSkipped` with the reason (it is reported as skipped,
never faked). Peers for ``--compare`` live in :mod:`bigembed.bench.peers`.

Each use of another stage's API sits in one function here, so it can be switched in one place.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
from typing import Callable

import numpy as np

from ..reduce.quality import sampled_knn_preservation
from ..search.exact import overlap
from .context import (
    LOOKUP_QUERIES,
    RENDER_SIZE,
    BenchContext,
    StageSkipped,
    Trial,
    accepts,
    base_layout,
    device_kwargs,
    import_api,
    layout_xy,
    mlp,
    nonempty_pixels,
    quiet_kwargs,
    vector_data,
)

#: name -> stage function, in run order
STAGES: dict[str, Callable[[BenchContext], Trial]] = {}


def stage(name: str):
    def deco(fn):
        STAGES[name] = fn
        return fn
    return deco






@stage("ingest")
def ingest_stage(ctx: BenchContext) -> Trial:
    """Write the vectors as a .npy file (untimed), then time ``bigembed.ingest.ingest``."""
    ingest = import_api("bigembed.ingest", "ingest", "foundation")
    npy = ctx.work / "vectors.npy"
    if not npy.exists():
        np.save(npy, ctx.x)
    out = ctx.work / "ingested"

    def quality(r):
        return {"rows": r.rows, "bytes": r.bytes, "rows_match": r.rows == ctx.n}

    return Trial("bigembed", lambda: ingest(npy, out=out, **quiet_kwargs(ingest, overwrite=True)),
                 what=f"ingest(.npy {ctx.n}x{ctx.dim} -> dataset)",
                 setup=lambda: shutil.rmtree(out, ignore_errors=True), quality=quality,
                 backend="pyarrow")


@stage("index")
def index_stage(ctx: BenchContext) -> Trial:
    """``bigembed.search.index.build_index`` (issue 4), recomputed each call (stored index cleared)."""
    build_index = import_api("bigembed.search", "build_index", "issue 4, index build")
    kw = quiet_kwargs(build_index, **device_kwargs(build_index, ctx.device, "index"))
    if accepts(build_index, "force"):
        kw["force"] = True

    def quality(r):
        q = {"kind": getattr(r, "kind", None), "recall_at_10": getattr(r, "recall_at_10", None)}
        trial.backend = getattr(r, "backend", None) or trial.backend
        return q

    trial = Trial("bigembed", lambda: build_index(ctx.ds, **kw), what="build_index(auto)",
                  setup=lambda: ctx.clear_artifacts("indexes"), quality=quality)
    return trial


@stage("knn-graph")
def knn_graph_stage(ctx: BenchContext) -> Trial:
    """``bigembed.search.knn_graph`` with k neighbours, recomputed each call."""
    knn_graph = import_api("bigembed.search", "knn_graph", "issue 4")
    kw = quiet_kwargs(knn_graph, k=ctx.k, **device_kwargs(knn_graph, ctx.device, "knn"))
    if accepts(knn_graph, "force"):
        kw["force"] = True

    def quality(g):
        found = np.asarray(g.indices)[ctx.queries]
        rec = g.record if isinstance(getattr(g, "record", None), dict) else {}
        if rec.get("backend"):
            trial.backend = rec["backend"]
        return {"recall": round(overlap(found, ctx.truth(ctx.k)), 4), "k": ctx.k}

    trial = Trial("bigembed", lambda: knn_graph(ctx.ds, **kw), what=f"knn_graph(k={ctx.k})",
                  setup=lambda: ctx.clear_artifacts("graphs"), quality=quality,
                  backend="faiss-cpu exact")
    return trial


def _reduce_fn(method: str):
    reduce = import_api("bigembed.reduce", "reduce", "issue 5")
    methods = getattr(importlib.import_module("bigembed.reduce"), "METHODS", ("pca",))
    if method not in methods:
        raise StageSkipped(f"reduce method {method!r} is not available in this build "
                           f"(it has {list(methods)}; issue 5 adds umap/tsne)")
    return reduce




@stage("reduce")
def reduce_stage(ctx: BenchContext) -> Trial:
    """``bigembed.reduce.reduce(method=...)``, forced to recompute each call.

    The layout alone is timed (``quality=False``): the bench measures kNN preservation itself,
    the same way for bigembed and every peer, on its query sample."""
    reduce = _reduce_fn(ctx.reduce_method)
    kw = quiet_kwargs(reduce, method=ctx.reduce_method, force=True, seed=ctx.seed)
    if accepts(reduce, "quality"):
        kw["quality"] = False
    kw.update(device_kwargs(reduce, ctx.device, "reduce"))

    def quality(r):
        trial.backend = getattr(r, "backend", None)
        xy, rec = layout_xy(ctx, r.name)
        q = {"knn_preservation": round(sampled_knn_preservation(ctx.x, xy, ctx.queries, ctx.k,
                                                        ctx.truth(ctx.k)), 4), "k": ctx.k}
        stored = rec.get("quality")
        if isinstance(stored, dict):
            q["stored_quality"] = stored
        return q

    trial = Trial("bigembed", lambda: reduce(ctx.ds, **kw), what=f"reduce({ctx.reduce_method})",
                  quality=quality)
    return trial








@stage("render")
def render_stage(ctx: BenchContext) -> Trial:
    """One full-view 800x800 frame of a layout, as PNG bytes: the explorer's frame renderer
    (issue 6) when present, else ``bigembed.view.render.render_image``."""
    import io

    name = base_layout(ctx)
    try:
        from ..view.frames import FrameRenderer  # issue 6
    except ImportError:
        FrameRenderer = None
    if FrameRenderer is not None:
        fr = FrameRenderer(ctx.ds.reload(), layout_name=name)
        xy, _ = layout_xy(ctx, name)
        xr = (float(xy[:, 0].min()), float(xy[:, 0].max()))
        yr = (float(xy[:, 1].min()), float(xy[:, 1].max()))

        def run():
            return fr.render_png(x_range=xr, y_range=yr, width=RENDER_SIZE, height=RENDER_SIZE)

        what, backend = "FrameRenderer.render_png", "server.frames"
    else:
        from ..dataset.layouts import load_layout
        from ..view.render import render_image

        ds = ctx.ds.reload()
        lay = load_layout(ds, name=name)

        def run():
            buf = io.BytesIO()
            render_image(ds, lay, width=RENDER_SIZE, height=RENDER_SIZE).save(buf, "PNG")
            return buf.getvalue()

        what, backend = "render_image -> PNG", "datashader"
    return Trial("bigembed", run, what=f"{what} {RENDER_SIZE}x{RENDER_SIZE}",
                 quality=lambda png: {"nonempty_pixels": nonempty_pixels(png)},
                 backend=backend)




@stage("lookup")
def lookup_stage(ctx: BenchContext) -> Trial:
    """``bigembed.search.neighbors`` for a batch of single-id queries (k=10), as the map's
    tap and the HTTP endpoint call it; per-query latency is reported."""
    neighbors = import_api("bigembed.search", "neighbors", "foundation")
    qids = ctx.queries[:LOOKUP_QUERIES]

    def run():
        return [[n["id"] for n in neighbors(ctx.ds, id=int(q), k=10).neighbors] for q in qids]

    def quality(found):
        truth = ctx.truth(ctx.k)[: len(qids), :10]
        found = np.array([f + [-1] * (10 - len(f)) for f in found], np.int64)
        return {"recall_at_10": round(overlap(found, truth), 4)}

    return Trial("bigembed", run, what=f"neighbors(id, k=10) x {len(qids)}", quality=quality,
                 items=len(qids), backend="faiss-cpu")


@stage("extract")
def extract_stage(ctx: BenchContext) -> Trial:
    """``bigembed.extract.extract`` (issue 3) of two layers of a small MLP over the vectors."""
    extract = import_api("bigembed.extract", "extract", "issue 3")
    if importlib.util.find_spec("torch") is None:
        raise StageSkipped("torch is not installed (pip install torch)")

    model = mlp(ctx.dim, ctx.seed)
    data = vector_data(ctx.x)
    out = ctx.work / "extracted"
    kw = quiet_kwargs(extract, layers=["1", "3"], batch_size=256, device=ctx.device)

    def quality(r):
        return {"rows": getattr(r, "rows", None)}

    return Trial("bigembed", lambda: extract(model=model, data=data, out=out, **kw),
                 what="extract(MLP, layers 1 and 3)",
                 setup=lambda: shutil.rmtree(out, ignore_errors=True), quality=quality,
                 backend=f"torch-{ctx.device}")
