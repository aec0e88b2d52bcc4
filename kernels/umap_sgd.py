"""UMAP's fuzzy graph and layout optimisation (SGD) on the CPU, in numba, written for speed.

The model and the schedule are umap-learn's (McInnes et al., ``umap/layouts.py``), so a layout
means the same thing: per-row ``rho`` and ``sigma`` by bisection, the fuzzy union
``P + P^T - P * P^T``, edges lighter than ``max / n_epochs`` dropped, each edge sampled every
``max_w / w`` epochs, ``negative_sample_rate`` repulsive samples per sample (owed samples
counted as umap-learn counts them), attraction ``-2ab d^(2(b-1)) / (1 + a d^2b)``, repulsion
``2 gamma b / ((0.001 + d^2)(1 + a d^2b))``, each gradient component clipped to 4, the learning
rate decaying linearly, heads and tails both moved by an edge's attraction. What differs is how
the work is laid out:

- float32 throughout (umap-learn evaluates ``pow`` in float64), one ``exp(b * log(d2))`` per
  pair instead of two ``pow`` calls for the attraction;
- vertices are renumbered by the Z-order of their current 2-D position (refreshed every
  ``reorder_every`` epochs), and the edges kept grouped by head vertex (CSR) in that order, so
  an edge's tail (a near neighbour in the layout) is usually near its head in memory, and each
  head's position stays in registers while its edges are processed;
- the vertices are cut into ``N_CHUNKS`` chunks of about equal edge counts, processed in
  parallel over all cores (lock-free, as umap-learn's parallel epoch is: a vertex updated by
  two threads at once may lose one of the updates);
- negative samples come from a per-chunk xorshift generator with a multiply-shift range
  reduction (no modulo, no per-vertex state array).

With ``parallel=False`` the result is a function of the seed alone (the chunks are fixed, each
with its own generator), so a seeded small layout is reproducible.

No I/O, logging or validation here: :mod:`bigembed.reduce.backends` owns that.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

#: umap-learn's constants
SMOOTH_K_TOLERANCE = 1e-5
MIN_K_DIST_SCALE = 1e-3
#: chunks of vertices per epoch (fixed, so the random streams do not depend on the cores)
N_CHUNKS = 256
#: negative samples of an edge drawn (and their rows prefetched) before any is used
NEG_AHEAD = 16

_OPTS = dict(cache=True, nogil=True)
#: the largest float64, umap-learn's "not bounded yet" (fastmath would fold away inf tests)
_FLOATMAX = 1.7976931348623157e308


# -- the fuzzy graph ------------------------------------------------------------------------

@numba.njit(**_OPTS)
def _smooth_knn(dist, target, mean_all, r0, r1, sigma, rho):
    """umap-learn's ``smooth_knn_dist`` (local_connectivity 1, bandwidth 1) for rows
    ``r0:r1`` of ``dist`` of shape (n, k) whose first column is the point itself at distance
    0, into ``sigma`` and ``rho`` (float32). ``mean_all``: the mean of all of ``dist``."""
    k = dist.shape[1]
    for i in range(r0, r1):
        # rho: the nearest positive distance
        r = np.float32(0.0)
        for j in range(k):
            if dist[i, j] > 0:
                r = dist[i, j]
                break
        rho[i] = r
        lo = 0.0
        hi = _FLOATMAX
        mid = 1.0
        for _ in range(64):
            psum = 0.0
            for j in range(1, k):
                d = dist[i, j] - r
                if d > 0:
                    psum += math.exp(-(d / mid))
                else:
                    psum += 1.0
            if abs(psum - target) < SMOOTH_K_TOLERANCE:
                break
            if psum > target:
                hi = mid
                mid = (lo + hi) / 2.0
            else:
                lo = mid
                if hi >= _FLOATMAX:
                    mid *= 2
                else:
                    mid = (lo + hi) / 2.0
        s = np.float32(mid)
        if r > 0.0:
            m = np.float32(0.0)
            for j in range(k):
                m += dist[i, j]
            m = m / k
            if s < MIN_K_DIST_SCALE * m:
                s = np.float32(MIN_K_DIST_SCALE * m)
        elif s < MIN_K_DIST_SCALE * mean_all:
            s = np.float32(MIN_K_DIST_SCALE * mean_all)
        sigma[i] = s


@numba.njit(**_OPTS)
def _memberships(ind, dist, sigma, rho, r0, r1, vals):
    k = ind.shape[1]
    for i in range(r0, r1):
        for j in range(k):
            c = ind[i, j]
            if c < 0 or c == i:
                continue
            d = dist[i, j] - rho[i]
            if d <= 0.0 or sigma[i] == 0.0:
                vals[i, j] = 1.0
            else:
                vals[i, j] = math.exp(-(d / sigma[i]))


def fuzzy_graph(indices, distances, *, n_neighbors: int, threads: int | None = None):
    """UMAP's symmetric fuzzy graph, as umap-learn's ``fuzzy_simplicial_set`` builds it.

    ``indices``, ``distances``: arrays of shape (n, n_neighbors) whose first column is the
    point itself at distance 0 (umap-learn's convention). Returns a ``scipy.sparse`` CSR
    matrix (n, n) of float32 memberships, symmetric, no explicit zeros, no diagonal.
    """
    import scipy.sparse as sp

    ind = np.ascontiguousarray(indices, dtype=np.int64)
    dist = np.ascontiguousarray(distances, dtype=np.float32)
    n, k = ind.shape
    sigma = np.zeros(n, np.float32)
    rho = np.zeros(n, np.float32)
    vals = np.zeros((n, k), np.float32)
    mean_all = float(dist.mean(dtype=np.float32)) if n * k else 0.0
    target = float(np.log2(n_neighbors))
    ranges = _split(n, _threads(threads))
    _in_threads(lambda r: _smooth_knn(dist, target, mean_all, r[0], r[1], sigma, rho), ranges)
    _in_threads(lambda r: _memberships(ind, dist, sigma, rho, r[0], r[1], vals), ranges)
    vals = vals.ravel()
    cols = ind.ravel()
    keep = (cols >= 0) & (vals != 0)
    rows = np.repeat(np.arange(n, dtype=np.int32), k)[keep]
    p = sp.csr_matrix((vals[keep], (rows, cols[keep].astype(np.int32))), shape=(n, n))
    p.sum_duplicates()
    pt = p.T.tocsr()
    u = (p + pt - p.multiply(pt)).tocsr()
    u.eliminate_zeros()
    u.sort_indices()
    return u


# -- the optimiser ---------------------------------------------------------------------------

# -- the gradient coefficients, tabulated ---------------------------------------------------
#
# Both coefficients are functions of d^2 alone (a, b, gamma fixed): tabulated once per layout
# at TABLE_BITS mantissa bits per octave over 2^LO_EXP .. 2^HI_EXP and read by the float's own
# bits (exponent and top mantissa bits give the cell, the rest the linear interpolation), so a
# pair costs two loads and a multiply-add instead of pow() in float64 (relative error < 1e-4;
# outside the range the exact formula is used).

TABLE_BITS = 6
LO_EXP, HI_EXP = -40, 40


@intrinsic
def _f2i(typingctx, x):
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


def coefficient_tables(a: float, b: float, gamma: float) -> np.ndarray:
    """array of shape (2, cells + 1) float32: the attraction coefficient
    ``-2ab d^(2(b-1)) / (1 + a d^2b)`` and the repulsion coefficient
    ``2 gamma b / ((0.001 + d^2)(1 + a d^2b))`` at the cell edges, as functions of d^2."""
    per = 1 << TABLE_BITS
    cells = (HI_EXP - LO_EXP) * per
    i = np.arange(cells + 1, dtype=np.float64)
    d2 = np.exp2(LO_EXP + i // per) * (1.0 + (i % per) / per)
    d2[-1] = 2.0 ** HI_EXP
    pb = d2 ** b
    return np.stack([-2.0 * a * b * pb / d2 / (a * pb + 1.0),
                     2.0 * gamma * b / ((0.001 + d2) * (a * pb + 1.0))]).astype(np.float32)


@numba.njit(inline="always", fastmath=True)
def _coef(tab, row, d2, a, b, gamma):
    bits = np.int64(_f2i(d2))
    cell = (bits >> (23 - TABLE_BITS)) - ((127 + LO_EXP) << TABLE_BITS)
    if cell >= 0 and cell < tab.shape[1] - 1:
        f = np.float32(bits & ((1 << (23 - TABLE_BITS)) - 1)) * np.float32(
            1.0 / (1 << (23 - TABLE_BITS)))
        lo = tab[row, cell]
        return lo + f * (tab[row, cell + 1] - lo)
    pb = math.pow(d2, b)
    if row == 0:
        return np.float32(-2.0) * a * b * pb / d2 / (a * pb + np.float32(1.0))
    return np.float32(2.0) * gamma * b / ((np.float32(0.001) + d2) * (a * pb + np.float32(1.0)))


@intrinsic
def _prefetch_row(typingctx, arr, i):
    """Ask the CPU to start loading row ``i`` of the 2-D array ``arr`` into cache (LLVM's
    ``prefetch``: read, keep in all levels); no effect on the result."""
    if not (isinstance(arr, types.Array) and arr.ndim == 2 and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        idx = context.cast(builder, args[1], sig.args[1], types.intp)
        zero = context.get_constant(types.intp, 0)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [idx, zero],
                                       wraparound=False)
        i8p = ir.PointerType(ir.IntType(8))
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
            "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(arr, i), codegen


@numba.njit(inline="always")
def _clip(v):
    if v > 4.0:
        return np.float32(4.0)
    if v < -4.0:
        return np.float32(-4.0)
    return v


@numba.njit(inline="always")
def _xorshift32(s):
    """The next state of a xorshift32 generator (32-bit state held in an int64)."""
    s ^= (s << 13) & 0xFFFFFFFF
    s ^= s >> 17
    s ^= (s << 5) & 0xFFFFFFFF
    return s


@numba.njit(inline="always")
def _mix32(h):
    """murmur3's 32-bit finaliser (on int64 holding 32 bits): a seed for a chunk's stream."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return h


@numba.njit(fastmath=True, **_OPTS)
def _epoch_chunks(tab, y, indptr, tail, eps, nxt, nxt_neg, bounds, chunks, epoch, alpha, a, b,
                  gamma, neg_rate, seed):
    """One epoch over the chunks listed in ``chunks`` (a thread's share; nogil)."""
    for c in chunks:
        _chunk(tab, y, indptr, tail, eps, nxt, nxt_neg, bounds[c], bounds[c + 1], c, epoch, alpha,
               a, b, gamma, neg_rate, seed)


@numba.njit(fastmath=True, **_OPTS)
def _chunk(tab, y, indptr, tail, eps, nxt, nxt_neg, v0, v1, c, epoch, alpha, a, b, gamma, neg_rate,
           seed):
    n = y.shape[0]
    fe = np.float32(epoch)
    al = np.float32(alpha)
    a32 = np.float32(a)
    b32 = np.float32(b)
    g32 = np.float32(gamma)
    rate = np.float32(neg_rate)
    s = _mix32((seed * 0x9E3779B1 + epoch * 0x7FEB352D + c * 0x846CA68B) & 0xFFFFFFFF) | 1
    # an edge's negative samples are drawn before its attraction is applied and their rows
    # prefetched, so the random reads of the layout overlap (the same draws in the same
    # order as drawing each just before use: the result does not change)
    negs = np.empty(NEG_AHEAD, np.int64)
    for v in range(v0, v1):
        e0 = indptr[v]
        e1 = indptr[v + 1]
        yx = y[v, 0]
        yy = y[v, 1]
        moved = False
        for e in range(e0, e1):
            if nxt[e] > fe:
                continue
            moved = True
            eneg = eps[e] / rate
            owed = int((fe - nxt_neg[e]) / eneg)
            ahead = min(max(owed, 0), NEG_AHEAD)
            for j in range(ahead):
                s = _xorshift32(s)
                negs[j] = (s * n) >> 32  # a multiply-shift into [0, n)
                _prefetch_row(y, negs[j])
            k = tail[e]
            ox = y[k, 0]
            oy = y[k, 1]
            dx = yx - ox
            dy = yy - oy
            d2 = dx * dx + dy * dy
            if d2 > 0.0:
                coef = _coef(tab, 0, d2, a32, b32, g32)
                gx = _clip(coef * dx) * al
                gy = _clip(coef * dy) * al
                yx += gx
                yy += gy
                y[k, 0] = ox - gx
                y[k, 1] = oy - gy
            nxt[e] += eps[e]
            if owed <= 0:
                continue
            for j in range(owed):
                if j < ahead:
                    k = negs[j]
                else:  # more owed than drawn ahead (rare): drawn now, in the same order
                    s = _xorshift32(s)
                    k = (s * n) >> 32
                if k == v:
                    continue
                dx = yx - y[k, 0]
                dy = yy - y[k, 1]
                d2 = dx * dx + dy * dy
                if d2 > 0.0:
                    coef = _coef(tab, 1, d2, a32, b32, g32)
                    yx += _clip(coef * dx) * al
                    yy += _clip(coef * dy) * al
            nxt_neg[e] += owed * eneg
        if moved:
            y[v, 0] = yx
            y[v, 1] = yy


def _spread16(v):
    v = v & 0xFFFF
    v = (v | (v << 8)) & 0x00FF00FF
    v = (v | (v << 4)) & 0x0F0F0F0F
    v = (v | (v << 2)) & 0x33333333
    return (v | (v << 1)) & 0x55555555


def zorder(y: np.ndarray) -> np.ndarray:
    """The vertex order (array of shape (n,) int64) that sorts the 2-D positions ``y`` (n, 2)
    by their Z-order (Morton) code, 16 bits per axis over the bounding box."""
    lo, hi = y.min(0), y.max(0)
    scale = np.where(hi > lo, 65535.0 / np.where(hi > lo, hi - lo, 1.0), 0.0)
    q = np.clip((y - lo) * scale, 0, 65535).astype(np.int64)
    return np.argsort(_spread16(q[:, 0]) | (_spread16(q[:, 1]) << 1), kind="stable")


@numba.njit(**_OPTS)
def _relabel(order, new_of_old, indptr, tail, eps, nxt, nxt_neg, ip, t2, e2, x2, g2, v0, v1):
    """Copy the edges of new vertices ``v0:v1`` (``order``: new -> old) into the new arrays,
    grouped by head in the new order, tails renumbered."""
    for v in range(v0, v1):
        u = order[v]
        o = ip[v]
        for e in range(indptr[u], indptr[u + 1]):
            t2[o] = new_of_old[tail[e]]
            e2[o] = eps[e]
            x2[o] = nxt[e]
            g2[o] = nxt_neg[e]
            o += 1


def _renumber(order, indptr, tail, eps, nxt, nxt_neg, threads):
    n = len(order)
    new_of_old = np.empty(n, np.int32)
    new_of_old[order] = np.arange(n, dtype=np.int32)
    ip = np.zeros(n + 1, np.int64)
    np.cumsum(np.diff(indptr)[order], out=ip[1:])
    m = len(tail)
    out = (np.empty(m, np.int32), np.empty(m, np.float32), np.empty(m, np.float32),
           np.empty(m, np.float32))
    _in_threads(lambda r: _relabel(order, new_of_old, indptr, tail, eps, nxt, nxt_neg, ip, *out,
                                   r[0], r[1]), _split(n, threads))
    return (ip, *out)


def _split(n: int, parts: int):
    cuts = np.linspace(0, n, max(1, parts) + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def _threads(threads: int | None) -> int:
    return max(1, int(threads or numba.config.NUMBA_NUM_THREADS))


_POOL: dict = {}


def _in_threads(fn, items) -> None:
    """``fn(item)`` for every item, on a thread pool when there is more than one (the numba
    kernels release the GIL, so the threads run on all cores)."""
    items = list(items)
    if len(items) <= 1:
        for it in items:
            fn(it)
        return
    from concurrent.futures import ThreadPoolExecutor

    pool = _POOL.get(len(items))
    if pool is None:
        pool = _POOL[len(items)] = ThreadPoolExecutor(len(items), "umap-sgd")
    for f in [pool.submit(fn, it) for it in items]:
        f.result()


def _bounds(indptr: np.ndarray, chunks: int) -> np.ndarray:
    """Vertex boundaries of ``chunks`` runs with about equal numbers of edges."""
    m = int(indptr[-1])
    cuts = np.searchsorted(indptr, np.linspace(0, m, chunks + 1)[1:-1], side="left")
    return np.unique(np.concatenate([[0], cuts, [len(indptr) - 1]])).astype(np.int64)


def optimize_layout(graph, init, *, n_epochs: int, a: float, b: float,
                    negative_sample_rate: float = 5.0, gamma: float = 1.0,
                    learning_rate: float = 1.0, seed: int = 0, threads: int | None = None,
                    reorder_every: int = 20, callback=None) -> np.ndarray:
    """UMAP's SGD of a 2-D layout; returns an array of shape (n, 2) float32.

    ``graph``: the fuzzy graph, a scipy sparse matrix (n, n) (from :func:`fuzzy_graph`);
    ``init``: array (n, 2), rescaled to [0, 10] per axis as umap-learn does. Edges lighter than
    ``max / n_epochs`` are dropped (umap-learn's rule; ``max / 200`` when n_epochs <= 10).
    ``threads``: how many cores (None: numba's thread count); with 1 the result depends on
    the seed alone. ``reorder_every``: epochs between Z-order renumberings (0: never).
    ``callback(epoch)`` is called after every epoch (progress).
    """
    import scipy.sparse as sp

    g = sp.csr_matrix(graph, dtype=np.float32)
    n = g.shape[0]
    y = np.asarray(init, np.float32)
    if n:
        lo, hi = y.min(0), y.max(0)
        span = np.where(hi > lo, hi - lo, 1.0).astype(np.float32)
        y = 10.0 * (y - lo) / span
    y = np.ascontiguousarray(y, dtype=np.float32)
    w = g.data
    if n == 0 or w.size == 0:
        for e in range(n_epochs):
            if callback is not None:
                callback(e)
        return y
    wmax = float(w.max())
    keep = w >= wmax / float(n_epochs if n_epochs > 10 else 200)
    rows = np.repeat(np.arange(n), np.diff(g.indptr))
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows[keep], minlength=n), out=indptr[1:])
    tail = np.ascontiguousarray(g.indices[keep], dtype=np.int32)
    eps = (np.float32(wmax) / w[keep]).astype(np.float32)
    nxt = eps.copy()
    nxt_neg = (eps / np.float32(negative_sample_rate)).astype(np.float32)
    del rows, keep, g
    nt = _threads(threads)
    tab = coefficient_tables(a, b, gamma)
    order = np.arange(n, dtype=np.int64)  # position -> original vertex
    seed = int(seed) & 0xFFFFFFFF
    shares = bounds = None
    for epoch in range(n_epochs):
        if bounds is None or (reorder_every and epoch % reorder_every == 0 and n > 1):
            if reorder_every and n > 1:
                o = zorder(y)
                indptr, tail, eps, nxt, nxt_neg = _renumber(o, indptr, tail, eps, nxt, nxt_neg,
                                                            nt)
                y = np.ascontiguousarray(y[o])
                order = order[o]
            bounds = _bounds(indptr, N_CHUNKS)
            # each thread a share of the chunks, interleaved so the shares stay balanced
            nc = len(bounds) - 1
            shares = [np.arange(i, nc, nt, dtype=np.int64) for i in range(min(nt, nc))]
        alpha = learning_rate if epoch == 0 else learning_rate * (1.0 - (epoch - 1) / n_epochs)
        _in_threads(lambda ch: _epoch_chunks(tab, y, indptr, tail, eps, nxt, nxt_neg, bounds, ch,
                                             epoch, alpha, a, b, gamma,
                                             float(negative_sample_rate), seed), shares)
        if callback is not None:
            callback(epoch)
    out = np.empty_like(y)
    out[order] = y
    return out


def warm() -> None:
    """Compile (or load from the cache) every kernel here, on a tiny graph."""
    rng = np.random.default_rng(0)
    n, k = 40, 5
    x = rng.standard_normal((n, 2)).astype(np.float32)
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    ind = np.argsort(d, 1)[:, :k]
    dist = np.take_along_axis(d, ind, 1).astype(np.float32)
    g = fuzzy_graph(ind, dist, n_neighbors=k, threads=1)
    optimize_layout(g, x, n_epochs=3, a=1.58, b=0.9, threads=1, reorder_every=2)


__all__ = ["fuzzy_graph", "optimize_layout", "zorder", "warm", "N_CHUNKS"]
