"""Nearest neighbours in the high-dimensional space of a dataset.

:func:`neighbors` answers "which instances are closest to this one (or to this vector)?" for
the CLI, the HTTP endpoint and the map alike, returning ids, distances and each neighbour's
metadata. It searches the stored FAISS index of the space (building one when there is none,
see :mod:`bigembed.index`); the opened dataset and the loaded index are cached in-process, so
repeated calls answer in milliseconds.

:func:`knn_graph` computes the k nearest other instances of every instance (exact, or IVF
tuned to a target recall for large N) and stores it as a content-keyed ``graphs`` artifact,
reused by the layout stage (umap-learn's ``precomputed_knn``) and by layout-quality measures.

Distances: L2 (not squared), cosine ``1 - cos`` (all-zero vectors: 1 from everything, never
NaN), inner product ``-<q, x>``. FAISS's ``-1`` ids never reach the caller.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import xxhash

from .dataset import Dataset
from .errors import DatasetError, InputError, check_choice
from .index import (METRICS, build_index, exact_knn, find_index, load_index, normalise,
                    prepare_space, recall, sample_ids, to_user_distance)

log = logging.getLogger(__name__)

GRAPH_FORMAT = 1


# --------------------------------------------------------------------------------------------
# Opening datasets once per process
# --------------------------------------------------------------------------------------------

_DS_CACHE: dict = {}
_DS_LOCK = threading.Lock()


def open_cached(ds) -> Dataset:
    """``Dataset.open`` once per process per manifest version (the manifest's mtime/size)."""
    if isinstance(ds, Dataset):
        return ds
    path = Path(ds)
    try:
        st = os.stat(path / "manifest.json")
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        return Dataset.open(path)  # raises the clear error
    key = str(path.resolve())
    with _DS_LOCK:
        hit = _DS_CACHE.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    d = Dataset.open(path)
    with _DS_LOCK:
        _DS_CACHE[key] = (stamp, d)
    return d


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class NeighborResult:
    """Neighbours of one query.

    ``neighbors``: list of dicts (id, distance, then the neighbour's metadata), nearest first;
    ``query``: the query's id and metadata (or ``{"vector": True}``); ``notes``: what a user
    should know (k clipped to N, zero vector under cosine, ...).
    """

    space: str
    k: int
    metric: str
    query: dict
    neighbors: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    index: str | None = None
    seconds: float | None = None

    def to_json(self) -> dict:
        return {"space": self.space, "k": self.k, "metric": self.metric, "index": self.index,
                "query": self.query, "neighbors": self.neighbors, "notes": self.notes}


def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            return f"<{len(v)} bytes>"  # binary (an image column, say): no text to show
    if v is None or isinstance(v, (int, str, bool)):
        return v
    try:
        import pandas as pd

        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return str(v)


_META_COLS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _meta_columns(ds: Dataset) -> dict:
    """The metadata as one NumPy array per column, made once per opened dataset: picking a
    few rows out of it takes microseconds, where pandas' ``iloc`` takes milliseconds."""
    cols = _META_COLS.get(ds)
    if cols is None:
        meta = ds.meta
        cols = {c: meta[c].to_numpy() for c in meta.columns}
        _META_COLS[ds] = cols
    return cols


def meta_rows(ds: Dataset, ids) -> list[dict]:
    """Metadata of ``ids`` as JSON-able dicts (id first)."""
    cols = _meta_columns(ds)
    ids = np.asarray(ids, dtype=np.int64)
    picked = {c: a[ids] for c, a in cols.items()}
    return [{c: _jsonable(picked[c][j]) for c in picked} for j in range(len(ids))]


def resolve_id(ds: Dataset, *, id=None, key=None) -> int:
    """The row id named by ``id`` or ``key``; raises :class:`InputError` if there is none."""
    if id is not None:
        if isinstance(id, bool):
            raise InputError(f"--id must be an integer, got {id!r}")
        try:
            i = int(id)
        except (TypeError, ValueError):
            raise InputError(f"--id must be an integer, got {id!r}") from None
        if not 0 <= i < ds.rows:
            raise InputError(f"--id {i} is out of range: dataset {ds.path} has ids 0..{ds.rows - 1}")
        return i
    if key is not None:
        meta = ds.meta
        if "key" not in meta.columns:
            raise InputError(f"--key: dataset {ds.path} has no key column; use --id")
        hits = np.flatnonzero(meta["key"].astype(str).to_numpy() == str(key))
        if len(hits) == 0:
            raise InputError(f"--key: no instance of {ds.path} has key {key!r}")
        return int(hits[0])
    raise InputError("give a query: --id, --key or --vector")


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"-k must be an integer >= 1, got {k!r}")
    return int(k)


# --------------------------------------------------------------------------------------------
# Reading queries from files
# --------------------------------------------------------------------------------------------


def read_vector_file(path) -> np.ndarray:
    """A query vector from a ``.npy`` file: shape (d,) or (1, d)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--vector: {path} does not exist")
    try:
        v = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"--vector: {path} is not a readable .npy array: {e}") from None
    return v


def read_ids_file(path) -> np.ndarray:
    """Query ids from a file: ``.npy`` integer array, a JSON list, or text (one id a line,
    blank lines and ``#`` comments ignored)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--ids-file: {path} does not exist")
    if path.suffix == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InputError(f"--ids-file: {path} is not a readable .npy array: {e}") from None
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
            raise InputError(f"--ids-file: {path} must hold a 1-D integer array, got "
                             f"{a.dtype} of shape {a.shape}")
        return a.astype(np.int64)
    text = path.read_text(errors="replace")
    if text.lstrip().startswith("["):
        try:
            vals = json.loads(text)
        except ValueError as e:
            raise InputError(f"--ids-file: {path} is not valid JSON: {e}") from None
        out = []
        for j, v in enumerate(vals):
            if isinstance(v, bool) or not isinstance(v, int):
                raise InputError(f"--ids-file: {path} item {j} is {v!r}, expected an integer id")
            out.append(v)
        return np.asarray(out, np.int64)
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.split("#", 1)[0].strip()
        if not s:
            continue
        try:
            out.append(int(s))
        except ValueError:
            raise InputError(f"--ids-file: {path} line {lineno} is {s!r}, expected an integer "
                             f"id") from None
    return np.asarray(out, np.int64)


# --------------------------------------------------------------------------------------------
# Lookup
# --------------------------------------------------------------------------------------------


def _index_for(ds: Dataset, space: str, metric: str | None, index: str | None, backend: str,
               progress):
    if index is None:
        index = find_index(ds, space=space, metric=metric)
    if index is None:
        log.info("no index for space %r%s yet; building one", space,
                 f" ({metric})" if metric else "")
        index = build_index(ds, space=space, metric=metric or "l2", backend=backend,
                            progress=progress).name
        ds = open_cached(ds.path)
    return load_index(ds, index, backend=backend)


_PREP_CACHE: dict = {}


def _exact_fallback(ds, loaded, q: np.ndarray, kk: int):
    """Exact search for queries an approximate index under-filled (FAISS returned -1)."""
    sp = ds.space(loaded.record["space"])
    metric = loaded.metric
    key = (str(ds.path.resolve()), sp.name, sp.fingerprint, metric)
    x = _PREP_CACHE.get(key)
    if x is None:
        x = prepare_space(sp, metric).x
        _PREP_CACHE.clear()  # hold one prepared copy at most
        _PREP_CACHE[key] = x
    if metric == "cosine":
        q, _ = normalise(q)
    return exact_knn(q, x, kk, "l2" if metric == "l2" else "ip")


def _search(ds, loaded, q: np.ndarray, kk: int):
    """(D, I) for queries (m, d); rows FAISS could not fill are answered exactly."""
    D, I = loaded.search(q, kk)
    short = (I < 0).any(1)
    if short.any():
        d2, i2 = _exact_fallback(ds, loaded, q[short].reshape(-1, loaded.dim), kk)
        D[short], I[short] = d2, i2
    return D, I


def _items(ds, pairs, metric) -> list[dict]:
    if not pairs:
        return []
    metas = meta_rows(ds, [p[0] for p in pairs])
    dist = to_user_distance(np.array([p[1] for p in pairs]), metric)
    out = []
    for (i, _), dd, m in zip(pairs, dist, metas):
        item = {"id": i, "distance": float(dd)}
        item.update({c: v for c, v in m.items() if c != "id"})
        out.append(item)
    return out


def _query_vector(vector, dim: int, metric: str, notes: list) -> np.ndarray:
    if isinstance(vector, (str, os.PathLike)):
        vector = read_vector_file(vector)
    try:
        v = np.asarray(vector, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"--vector must be numbers, got {type(vector).__name__}") from None
    if v.ndim == 2 and v.shape[0] == 1:
        v = v[0]
    if v.ndim != 1 or v.shape[0] != dim:
        raise InputError(f"--vector has shape {v.shape}, expected ({dim},): the space's "
                         f"dimension is {dim}")
    if not np.isfinite(v).all():
        raise InputError(f"--vector has {int((~np.isfinite(v)).sum())} NaN or infinite values")
    if metric == "cosine" and not v.any():
        notes.append("the query vector is all zeros: under cosine it has no direction, so "
                     "every instance is at distance 1")
    return v.astype(np.float32)


def neighbors(ds, *, space: str | None = None, id=None, key=None, vector=None, k: int = 10,
              include_self: bool = False, metric: str | None = None, index: str | None = None,
              backend: str = "auto", progress: bool | None = None) -> NeighborResult:
    """The ``k`` nearest instances of one instance (``id`` / ``key``) or of a ``vector``.

    The instance itself is excluded unless ``include_self``. ``vector``: array of shape (d,)
    or a ``.npy`` path. ``metric``: of the index to use (default: the newest index of the
    space, else a new l2 one). When ``k`` exceeds what there is, all are returned with a note.
    """
    t0 = time.perf_counter()
    ds = open_cached(ds)
    k = _check_k(k)
    if metric is not None:
        check_choice("--metric", metric, METRICS)
    given = [n for n, v in (("--id", id), ("--key", key), ("--vector", vector)) if v is not None]
    if len(given) != 1:
        raise InputError(f"give exactly one query of --id, --key or --vector, got "
                         f"{given or 'none'}")
    sp = ds.space(space)
    loaded = _index_for(ds, sp.name, metric, index, backend, progress)
    metric = loaded.metric
    notes = []
    if vector is not None:
        q = _query_vector(vector, sp.dim, metric, notes)
        qid = None
        exclude = False
    else:
        qid = resolve_id(ds, id=id, key=key)
        q = np.asarray(sp.vectors[qid], np.float32)
        exclude = not include_self
        if metric == "cosine" and not q.any():
            notes.append(f"instance {qid} is an all-zero vector: under cosine it has no "
                         f"direction, so every instance is at distance 1")
    avail = ds.rows - (1 if exclude else 0)
    if k > avail:
        notes.append(f"k={k} is more than the {avail} {'other ' if exclude else ''}instances; "
                     f"returning all {avail}")
    kk = min(k + (1 if exclude else 0), ds.rows)
    D, I = _search(ds, loaded, q[None, :], kk)
    pairs = [(int(i), float(d)) for i, d in zip(I[0], D[0]) if i >= 0]
    if exclude:
        # Exact duplicates may come before the query itself; drop the query id only.
        pairs = [p for p in pairs if p[0] != qid]
    pairs = pairs[:min(k, avail)]
    if qid is None:
        query = {"vector": True}
    else:
        query = {"id": qid}
        query.update({c: v for c, v in meta_rows(ds, [qid])[0].items() if c != "id"})
    return NeighborResult(sp.name, k, metric, query, _items(ds, pairs, metric), notes,
                          loaded.name, time.perf_counter() - t0)


def neighbors_many(ds, *, ids, space: str | None = None, k: int = 10,
                   include_self: bool = False, metric: str | None = None,
                   index: str | None = None, backend: str = "auto",
                   progress: bool | None = None) -> list[NeighborResult]:
    """:func:`neighbors` of many ids at once (one batched search); one result per id."""
    from .progress import progress_bar

    t0 = time.perf_counter()
    ds = open_cached(ds)
    k = _check_k(k)
    ids = np.asarray(ids)
    if ids.ndim != 1 or (len(ids) and not np.issubdtype(ids.dtype, np.integer)):
        raise InputError(f"ids must be a 1-D list of integers, got {ids.dtype} {ids.shape}")
    bad = ids[(ids < 0) | (ids >= ds.rows)]
    if len(bad):
        raise InputError(f"ids {bad[:5].tolist()} are out of range: dataset {ds.path} has ids "
                         f"0..{ds.rows - 1}")
    sp = ds.space(space)
    loaded = _index_for(ds, sp.name, metric, index, backend, progress)
    metric = loaded.metric
    avail = ds.rows - (0 if include_self else 1)
    kk = min(k + (0 if include_self else 1), ds.rows)
    out = []
    bar = progress_bar(total=len(ids), desc="neighbours", unit="queries", enabled=progress)
    for s in range(0, len(ids), 4096):
        chunk = ids[s:s + 4096].astype(np.int64)
        D, I = _search(ds, loaded, np.asarray(sp.vectors[chunk], np.float32), kk)
        for qid, drow, irow in zip(chunk, D, I):
            qid = int(qid)
            pairs = [(int(i), float(d)) for i, d in zip(irow, drow) if i >= 0]
            if not include_self:
                pairs = [p for p in pairs if p[0] != qid]
            pairs = pairs[:min(k, avail)]
            notes = []
            if k > avail:
                notes.append(f"k={k} is more than the {avail} "
                             f"{'' if include_self else 'other '}instances; returning all {avail}")
            query = {"id": qid}
            query.update({c: v for c, v in meta_rows(ds, [qid])[0].items() if c != "id"})
            out.append(NeighborResult(sp.name, k, metric, query, _items(ds, pairs, metric),
                                      notes, loaded.name))
        bar.update(len(chunk))
    bar.close()
    log.info("%d queries in %.2fs", len(ids), time.perf_counter() - t0)
    return out


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


def drop_self(D: np.ndarray, I: np.ndarray, ids: np.ndarray, k: int):
    """From (m, k+1) results remove each row's own id (else its last entry): (m, k) each."""
    m = len(ids)
    is_self = I == ids[:, None]
    drop = np.where(is_self.any(1), is_self.argmax(1), k)
    keep = np.ones_like(I, bool)
    keep[np.arange(m), drop] = False
    return D[keep].reshape(m, k), I[keep].reshape(m, k)


def _graph_key(sp, k: int, metric: str, method: str, target: float) -> str:
    h = xxhash.xxh3_64()
    h.update(json.dumps({"space": sp.fingerprint, "k": k, "metric": metric, "method": method,
                         "target": target, "format": GRAPH_FORMAT}, sort_keys=True).encode())
    return f"{sp.name}.knn{k}.{metric}.{h.hexdigest()[:12]}"


def _read_graph(ds, name: str, rec: dict, k: int) -> KnnGraph:
    path = ds.path / rec["file"]
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise DatasetError(f"graph {name!r}: {path} cannot be read: {e}") from None
    kk = int(rec["k"])
    if table.num_rows != ds.rows:
        raise DatasetError(f"graph {name!r}: {path} has {table.num_rows} rows, the dataset "
                           f"has {ds.rows}")
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
    import faiss

    from .index import default_nlist, make_index, set_search_params, tune
    from .index import resolve_backend
    from .progress import progress_bar

    t0 = time.perf_counter()
    ds = open_cached(ds)
    check_choice("metric", metric, METRICS)
    check_choice("method", method, GRAPH_METHODS)
    sp = ds.space(space)
    n = sp.rows
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n - 1:
        raise InputError(f"k must be an integer in 1..{n - 1} (N - 1), got {k!r}")
    k = int(k)
    be = resolve_backend(backend)
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
    prep = prepare_space(sp, metric)
    x = prep.x
    params: dict = {}
    if method == "exact":
        if be.name == "torch":
            searcher = be.factory().searcher(x, fmetric)
        else:
            searcher, _ = make_index("flat", sp.dim, metric, n=n)
            searcher = be.factory().to_device(searcher) if be.name == "faiss-gpu" else searcher
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
    bar = progress_bar(total=n, desc=f"knn graph k={k} ({method})", unit="rows",
                       enabled=progress)
    short_rows = 0
    for s in range(0, n, batch_rows):
        q = np.ascontiguousarray(x[s:s + batch_rows])
        D, I = searcher.search(q, k + 1)
        short = (I < 0).any(1)
        if short.any():  # an IVF probe found too few: answer those rows exactly
            short_rows += int(short.sum())
            D[short], I[short] = exact_knn(q[short], x, k + 1, fmetric)
        D, I = drop_self(D, I, np.arange(s, s + len(q)), k)
        ind[s:s + len(q)] = I
        dist[s:s + len(q)] = to_user_distance(D, metric)
        bar.update(len(q))
    bar.close()
    if method != "exact":
        # Recall of the stored graph (self excluded) against exact search, on a sample.
        qids = sample_ids(n, 200, seed=4)
        td, ti = exact_knn(x[qids], x, k + 1, fmetric)
        td, _ = drop_self(td, ti, qids, k)
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

    def write(tmp):
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)

    record = {"space": sp.name, "k": k, "metric": metric, "method": method,
              "backend": be.name, "rows": n, "dim": sp.dim, "recall": round(measured, 4),
              "target_recall": target, "params": params, "seconds": round(seconds, 3),
              "underfilled_rows": short_rows, "zero_vectors": int(len(prep.zero_rows)),
              "space_fingerprint": sp.fingerprint, "format": GRAPH_FORMAT}
    ds.write_artifact("graphs", name, write, record, ".arrow")
    log.info("knn graph %s: %s k=%d over %d rows, recall %.3f, %.1fs", name, method, k, n,
             measured, seconds)
    return KnnGraph(sp.name, k, metric, ind, dist, dict(record, name=name))
