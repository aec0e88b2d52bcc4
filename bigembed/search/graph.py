"""The kNN graph of a space: the k nearest other instances of every instance.

:func:`knn_graph` computes it (exact, or IVF tuned to a target recall for large N) and stores
it as a content-keyed ``graphs`` artifact, reused by the layout stage (umap-learn's
``precomputed_knn``) and by layout-quality measures. Distances: L2 (not squared), cosine
``1 - cos``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import xxhash

from ..dataset.reader import open_cached
from ..dataset.tables import read_table_artifact, write_table_artifact
from ..distributed.session import implementation as cluster_implementation
from ..errors import InputError, check_choice
from .exact import drop_self, exact_knn, recall, sample_ids, to_user_distance
from .index import METRICS, prepare_space

log = logging.getLogger(__name__)

GRAPH_FORMAT = 1


# --------------------------------------------------------------------------------------------
# kNN graph
# --------------------------------------------------------------------------------------------


@dataclass
class KnnGraph:
    """The k nearest other instances of every instance of a space.

    ``indices``: array of shape (N, k) int64, self excluded, nearest first;
    ``distances``: array of shape (N, k) float32 (L2, not squared; cosine: 1 - cos);
    ``record``: the manifest entry (name, method, backend, recall, seconds, ...).
    """

    space: str
    k: int
    metric: str
    indices: np.ndarray
    distances: np.ndarray
    record: dict = field(default_factory=dict)

    @property
    def name(self) -> str | None:
        return self.record.get("name")


GRAPH_METHODS = ("auto", "exact", "ivf")
#: ``auto`` is exact while N * N * d stays under this many multiply-adds (~15 s on 2 cores).
EXACT_MAX_MACS = 2.5e11


def _graph_key(sp, k: int, metric: str, method: str, target: float) -> str:
    h = xxhash.xxh3_64()
    h.update(json.dumps({"space": sp.fingerprint, "k": k, "metric": metric, "method": method,
                         "target": target, "format": GRAPH_FORMAT}, sort_keys=True).encode())
    return f"{sp.name}.knn{k}.{metric}.{h.hexdigest()[:12]}"


def _read_graph(ds, name: str, rec: dict, k: int) -> KnnGraph:
    table = read_table_artifact(ds, "graph", name, rec)
    kk = int(rec["k"])
    ind = table.column("indices").combine_chunks().values.to_numpy().reshape(-1, kk)
    dist = table.column("distances").combine_chunks().values.to_numpy().reshape(-1, kk)
    return KnnGraph(rec["space"], k, rec["metric"], ind[:, :k], dist[:, :k],
                    dict(rec, name=name))


def find_graph(ds, *, space: str, k: int, metric: str, min_recall: float = 0.0):
    """A stored graph of the current vectors of ``space`` with at least ``k`` neighbours."""
    sp = ds.space(space)
    best = None
    for name, rec in ds.artifacts("graphs").items():
        if (rec.get("space") != sp.name or rec.get("space_fingerprint") != sp.fingerprint
                or rec.get("metric") != metric or int(rec.get("k", 0)) < k
                or rec.get("recall", 0) < min_recall):
            continue
        # The smallest sufficient k (least to read), then the best recall.
        rank = (int(rec["k"]), -rec.get("recall", 0))
        if best is None or rank < best[2]:
            best = (name, rec, rank)
    if best is None:
        return None
    return best[0], best[1]


def answer_rows(searcher, x: np.ndarray, start: int, stop: int, *, k: int, metric: str):
    """The graph rows ``start..stop``: (indices (b, k) int64, distances (b, k) float32, how
    many rows an IVF probe underfilled and were answered exactly). ``x``: the prepared (N, d)
    vectors; ``searcher``: FAISS's ``search(q, k)`` over all of them. One copy of this code
    answers every block, in this process or on a cluster worker."""
    fmetric = "l2" if metric == "l2" else "ip"
    q = np.ascontiguousarray(x[start:stop])
    D, I = searcher.search(q, k + 1)
    short = (I < 0).any(1)
    if short.any():  # an IVF probe found too few: answer those rows exactly
        D[short], I[short] = exact_knn(q[short], x, k + 1, fmetric)
    D, I = drop_self(D, I, np.arange(start, stop), k)
    return I, to_user_distance(D, metric), int(short.sum())


def knn_graph(ds, *, space: str | None = None, k: int = 15, metric: str = "l2",
              method: str = "auto", target_recall: float = 0.95, backend: str = "auto",
              force: bool = False, batch_rows: int = 16384,
              progress: bool | None = None) -> KnnGraph:
    """The kNN graph of ``space`` (self excluded), stored as a ``graphs`` artifact and reused.

    method: ``exact`` (FAISS brute force or the torch kernel), ``ivf`` (IVF tuned on a sample
    to ``target_recall`` recall@k, measured against exact search and recorded), or ``auto``
    (exact while N*N*d <= EXACT_MAX_MACS or a GPU backend runs, else ivf). A stored graph
    with k' >= k of the same vectors and metric is reused (its first k columns).
    Raises :class:`InputError` when ``k`` is not in 1..N-1.
    """

    from ..progress import progress_bar
    from .index import default_nlist, make_index, search_backend, tune

    t0 = time.perf_counter()
    ds = open_cached(ds)
    check_choice("metric", metric, METRICS)
    check_choice("method", method, GRAPH_METHODS)
    sp = ds.space(space)
    n = sp.rows
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n - 1:
        raise InputError(f"k must be an integer in 1..{n - 1} (N - 1), got {k!r}")
    k = int(k)
    be, impl = search_backend(backend)
    if method == "auto":
        method = "exact" if (be.gpu or float(n) * n * sp.dim <= EXACT_MAX_MACS
                             or n < 39 * 4) else "ivf"
    target = 1.0 if method == "exact" else float(target_recall)
    if not force:
        hit = find_graph(ds, space=sp.name, k=k, metric=metric, min_recall=target - 1e-9)
        if hit is not None:
            log.info("knn graph: reusing %s", hit[0])
            return _read_graph(ds, hit[0], hit[1], k)
    fmetric = "l2" if metric == "l2" else "ip"
    ds.prepare_write("graphs")  # a read-only dataset fails now, not after the search
    prep = prepare_space(sp, metric)
    x = prep.x
    params: dict = {}
    if method == "exact":
        searcher = impl.exact_searcher(lambda: x, fmetric)
        if searcher is None:
            searcher, _ = make_index("flat", sp.dim, metric, n=n)
            searcher = impl.to_device(searcher)
            searcher.add(x)
        measured = 1.0
    else:
        index, params = make_index("ivf", sp.dim, metric, n=n,
                                   params={"nlist": default_nlist(n)})
        index.train(np.ascontiguousarray(x[sample_ids(n, min(n, 64 * params["nlist"]), 1)]))
        for s in range(0, n, 65536):
            index.add(np.ascontiguousarray(x[s:s + 65536]))
        # Tune nprobe on recall@(k+1) of sampled rows (self included on both sides).
        qids = sample_ids(n, 200, seed=3)
        true_d, _ = exact_knn(x[qids], x, k + 1, fmetric)
        search, measured, sweep = tune(index, "ivf", np.ascontiguousarray(x[qids]), true_d,
                                       fmetric, target, params)
        params.update(search, tuning=[[v, round(r, 4)] for v, r in sweep])
        searcher = index
    ind = np.empty((n, k), np.int64)
    dist = np.empty((n, k), np.float32)
    cluster = cluster_implementation("knn_graph_blocks")
    if cluster is not None:  # row blocks answered by the workers (bigembed.distributed)
        short_rows = cluster(ds=ds, sp=sp, k=k, metric=metric, method=method,
                             backend=be.name, index=None if method == "exact" else searcher,
                             params=params, ind=ind, dist=dist, batch_rows=batch_rows,
                             progress=progress)
    else:
        bar = progress_bar(total=n, desc=f"knn graph k={k} ({method})", unit="rows",
                           enabled=progress)
        short_rows = 0
        for s in range(0, n, batch_rows):
            e = min(n, s + batch_rows)
            ind[s:e], dist[s:e], short = answer_rows(searcher, x, s, e, k=k, metric=metric)
            short_rows += short
            bar.update(e - s)
        bar.close()
    if method != "exact":
        # Recall of the stored graph (self excluded) against exact search, on a sample.
        qids = sample_ids(n, 200, seed=4)
        td, ti = exact_knn(x[qids], x, k + 1, fmetric)
        td, ti = drop_self(td, ti, qids, k)
        # Kept with the graph: comparisons measure their error on these rows for free.
        exact_sample = {"rows": qids.tolist(), "indices": ti.tolist()}
        fd = ind[qids]
        # Compare in user-distance space, where smaller is nearer for every metric.
        measured = recall(dist[qids], fd, to_user_distance(td, metric).astype(np.float32),
                          "l2")
    seconds = time.perf_counter() - t0
    name = _graph_key(sp, k, metric, method, target)
    table = pa.table({
        "indices": pa.FixedSizeListArray.from_arrays(pa.array(ind.reshape(-1)), k),
        "distances": pa.FixedSizeListArray.from_arrays(pa.array(dist.reshape(-1)), k),
    })

    record = {"space": sp.name, "k": k, "metric": metric, "method": method,
              "backend": be.name, "rows": n, "dim": sp.dim, "recall": round(measured, 4),
              "target_recall": target, "params": params, "seconds": round(seconds, 3),
              "underfilled_rows": short_rows, "zero_vectors": int(len(prep.zero_rows)),
              "space_fingerprint": sp.fingerprint, "format": GRAPH_FORMAT}
    if method != "exact":
        record["exact_sample"] = exact_sample
    write_table_artifact(ds, "graphs", name, table, record)
    log.info("knn graph %s: %s k=%d over %d rows, recall %.3f, %.1fs", name, method, k, n,
             measured, seconds)
    return KnnGraph(sp.name, k, metric, ind, dist, dict(record, name=name))
