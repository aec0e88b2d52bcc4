"""Quality beside speed: recall of neighbour lists and kNN preservation of layouts, on a
seeded sample of query rows against exact FAISS search (cheap at any N: S queries x N).

Functions here take arrays and return numbers; the stages decide what to compare.
"""

from __future__ import annotations

import numpy as np


def sample_ids(n: int, size: int, seed: int) -> np.ndarray:
    """A sorted seeded sample of at most ``size`` ids out of ``n``: array of shape (s,)."""
    if n <= size:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def exact_neighbors(x: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact L2 neighbours of rows ``queries`` of ``x`` (N, d), self excluded: (s, k) int64."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    kk = min(k + 1, len(x))
    _, idx = index.search(x[queries], kk)
    return _drop_self(idx, queries, k)


def _drop_self(idx: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    # Drop the query itself; when duplicates push it out of the list, drop the last entry.
    out = np.empty((len(queries), min(k, idx.shape[1] - 1)), np.int64)
    for r, (row, q) in enumerate(zip(idx, queries)):
        hit = np.flatnonzero(row == q)
        keep = np.delete(row, hit[0] if len(hit) else len(row) - 1)
        out[r] = keep[: out.shape[1]]
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each ``truth`` row (s, k) present in the ``found`` row (s, >=1)."""
    if len(truth) == 0:
        return float("nan")
    hits = [len(np.intersect1d(f[f >= 0], t)) / max(1, len(t)) for f, t in zip(found, truth)]
    return float(np.mean(hits))


def knn_preservation(x: np.ndarray, xy: np.ndarray, queries: np.ndarray, k: int,
                     truth: np.ndarray | None = None) -> float:
    """Mean fraction of the k high-dimensional neighbours of each query row that are also
    among its k nearest in the 2-D layout ``xy`` (N, 2); ``truth`` (s, k) may be given."""
    if truth is None:
        truth = exact_neighbors(x, queries, k)
    low = exact_neighbors(np.asarray(xy, np.float32), queries, k)
    return recall(low, truth)
