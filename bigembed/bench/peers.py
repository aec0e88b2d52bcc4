"""What a user would otherwise call, for ``bigembed bench --compare``: the plain libraries,
on the same data in the same run, with the same quality measure as the stage they stand in for.

``PEERS[stage]`` lists factories ``(ctx) -> Trial``; a peer whose library is missing raises
:class:`StageSkipped`. Slow peers carry a default size cap (``max_n``), overridable with
``--peer-max-n``, so a default run stays inside its budget.
"""

from __future__ import annotations

import importlib.util
import io
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
    base_layout,
    layout_xy,
    mlp,
    nonempty_pixels,
    vector_data,
)

PEERS: dict[str, list[Callable[[BenchContext], Trial]]] = {}

#: default largest N per peer (the slow ones), before --peer-max-n
DEFAULT_MAX_N = {"umap-learn": 30_000, "openTSNE": 10_000, "pynndescent": 300_000}
#: rows of the small sample slow peers warm up on (JIT and imports), timed apart
WARM_ROWS = 1000
#: timed repeats of the slow peers (each is a full fit)
SLOW_REPEAT = 1


def peer(stage: str, name: str):
    """Register ``fn(ctx) -> Trial`` as a peer of ``stage``; ``name`` labels its rows."""
    def deco(fn):
        fn.peer_name = name
        PEERS.setdefault(stage, []).append(fn)
        return fn
    return deco


def _need(module: str, pip: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise StageSkipped(f"{module} is not installed (pip install {pip})")


def _cap(ctx: BenchContext, name: str) -> int | None:
    return ctx.peer_max_n.get(name, DEFAULT_MAX_N.get(name))


# -- ingest ----------------------------------------------------------------------------------


@peer("ingest", "pyarrow.ipc")
def arrow_ipc(ctx: BenchContext) -> Trial:
    """The same .npy rewritten by hand as one Arrow IPC file of FixedSizeList vectors."""
    import pyarrow as pa

    npy = ctx.work / "vectors.npy"
    out = ctx.work / "peer.arrow"
    if not npy.exists():
        np.save(npy, ctx.x)

    def run():
        x = np.load(npy)
        col = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
        table = pa.table({"vector": col})
        with pa.OSFile(str(out), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
        return table.num_rows

    return Trial("pyarrow.ipc", run, what="np.load + Arrow IPC write (no checks, no manifest)",
                 quality=lambda rows: {"rows": rows, "bytes": out.stat().st_size,
                                       "rows_match": rows == ctx.n})


# -- exact neighbours ------------------------------------------------------------------------


def _flat(x):
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    return index


@peer("index", "faiss.IndexFlatL2")
def faiss_flat_build(ctx: BenchContext) -> Trial:
    return Trial("faiss.IndexFlatL2", lambda: _flat(ctx.x), what="IndexFlatL2 + add",
                 quality=lambda _: {"kind": "flat", "recall_at_10": 1.0})


@peer("knn-graph", "faiss.IndexFlatL2")
def faiss_flat_graph(ctx: BenchContext) -> Trial:
    def run():
        _, idx = _flat(ctx.x).search(ctx.x, ctx.k + 1)
        return idx

    def quality(idx):
        found = idx[ctx.queries]
        return {"recall": round(overlap(found, ctx.truth(ctx.k)), 4), "k": ctx.k}

    return Trial("faiss.IndexFlatL2", run, what=f"IndexFlatL2.search(all, k={ctx.k}+1)",
                 quality=quality)


@peer("knn-graph", "pynndescent")
def pynndescent_graph(ctx: BenchContext) -> Trial:
    _need("pynndescent", "pynndescent")

    def fit(x):
        from pynndescent import NNDescent

        return NNDescent(x, n_neighbors=ctx.k + 1, random_state=ctx.seed,
                         verbose=False).neighbor_graph[0]

    def run():
        return fit(ctx.x)

    def quality(idx):
        found = idx[ctx.queries]
        return {"recall": round(overlap(found, ctx.truth(ctx.k)), 4), "k": ctx.k}

    return Trial("pynndescent", run, what=f"NNDescent(n_neighbors={ctx.k}+1).neighbor_graph",
                 quality=quality, max_n=_cap(ctx, "pynndescent"), **_slow(ctx, fit))


def _slow(ctx: BenchContext, fit) -> dict:
    """Warm a slow peer up on a small sample (pays numba JIT once) and time it once."""
    m = min(ctx.n, WARM_ROWS)
    return {"warm": lambda: fit(ctx.x[:m]), "warm_n": m, "max_repeat": SLOW_REPEAT}


@peer("lookup", "faiss.IndexFlatL2")
def faiss_flat_lookup(ctx: BenchContext) -> Trial:

    qids = ctx.queries[:LOOKUP_QUERIES]
    index = _flat(ctx.x)  # a user builds it once; only the queries are timed

    def run():
        return [index.search(ctx.x[int(q):int(q) + 1], 11)[1][0] for q in qids]

    def quality(found):
        truth = ctx.truth(ctx.k)[: len(qids), :10]
        f = np.array([[i for i in row if i != q][:10] for row, q in zip(found, qids)])
        return {"recall_at_10": round(overlap(f, truth), 4)}

    return Trial("faiss.IndexFlatL2", run, what=f"prebuilt IndexFlatL2.search x {len(qids)}",
                 quality=quality, items=len(qids))


# -- layouts ---------------------------------------------------------------------------------


def _layout_quality(ctx):
    def quality(xy):
        return {"knn_preservation": round(sampled_knn_preservation(
            ctx.x, np.asarray(xy), ctx.queries, ctx.k, ctx.truth(ctx.k)), 4), "k": ctx.k}
    return quality


@peer("reduce", "sklearn.PCA")
def sklearn_pca(ctx: BenchContext) -> Trial:
    def run():
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=ctx.seed).fit_transform(ctx.x)

    return Trial("sklearn.PCA", run, what="PCA(2).fit_transform", quality=_layout_quality(ctx))


@peer("reduce", "umap-learn")
def umap_learn(ctx: BenchContext) -> Trial:
    _need("umap", "umap-learn")

    def fit(x):
        import umap

        # No random_state: a seed makes umap-learn single-threaded, which no user wants.
        return umap.UMAP(n_neighbors=ctx.k, n_components=2).fit_transform(x)

    return Trial("umap-learn", lambda: fit(ctx.x), what=f"UMAP(n_neighbors={ctx.k}).fit_transform",
                 quality=_layout_quality(ctx), max_n=_cap(ctx, "umap-learn"), **_slow(ctx, fit))


@peer("reduce", "openTSNE")
def opentsne(ctx: BenchContext) -> Trial:
    _need("openTSNE", "openTSNE")

    def fit(x):
        from openTSNE import TSNE

        return np.asarray(TSNE(n_jobs=-1, random_state=ctx.seed, verbose=False).fit(x))

    return Trial("openTSNE", lambda: fit(ctx.x), what="TSNE(n_jobs=-1).fit",
                 quality=_layout_quality(ctx), max_n=_cap(ctx, "openTSNE"), **_slow(ctx, fit))


# -- render ----------------------------------------------------------------------------------


@peer("render", "datashader")
def datashader_full(ctx: BenchContext) -> Trial:
    """Datashader on the full (x, y) dataframe, shaded and PNG-encoded, as a notebook does."""
    import pandas as pd


    xy, _ = layout_xy(ctx, base_layout(ctx))
    df = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]})

    def run():
        import colorcet as cc
        import datashader as dsh
        import datashader.transfer_functions as tf

        canvas = dsh.Canvas(plot_width=RENDER_SIZE, plot_height=RENDER_SIZE)
        img = tf.shade(canvas.points(df, "x", "y", agg=dsh.count()), cmap=cc.fire[40:],
                       how="eq_hist")
        # The same spreading as the explorer's frames, so the two pictures are comparable.
        from ..view.frames import SPREAD_MAX_PX, SPREAD_THRESHOLD

        img = tf.set_background(tf.dynspread(img, threshold=SPREAD_THRESHOLD,
                                             max_px=SPREAD_MAX_PX), "white")
        buf = io.BytesIO()
        img.to_pil().save(buf, "PNG")
        return buf.getvalue()

    return Trial("datashader", run, what="Canvas.points(full df) + shade + PNG",
                 quality=lambda png: {"nonempty_pixels": nonempty_pixels(png)})


# -- extract ---------------------------------------------------------------------------------






@peer("extract", "torch hooks")
def torch_hooks(ctx: BenchContext) -> Trial:
    _need("torch", "torch")
    import torch

    device = "cuda" if ctx.device == "cuda" else "cpu"
    model = mlp(ctx.dim, ctx.seed).to(device)
    loader = torch.utils.data.DataLoader(vector_data(ctx.x), batch_size=256)

    def run():
        got = {"1": [], "3": []}
        hooks = [model[int(n)].register_forward_hook(
            lambda m, i, o, n=n: got[n].append(o.float().cpu().numpy())) for n in got]
        try:
            with torch.no_grad():
                for (b,) in loader:
                    model(b.to(device))
        finally:
            for h in hooks:
                h.remove()
        return {n: np.concatenate(v) for n, v in got.items()}

    return Trial("torch hooks", run, what="forward hooks into numpy, batch 256",
                 quality=lambda out: {"rows": len(out["1"])}, backend=f"torch-{device}")
