"""How faithful a 2-D layout is to the high-dimensional space it pictures.

- :func:`knn_preservation`: per point, the fraction of its k high-dimensional neighbours that
  are also among its k nearest in 2-D. Stored as a layout column, so the map can be coloured
  by it and a researcher sees *where* the picture misleads.
- :func:`trustworthiness_continuity`: the global measures of Venna & Kaski on a seeded sample
  (exact on the sample: full rank matrices of at most ``sample`` points).
  Trustworthiness penalises 2-D neighbours that are far apart in the space (false
  neighbours); continuity penalises true neighbours torn apart in 2-D.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..search.exact import drop_self, exact_neighbors, overlap


def low_knn(xy: np.ndarray, k: int) -> np.ndarray:
    """Exact k nearest other points in 2-D: array of shape (N, k) int64, self excluded.

    ``xy`` is an array of shape (N, 2); ``k`` must be at most N - 1.
    """
    from scipy.spatial import cKDTree

    xy = np.asarray(xy, dtype=np.float64)
    n = len(xy)
    if k < 1 or n < 2:
        return np.empty((n, 0), np.int64)
    k = min(k, n - 1)
    _, idx = cKDTree(xy).query(xy, k=k + 1, workers=-1)
    return drop_self(None, np.asarray(idx, np.int64).reshape(n, k + 1), np.arange(n), k)[1]


def knn_preservation(high_indices: np.ndarray, xy: np.ndarray, *,
                     batch_rows: int = 65536) -> np.ndarray:
    """Per point, the share of its k high-dimensional neighbours among its k nearest in 2-D.

    ``high_indices``: array of shape (N, k) int64, self excluded (e.g. ``KnnGraph.indices``);
    ``xy``: array of shape (N, 2). Returns an array of shape (N,) float32 in [0, 1]; with no
    neighbours to keep (N = 1 or k = 0) every point scores 1.
    """
    high = np.asarray(high_indices)
    xy = np.asarray(xy)
    if high.ndim != 2 or xy.ndim != 2 or xy.shape[1] != 2 or len(high) != len(xy):
        raise InputError(f"knn_preservation needs high_indices (N, k) and xy (N, 2); got "
                         f"{high.shape} and {xy.shape}")
    n, k = high.shape
    k = min(k, max(n - 1, 0))
    if k == 0:
        return np.ones(n, np.float32)
    high = high[:, :k]
    low = low_knn(xy, k)
    out = np.empty(n, np.float32)
    for s in range(0, n, batch_rows):
        h = high[s:s + batch_rows]
        lo = low[s:s + batch_rows]
        # (b, k, k) comparison: k is small (15-90), so this beats any set structure.
        hit = (h[:, :, None] == lo[:, None, :]).any(2).sum(1)
        out[s:s + len(h)] = hit / k
    return out


def _rank_matrix(x: np.ndarray, metric: str) -> np.ndarray:
    """ranks[i, j] = position of j in i's neighbour order (self 0, nearest other 1)."""
    x = np.asarray(x, dtype=np.float64)
    if metric == "cosine":
        nrm = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(nrm > 0, nrm, 1.0)
        d = 1.0 - x @ x.T
    else:
        sq = (x * x).sum(1)
        d = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    np.fill_diagonal(d, -np.inf)  # self first, even among duplicates
    order = np.argsort(d, axis=1, kind="stable")
    ranks = np.empty_like(order)
    rows = np.arange(len(x))[:, None]
    ranks[rows, order] = np.arange(len(x))[None, :]
    return ranks


def _trust(rank_high: np.ndarray, rank_low: np.ndarray, k: int) -> float:
    """Venna & Kaski trustworthiness with neighbour sets from ``rank_low``, ranks from high."""
    n = len(rank_high)
    # Points in the low-dim k-neighbourhood (ranks 1..k) that are not in the high-dim one.
    intruders = (rank_low >= 1) & (rank_low <= k) & (rank_high > k)
    penalty = np.where(intruders, rank_high - k, 0).sum()
    return float(1.0 - 2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0)) * penalty)


def trustworthiness_continuity(vectors: np.ndarray, xy: np.ndarray, *, k: int = 15,
                               sample: int = 2000, seed: int = 0,
                               metric: str = "l2") -> dict:
    """Trustworthiness and continuity of a layout, exact on a seeded sample of rows.

    ``vectors``: array of shape (N, d); ``xy``: array of shape (N, 2). Returns ``{"k",
    "sample", "trustworthiness", "continuity"}``; the measures are None when the sample is
    too small for any k (k must be below sample / 2).
    """
    n = len(xy)
    if len(vectors) != n:
        raise InputError(f"vectors has {len(vectors)} rows, xy has {n}")
    m = min(n, sample)
    ids = np.arange(n) if m == n else np.sort(
        np.random.default_rng(seed).choice(n, size=m, replace=False))
    kk = min(k, (m - 1) // 2)
    # The normaliser 2 / (n k (2n - 3k - 1)) needs 2n - 3k - 1 > 0.
    while kk >= 1 and 2 * m - 3 * kk - 1 <= 0:
        kk -= 1
    if kk < 1:
        return {"k": k, "sample": m, "trustworthiness": None, "continuity": None}
    rh = _rank_matrix(np.asarray(vectors[ids], dtype=np.float64), metric)
    rl = _rank_matrix(np.asarray(xy[ids], dtype=np.float64), "l2")
    return {"k": kk, "sample": m, "trustworthiness": round(_trust(rh, rl, kk), 5),
            "continuity": round(_trust(rl, rh, kk), 5)}


def layout_quality(high_indices: np.ndarray, xy: np.ndarray, vectors: np.ndarray, *,
                   k: int = 15, sample: int = 2000, seed: int = 0,
                   metric: str = "l2") -> tuple[np.ndarray, dict]:
    """Per-point kNN preservation (N,) float32 and the record's ``quality`` dict."""
    k = min(k, high_indices.shape[1]) if high_indices.ndim == 2 else 0
    per_point = knn_preservation(high_indices[:, :k], xy)
    tc = trustworthiness_continuity(vectors, xy, k=k, sample=sample, seed=seed, metric=metric)
    return per_point, {"knn_preservation": round(float(per_point.mean()), 5) if len(per_point)
                       else None, "trustworthiness": tc["trustworthiness"],
                       "continuity": tc["continuity"], "k": k, "sample": tc["sample"]}


def sample_quality(rows: np.ndarray, high_indices: np.ndarray, xy: np.ndarray,
                   vectors: np.ndarray, *, k: int = 15, sample: int = 2000, seed: int = 0,
                   metric: str = "l2") -> dict:
    """The ``quality`` record of :func:`layout_quality` with kNN preservation estimated on
    ``rows`` only (no per-point column): for large layouts without a kNN graph.

    ``rows``: (m,) sampled row ids; ``high_indices``: (m, k + 1) their exact neighbours
    among all N rows, which may include the row itself; ``xy``: (N, 2).
    """
    from scipy.spatial import cKDTree

    rows = np.asarray(rows, np.int64)
    xy = np.asarray(xy, dtype=np.float64)
    high = drop_self(None, np.asarray(high_indices, np.int64), rows, k)[1]
    _, low = cKDTree(xy).query(xy[rows], k=k + 1, workers=-1)
    low = drop_self(None, np.asarray(low, np.int64).reshape(len(rows), k + 1), rows, k)[1]
    hit = (high[:, :, None] == low[:, None, :]).any(2).sum(1) / k
    tc = trustworthiness_continuity(vectors, xy, k=k, sample=sample, seed=seed, metric=metric)
    return {"knn_preservation": round(float(hit.mean()), 5) if len(hit) else None,
            "trustworthiness": tc["trustworthiness"], "continuity": tc["continuity"],
            "k": k, "sample": tc["sample"], "per_point": False,
            "knn_preservation_sample": int(len(rows))}


def sampled_knn_preservation(x: np.ndarray, xy: np.ndarray, queries: np.ndarray, k: int,
                             truth: np.ndarray | None = None) -> float:
    """Mean kNN preservation over the rows ``queries`` (s,): the share of each one's k exact
    L2 neighbours in ``x`` (N, d) that are among its k nearest in ``xy`` (N, 2). ``truth``
    (s, k), the exact neighbours, may be given (benchmarks reuse them across layouts)."""
    if truth is None:
        truth = exact_neighbors(x, queries, k)
    low = exact_neighbors(np.asarray(xy, np.float32), queries, k)
    return overlap(low, truth)


__all__ = ["knn_preservation", "sample_quality", "sampled_knn_preservation", "low_knn",
           "trustworthiness_continuity", "layout_quality"]
