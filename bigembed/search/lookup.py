"""Nearest neighbours in the high-dimensional space of a dataset.

:func:`neighbors` answers "which instances are closest to this one (or to this vector)?" for
the CLI, the HTTP endpoint and the map alike, returning ids, distances and each neighbour's
metadata. It searches the stored FAISS index of the space (building one when there is none,
see :mod:`bigembed.search.index`); the opened dataset and the loaded index are cached in-process, so
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
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..dataset.reader import Dataset, open_cached
from ..errors import InputError, check_choice
from .exact import exact_knn, normalise, to_user_distance
from .index import METRICS, build_index, find_index, load_index, prepare_space

log = logging.getLogger(__name__)


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
        # column by column (a billion-row label without the rest); ``id`` is the row's
        # position by the dataset contract, so it is not read at all
        cols = {c: ds.meta_column(c) for c in ds.meta_columns() if c != "id"}
        _META_COLS[ds] = cols
    return cols


def meta_rows(ds: Dataset, ids) -> list[dict]:
    """Metadata of ``ids`` as JSON-able dicts (id first)."""
    cols = _meta_columns(ds)
    ids = np.asarray(ids, dtype=np.int64)
    picked = {"id": ids, **{c: a[ids] for c, a in cols.items()}}
    return [{c: _jsonable(picked[c][j]) for c in picked} for j in range(len(ids))]


def resolve_id(ds: Dataset, *, id=None, key=None, notes: list | None = None) -> int:
    """The row id named by ``id`` or ``key``; raises :class:`InputError` if there is none.

    A key several instances share (a dataset ingested with ``allow_duplicate_keys``) resolves
    to the first of them, and a note saying how many matched and which was used is appended
    to ``notes`` (and logged)."""
    if id is not None:
        if isinstance(id, bool):
            raise InputError(f"id must be an integer, got {id!r}")
        try:
            i = int(id)
        except (TypeError, ValueError):
            raise InputError(f"id must be an integer, got {id!r}") from None
        if not 0 <= i < ds.rows:
            raise InputError(f"id {i} is out of range: dataset {ds.path} has ids 0..{ds.rows - 1}")
        return i
    if key is not None:
        meta = ds.meta
        if "key" not in meta.columns:
            raise InputError(f"key: dataset {ds.path} has no key column; use --id")
        hits = np.flatnonzero(meta["key"].astype(str).to_numpy() == str(key))
        if len(hits) == 0:
            raise InputError(f"key: no instance of {ds.path} has key {key!r}")
        if len(hits) > 1:
            shown = ", ".join(map(str, hits[:10].tolist())) + (", ..." if len(hits) > 10 else "")
            msg = (f"key {key!r} matches {len(hits)} instances (ids {shown}); using the "
                   f"first, id {int(hits[0])}")
            log.warning("%s", msg)
            if notes is not None:
                notes.append(msg)
        return int(hits[0])
    raise InputError("give a query: --id, --key or --vector")


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


# --------------------------------------------------------------------------------------------
# Reading queries from files
# --------------------------------------------------------------------------------------------


def read_vector_file(path) -> np.ndarray:
    """A query vector from a ``.npy`` file: shape (d,) or (1, d)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"vector: {path} does not exist")
    try:
        v = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"vector: {path} is not a readable .npy array: {e}") from None
    return v


def read_ids_file(path) -> np.ndarray:
    """Query ids from a file: ``.npy`` integer array, a JSON list, or text (one id a line,
    blank lines and ``#`` comments ignored)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"ids_file: {path} does not exist")
    if path.suffix == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InputError(f"ids_file: {path} is not a readable .npy array: {e}") from None
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
            raise InputError(f"ids_file: {path} must hold a 1-D integer array, got "
                             f"{a.dtype} of shape {a.shape}")
        return a.astype(np.int64)
    text = path.read_text(errors="replace")
    if text.lstrip().startswith("["):
        try:
            vals = json.loads(text)
        except ValueError as e:
            raise InputError(f"ids_file: {path} is not valid JSON: {e}") from None
        out = []
        for j, v in enumerate(vals):
            if isinstance(v, bool) or not isinstance(v, int):
                raise InputError(f"ids_file: {path} item {j} is {v!r}, expected an integer id")
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
            raise InputError(f"ids_file: {path} line {lineno} is {s!r}, expected an integer "
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
        raise InputError(f"vector must be numbers, got {type(vector).__name__}") from None
    if v.ndim == 2 and v.shape[0] == 1:
        v = v[0]
    if v.ndim != 1 or v.shape[0] != dim:
        raise InputError(f"vector has shape {v.shape}, expected ({dim},): the space's "
                         f"dimension is {dim}")
    if not np.isfinite(v).all():
        raise InputError(f"vector has {int((~np.isfinite(v)).sum())} NaN or infinite values")
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
        check_choice("metric", metric, METRICS)
    given = [n for n, v in (("id", id), ("key", key), ("vector", vector)) if v is not None]
    if len(given) != 1:
        raise InputError(f"give exactly one query: id, key or vector; got "
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
        qid = resolve_id(ds, id=id, key=key, notes=notes)
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
    from ..progress import progress_bar

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
