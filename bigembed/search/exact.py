"""Exact search and the helpers every stage shares, in one place.

Exact k nearest neighbours by FAISS brute force, the query itself dropped from its own list
(one rule for ties and duplicates), seeded row samples, finite checks, recall measures. The
index, graph, layout-quality and benchmark code all call these, so they cannot disagree.

Conventions: FAISS scores (squared L2 ascending, inner product descending); cosine is inner
product on vectors normalised once (:func:`normalise`); :func:`to_user_distance` turns scores
into the distances users see.
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import InputError

log = logging.getLogger(__name__)


def check_finite(x: np.ndarray, what: str, *, hint: str = "clean them first",
                 block: int = 1 << 16) -> None:
    """Raise :class:`InputError` when rows of ``x`` (n, d) hold NaN or infinity, naming how
    many and the first ids (scanned in blocks: ``x`` may be a memory-mapped space)."""
    bad = 0
    first: list[int] = []
    for s in range(0, len(x), block):
        rows = ~np.isfinite(x[s:s + block]).all(1)
        if rows.any():
            bad += int(rows.sum())
            first += (s + np.flatnonzero(rows)[:5 - len(first)]).tolist()
    if bad:
        ids = ", ".join(str(i) for i in first) + (" ..." if bad > len(first) else "")
        raise InputError(f"{what} has {bad} rows with NaN or infinite values (first: id "
                         f"{ids}); {hint}")


def normalise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``x`` (m, d) scaled to unit length; all-zero rows stay zero (never NaN).

    Returns ``(normalised float32 copy, ids of the zero rows)``.
    """
    x = np.array(x, dtype=np.float32, copy=True)
    norms = np.linalg.norm(x, axis=1)
    zero = norms == 0
    x[~zero] /= norms[~zero, None]
    return x, np.flatnonzero(zero)


def faiss_metric(metric: str):
    import faiss

    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def to_user_distance(d: np.ndarray, metric: str) -> np.ndarray:
    """FAISS scores to user distances: L2 (not squared), 1 - cos, or -inner product."""
    d = np.asarray(d, np.float64)
    if metric == "l2":
        return np.sqrt(np.maximum(d, 0.0))
    if metric == "cosine":
        return np.clip(1.0 - d, 0.0, 2.0)
    return -d


def sample_ids(n: int, m: int, seed: int = 0) -> np.ndarray:
    """A sorted seeded sample of at most ``m`` ids out of ``n``: int64 array of shape (<=m,)."""
    if n <= m:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False)).astype(np.int64)


def exact_knn(q: np.ndarray, x: np.ndarray, k: int, metric: str):
    """Exact (D, I) of queries ``q`` (m, d) over ``x`` (n, d) by FAISS brute force."""
    import faiss

    return faiss.knn(np.ascontiguousarray(q, np.float32), x, int(k), metric=faiss_metric(metric))


def per_query_recall(found_d, found_i, true_d, metric: str) -> np.ndarray:
    """Recall@k of each query, counting ties: a found id counts when it is as near as the true
    k-th. found_*: arrays of shape (m, k) from the index; true_d: exact scores, shape (m, k).
    Returns an array of shape (m,)."""
    k = true_d.shape[1]
    kth = true_d[:, k - 1:k].astype(np.float64)
    fd = found_d[:, :k].astype(np.float64)
    tol = 1e-5 * np.maximum(1.0, np.abs(kth))
    ok = (fd <= kth + tol) if metric == "l2" else (fd >= kth - tol)
    ok &= found_i[:, :k] >= 0
    return ok.mean(axis=1)


def recall(found_d: np.ndarray, found_i: np.ndarray, true_d: np.ndarray, metric: str) -> float:
    """Mean recall@k over the queries, ties counted (:func:`per_query_recall`)."""
    return float(per_query_recall(found_d, found_i, true_d, metric).mean())


def drop_self(D: np.ndarray | None, I: np.ndarray, ids: np.ndarray, k: int):
    """From results of shape (m, >= k+1) remove each row's own id: ``(D, I)`` of shape (m, k).

    With coincident points the query need not come first, or at all: then the last entry of
    the k+1 is dropped. ``D`` may be None (then None comes back).
    """
    I = np.asarray(I)[:, :k + 1]
    m = len(ids)
    is_self = I == np.asarray(ids)[:, None]
    drop = np.where(is_self.any(1), is_self.argmax(1), I.shape[1] - 1)
    keep = np.ones_like(I, bool)
    keep[np.arange(m), drop] = False
    kk = I.shape[1] - 1
    out_i = I[keep].reshape(m, kk)
    if D is None:
        return None, out_i
    return np.asarray(D)[:, :k + 1][keep].reshape(m, kk), out_i


def exact_neighbors(x: np.ndarray, queries: np.ndarray, k: int, metric: str = "l2") -> np.ndarray:
    """Exact neighbours of rows ``queries`` of ``x`` (N, d), self excluded: (s, min(k, N-1))."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if metric == "cosine":
        x, _ = normalise(x)
    _, idx = exact_knn(x[queries], x, min(k + 1, len(x)), metric)
    return drop_self(None, idx, queries, k)[1]


def overlap(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each ``truth`` row (s, k) present in the ``found`` row (s, >=1), by id
    (FAISS's -1 never counts). Unlike :func:`recall` it ignores distances, so ties count as
    misses: the measure for neighbour lists from different spaces (a layout against its
    vectors)."""
    if len(truth) == 0:
        return float("nan")
    hits = [len(np.intersect1d(f[f >= 0], t)) / max(1, len(t)) for f, t in zip(found, truth)]
    return float(np.mean(hits))
