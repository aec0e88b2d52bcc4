"""Nearest neighbours in the high-dimensional space of a dataset (exact FAISS search).

:func:`neighbors` answers "which instances are closest to this one?" for the CLI, the HTTP
endpoint and the map alike, returning ids, distances and each neighbour's metadata.
Distances are Euclidean (L2, not squared).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from .dataset import Dataset
from .errors import InputError

log = logging.getLogger(__name__)


@dataclass
class NeighborResult:
    """Neighbours of one query: ``neighbors`` is a list of dicts with id, distance, metadata."""

    space: str
    k: int
    metric: str
    query: dict
    neighbors: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {"space": self.space, "k": self.k, "metric": self.metric, "query": self.query,
                "neighbors": self.neighbors, "notes": self.notes}


def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if v is None or isinstance(v, (int, str, bool)):
        return v
    try:
        import pandas as pd

        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return str(v)


def meta_rows(ds: Dataset, ids) -> list[dict]:
    """Metadata of ``ids`` as JSON-able dicts (id first)."""
    meta = ds.meta
    rows = meta.iloc[np.asarray(ids, dtype=np.int64)]
    return [{c: _jsonable(v) for c, v in r.items()} for r in rows.to_dict("records")]


def resolve_id(ds: Dataset, *, id=None, key=None) -> int:
    """The row id named by ``id`` or ``key``; raises :class:`InputError` if there is none."""
    if id is not None:
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
    raise InputError("give a query: --id or --key")


def neighbors(ds, *, space: str | None = None, id=None, key=None, k: int = 10,
              include_self: bool = False) -> NeighborResult:
    """The ``k`` nearest instances of one instance (itself excluded unless ``include_self``)."""
    import faiss

    if not isinstance(ds, Dataset):
        ds = Dataset.open(ds)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"-k must be an integer >= 1, got {k!r}")
    sp = ds.space(space)
    qid = resolve_id(ds, id=id, key=key)
    notes = []
    avail = ds.rows if include_self else ds.rows - 1
    if k > avail:
        notes.append(f"k={k} is more than the {avail} other instances; returning all {avail}")
    kk = min(k + (0 if include_self else 1), ds.rows)
    x = np.ascontiguousarray(sp.vectors, dtype=np.float32)
    index = faiss.IndexFlatL2(sp.dim)
    index.add(x)
    dist, idx = index.search(x[qid:qid + 1], kk)
    pairs = [(int(i), float(d)) for i, d in zip(idx[0], dist[0]) if i >= 0]
    if not include_self:
        # Exact duplicates may come before the query itself; drop the query id only.
        pairs = [p for p in pairs if p[0] != qid]
    pairs = pairs[:min(k, avail)]
    metas = meta_rows(ds, [p[0] for p in pairs]) if pairs else []
    out = []
    for (i, d2), m in zip(pairs, metas):
        item = {"id": i, "distance": math.sqrt(max(d2, 0.0))}
        item.update({c: v for c, v in m.items() if c != "id"})
        out.append(item)
    query = {"id": qid}
    query.update({c: v for c, v in meta_rows(ds, [qid])[0].items() if c != "id"})
    return NeighborResult(sp.name, k, "l2", query, out, notes)


@dataclass
class KnnGraph:
    """The k nearest other instances of every instance of a space.

    ``indices``: array of shape (N, k) int64, self excluded, nearest first;
    ``distances``: array of shape (N, k) float32 (L2, not squared; cosine: 1 - cos).
    """

    space: str
    k: int
    metric: str
    indices: np.ndarray
    distances: np.ndarray
    record: dict = field(default_factory=dict)


def knn_graph(ds, *, space: str | None = None, k: int = 15, metric: str = "l2",
              batch_rows: int = 16384, progress: bool | None = None) -> KnnGraph:
    """Exact kNN graph of ``space`` with FAISS (batched queries); self excluded.

    Raises :class:`InputError` when ``k`` is not in 1..N-1.
    """
    import faiss

    from .progress import progress_bar

    if not isinstance(ds, Dataset):
        ds = Dataset.open(ds)
    if metric not in ("l2", "cosine"):
        raise InputError(f"metric must be 'l2' or 'cosine', got {metric!r}")
    sp = ds.space(space)
    n = sp.rows
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n - 1:
        raise InputError(f"k must be an integer in 1..{n - 1} (N - 1), got {k!r}")
    sp.ensure_verified()
    x = np.ascontiguousarray(sp.vectors, dtype=np.float32)
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
        index = faiss.IndexFlatIP(sp.dim)
    else:
        index = faiss.IndexFlatL2(sp.dim)
    index.add(x)
    ind = np.empty((n, k), np.int64)
    dist = np.empty((n, k), np.float32)
    bar = progress_bar(total=n, desc=f"knn graph k={k}", unit="rows", enabled=progress)
    for s in range(0, n, batch_rows):
        q = x[s:s + batch_rows]
        d, i = index.search(q, k + 1)
        ids = np.arange(s, s + len(q))[:, None]
        # Drop self; if self is not among the k+1 (duplicates), drop the last.
        is_self = i == ids
        drop = np.where(is_self.any(1), is_self.argmax(1), k)
        keep = np.ones_like(i, bool)
        keep[np.arange(len(q)), drop] = False
        i = i[keep].reshape(len(q), k)
        d = d[keep].reshape(len(q), k)
        if metric == "cosine":
            d = 1.0 - d
        else:
            d = np.sqrt(np.maximum(d, 0))
        ind[s:s + len(q)] = i
        dist[s:s + len(q)] = d
        bar.update(len(q))
    bar.close()
    return KnnGraph(sp.name, k, metric, ind, dist)
