"""Exact k-nearest-neighbour search: a torch kernel and its NumPy reference twin.

The torch kernel streams the base in chunks, scores each chunk against a block of queries with
one low-precision matmul (bf16 / fp16, where tensor cores are), keeps a running top-``k * rerank``
of candidates, and re-ranks those candidates in fp32 so the final distances and order are exact
up to fp32 rounding. It runs on any torch device (CUDA in production, CPU in tests).

Conventions (shared with FAISS so callers can swap them):

* ``metric="l2"``: distances are *squared* Euclidean, ascending.
* ``metric="ip"``: scores are inner products, descending (cosine: normalise the inputs first).

No I/O, logging or validation here: :mod:`bigembed.search.index` owns batching, progress and errors.
"""

from __future__ import annotations

import numpy as np

METRICS = ("l2", "ip")


def knn_reference(queries: np.ndarray, base: np.ndarray, k: int, *, metric: str = "l2",
                  block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN in float64 NumPy (the trusted reference).

    queries: array of shape (m, d); base: array of shape (n, d); k <= n.
    Returns ``(dist, idx)``, arrays of shape (m, k): float32 squared L2 (ascending) or inner
    product (descending), and int64 ids into ``base``. Ties break by the smaller id.
    """
    q = np.asarray(queries, np.float64)
    b = np.asarray(base, np.float64)
    bn = (b * b).sum(1)
    out_d = np.empty((len(q), k), np.float32)
    out_i = np.empty((len(q), k), np.int64)
    for s in range(0, len(q), block):
        qq = q[s:s + block]
        ip = qq @ b.T
        if metric == "l2":
            key = (qq * qq).sum(1)[:, None] - 2.0 * ip + bn[None, :]
            key = np.maximum(key, 0.0)
        else:
            key = -ip
        # Stable sort on the key gives smaller ids first among ties.
        order = np.argsort(key, axis=1, kind="stable")[:, :k]
        vals = np.take_along_axis(key, order, 1)
        out_i[s:s + block] = order
        out_d[s:s + block] = vals if metric == "l2" else -vals
    return out_d, out_i


def knn_torch(queries, base, k: int, *, metric: str = "l2", compute_dtype=None,
              base_lowp=None, base_sqnorm=None, query_block: int = 4096,
              base_block: int = 131072, rerank: int = 4):
    """Exact kNN with a low-precision chunked matmul, running top-k and an fp32 re-rank.

    queries: float32 tensor of shape (m, d); base: float32 tensor of shape (n, d), same device.
    ``base_lowp`` / ``base_sqnorm`` (the base in ``compute_dtype`` and its fp32 squared norms,
    shape (n,)) may be passed in when the same base is searched repeatedly.
    ``rerank``: candidates kept per query are ``min(n, k * rerank + 8)``; low-precision
    scores only have to put the true neighbours among them, the fp32 pass orders them.
    Returns ``(dist, idx)`` tensors of shape (m, k): float32 and int64, FAISS conventions.
    """
    import torch

    n, d = base.shape
    m = queries.shape[0]
    dev = base.device
    if compute_dtype is None:
        compute_dtype = torch.bfloat16
    if base_lowp is None:
        base_lowp = base.to(compute_dtype)
    if metric == "l2" and base_sqnorm is None:
        base_sqnorm = (base * base).sum(1)
    kc = int(min(n, k * rerank + 8))
    out_d = torch.empty((m, k), dtype=torch.float32, device=dev)
    out_i = torch.empty((m, k), dtype=torch.int64, device=dev)
    for qs in range(0, m, query_block):
        q = queries[qs:qs + query_block]
        ql = q.to(compute_dtype)
        best_s = None  # (b, kc) smaller-is-better scores
        best_i = None
        for bs in range(0, n, base_block):
            bl = base_lowp[bs:bs + base_block]
            # Scores in fp32 from a low-precision product: the ranking key only.
            s = (ql @ bl.T).float()
            if metric == "l2":
                # ||q||^2 is constant per query, so ||b||^2 - 2 q.b ranks like the L2 distance
                # (in place: this block is the largest buffer the kernel holds).
                s.mul_(-2.0).add_(base_sqnorm[bs:bs + base_block][None, :])
            else:
                s.neg_()
            take = min(kc, s.shape[1])
            cs, ci = torch.topk(s, take, dim=1, largest=False, sorted=False)
            ci = ci + bs
            if best_s is None:
                best_s, best_i = cs, ci
            else:
                both_s = torch.cat([best_s, cs], 1)
                both_i = torch.cat([best_i, ci], 1)
                keep = min(kc, both_s.shape[1])
                best_s, pos = torch.topk(both_s, keep, dim=1, largest=False, sorted=False)
                best_i = torch.gather(both_i, 1, pos)
        # fp32 re-rank of the candidates.
        cand = base[best_i]  # (b, kc, d)
        if metric == "l2":
            diff = cand - q[:, None, :]
            exact = (diff * diff).sum(2)
        else:
            exact = -(cand * q[:, None, :]).sum(2)
        # Ties break by the smaller id, like the reference: sort by id first, then stably.
        id_order = torch.argsort(best_i, dim=1)
        best_i = torch.gather(best_i, 1, id_order)
        exact = torch.gather(exact, 1, id_order)
        order = torch.sort(exact, dim=1, stable=True).indices[:, :k]
        dd = torch.gather(exact, 1, order)
        out_d[qs:qs + len(q)] = dd if metric == "l2" else -dd
        out_i[qs:qs + len(q)] = torch.gather(best_i, 1, order)
    return out_d, out_i
