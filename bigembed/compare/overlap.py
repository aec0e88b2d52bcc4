"""Per-point measures between neighbour lists: overlap, gained/lost, neighbourhood majority.

Pure functions of arrays (no I/O): ``indices`` arrays have shape (N, k), self excluded, as
:class:`bigembed.search.KnnGraph` holds them. Work is done in row blocks, so a million rows
never need an (N, k, k) temporary.
"""

from __future__ import annotations

import numpy as np

BLOCK = 65536


def neighbour_overlap(ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Share of each row's neighbours in ``ia`` (N, k) that are also in ``ib`` (N, k'):
    float32 array of shape (N,) in [0, 1] (1: the same neighbourhood)."""
    n, k = ia.shape
    out = np.empty(n, np.float32)
    for s in range(0, n, BLOCK):
        a = ia[s:s + BLOCK]
        b = ib[s:s + BLOCK]
        # One pass per column of B: no (rows, k, k) temporary, about twice as fast.
        hit = np.zeros(a.shape, bool)
        for j in range(b.shape[1]):
            hit |= a == b[:, j:j + 1]
        hit &= a >= 0
        out[s:s + BLOCK] = np.count_nonzero(hit, axis=1) / k
    return out


def gained_lost(ia_row: np.ndarray, ib_row: np.ndarray) -> tuple[list[int], list[int]]:
    """(ids B adds, ids A loses) for one point, each in its space's neighbour order."""
    a = [int(i) for i in ia_row if i >= 0]
    b = [int(i) for i in ib_row if i >= 0]
    sa, sb = set(a), set(b)
    return [i for i in b if i not in sa], [i for i in a if i not in sb]


def neighbour_majority(indices: np.ndarray, codes: np.ndarray, n_codes: int) -> np.ndarray:
    """The most common code among each row's neighbours (ties: the smallest code; rows whose
    neighbours all lack a code, -1): int32 array of shape (N,). ``codes`` (N,) int, -1 for
    missing."""
    n, k = indices.shape
    out = np.empty(n, np.int32)
    width = n_codes + 1
    for s in range(0, n, BLOCK):
        c = codes[indices[s:s + BLOCK]]
        m = len(c)
        # One bincount over (row, code) pairs; missing codes count in a last column.
        flat = (np.arange(m, dtype=np.int64)[:, None] * width + np.where(c < 0, n_codes, c))
        counts = np.bincount(flat.ravel(), minlength=m * width).reshape(m, width)
        counts[:, n_codes] = 0  # missing codes never win
        best = counts.argmax(1).astype(np.int32)
        best[counts.max(1) == 0] = -1
        out[s:s + m] = best
    return out


def neighbour_agreement(indices: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Share of each row's neighbours whose code equals the row's own: float32 (N,)
    (NaN where the row has no code)."""
    n, k = indices.shape
    out = np.empty(n, np.float32)
    for s in range(0, n, BLOCK):
        own = codes[s:s + BLOCK]
        same = codes[indices[s:s + BLOCK]] == own[:, None]
        v = same.sum(1).astype(np.float32) / k
        v[own < 0] = np.nan
        out[s:s + BLOCK] = v
    return out
