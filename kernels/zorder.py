"""Z-order (Morton) kernels for the map's spatial order and its pyramid, in memory or out of core.

One set of loops serves both :class:`~bigembed.view.spatial.SpatialIndex` in memory and the
chunked build of :mod:`bigembed.view.store`, so the two give the same bytes: the cell of a
point, a stable radix sort of cell codes, the runs of equal cells with their float64 sums (added
in sorted order, one point after the other), and the coarsening of one level into the next
(children summed in order). Codes are uint32 (at most 16 levels: 2 x 16 bits).

No I/O, logging or validation here: :mod:`bigembed.view.store` owns that.
"""

from __future__ import annotations

import numpy as np

_NUMBA: dict = {}


def _kernels():
    """The compiled kernels (numba is imported on first use only)."""
    if _NUMBA:
        return _NUMBA
    import numba

    global _spread16

    @numba.njit(inline="always")
    def _spread16(v):
        v = v & np.uint32(0x0000FFFF)
        v = (v | (v << np.uint32(8))) & np.uint32(0x00FF00FF)
        v = (v | (v << np.uint32(4))) & np.uint32(0x0F0F0F0F)
        v = (v | (v << np.uint32(2))) & np.uint32(0x33333333)
        v = (v | (v << np.uint32(1))) & np.uint32(0x55555555)
        return v

    @numba.njit(cache=True, nogil=True)
    def cell_codes(x, y, lo0, lo1, s0, s1, g, out):
        # Morton code of each point's cell on the g x g grid: floor((v - lo) * scale) in
        # float64, clipped to [0, g - 1] (SpatialIndex._cell's arithmetic)
        top = g - 1
        for i in range(x.shape[0]):
            cx = np.floor((np.float64(x[i]) - lo0) * s0)
            cy = np.floor((np.float64(y[i]) - lo1) * s1)
            ix = 0 if cx < 0 else (top if cx > top else np.int64(cx))
            iy = 0 if cy < 0 else (top if cy > top else np.int64(cy))
            out[i] = _spread16(np.uint32(ix)) | (_spread16(np.uint32(iy)) << np.uint32(1))

    @numba.njit(cache=True, nogil=True)
    def bounds(x, y, acc):
        # running (x min, x max, y min, y max) over a chunk, in acc (4,) float64
        for i in range(x.shape[0]):
            a = np.float64(x[i])
            b = np.float64(y[i])
            if a < acc[0]:
                acc[0] = a
            if a > acc[1]:
                acc[1] = a
            if b < acc[2]:
                acc[2] = b
            if b > acc[3]:
                acc[3] = b

    @numba.njit(cache=True, nogil=True)
    def histogram(codes, shift, hist):
        for i in range(codes.shape[0]):
            hist[codes[i] >> shift] += 1

    @numba.njit(cache=True, nogil=True)
    def take_window(codes, c0, c1, id0, x, y, bx, by, bid, bcode, k):
        # append the points with c0 <= code < c1 (in input order) to the window buffers
        for i in range(codes.shape[0]):
            c = codes[i]
            if c >= c0 and c < c1:
                bx[k] = x[i]
                by[k] = y[i]
                bid[k] = id0 + i
                bcode[k] = c
                k += 1
        return k

    @numba.njit(cache=True, nogil=True)
    def radix_argsort(keys):
        # stable argsort of uint32 keys: LSD radix, two passes of 16 bits (one when the high
        # halves are all equal)
        n = keys.shape[0]
        perm = np.arange(n)
        if n < 2:
            return perm
        hi_min = keys[0] >> np.uint32(16)
        hi_max = hi_min
        for i in range(n):
            h = keys[i] >> np.uint32(16)
            if h < hi_min:
                hi_min = h
            if h > hi_max:
                hi_max = h
        tmp = np.empty(n, np.int64)
        passes = 1 if hi_min == hi_max else 2
        for ps in range(passes):
            sh = np.uint32(16 * ps)
            count = np.zeros(65537, np.int64)
            for i in range(n):
                count[((keys[perm[i]] >> sh) & np.uint32(0xFFFF)) + 1] += 1
            for b in range(65536):
                count[b + 1] += count[b]
            for i in range(n):
                p = perm[i]
                b = (keys[p] >> sh) & np.uint32(0xFFFF)
                tmp[count[b]] = p
                count[b] += 1
            perm, tmp = tmp, perm
        return perm

    @numba.njit(cache=True, nogil=True)
    def split_argsort(keys, shift, base, nhigh, first, perm):
        # stable argsort of uint32 keys whose high parts (key >> shift) - base lie in
        # [0, nhigh), into perm (first: scratch of the same size and type): a counting sort by
        # the high part, then one per high part by the low shift bits (small count arrays, in
        # cache; the order np.argsort(kind="stable") gives)
        n = keys.shape[0]
        count = np.zeros(nhigh + 1, np.int64)
        for i in range(n):
            count[(keys[i] >> shift) - base + 1] += 1
        for b in range(nhigh):
            count[b + 1] += count[b]
        seg = count.copy()
        for i in range(n):
            b = (keys[i] >> shift) - base
            first[count[b]] = i
            count[b] += 1
        low = np.uint32((1 << shift) - 1)
        cnt = np.zeros((1 << shift) + 1, np.int64)
        for b in range(nhigh):
            s, e = seg[b], seg[b + 1]
            if e - s == 0:
                continue
            if e - s == 1:
                perm[s] = first[s]
                continue
            cnt[:] = 0
            for j in range(s, e):
                cnt[(keys[first[j]] & low) + 1] += 1
            for v in range(1 << shift):
                cnt[v + 1] += cnt[v]
            for j in range(s, e):
                i = first[j]
                v = keys[i] & low
                perm[s + cnt[v]] = i
                cnt[v] += 1

    @numba.njit(cache=True, nogil=True)
    def cell_runs(codes, xs, ys):
        # runs of equal codes in sorted codes: (cell code, start position, float64 sums of x
        # and y added in order) per run, and the end position
        n = codes.shape[0]
        m = 0
        for i in range(n):
            if i == 0 or codes[i] != codes[i - 1]:
                m += 1
        cell = np.empty(m, np.uint32)
        starts = np.empty(m + 1, np.int64)
        sx = np.zeros(m, np.float64)
        sy = np.zeros(m, np.float64)
        k = -1
        for i in range(n):
            if i == 0 or codes[i] != codes[i - 1]:
                k += 1
                cell[k] = codes[i]
                starts[k] = i
            sx[k] += np.float64(xs[i])
            sy[k] += np.float64(ys[i])
        starts[m] = n
        return cell, starts, sx, sy

    @numba.njit(cache=True, nogil=True)
    def parent_groups(cell):
        # the parents (code >> 2) of sorted cells: (parent codes, first child of each, + end)
        n = cell.shape[0]
        m = 0
        for i in range(n):
            if i == 0 or (cell[i] >> np.uint32(2)) != (cell[i - 1] >> np.uint32(2)):
                m += 1
        parent = np.empty(m, np.uint32)
        first = np.empty(m + 1, np.int64)
        k = -1
        for i in range(n):
            p = cell[i] >> np.uint32(2)
            if i == 0 or p != (cell[i - 1] >> np.uint32(2)):
                k += 1
                parent[k] = p
                first[k] = i
        first[m] = n
        return parent, first

    @numba.njit(cache=True, nogil=True)
    def sum_groups(first, v):
        # per group [first[g], first[g + 1]) of the rows of v (r, ch) float64: their sum,
        # added in order
        m = first.shape[0] - 1
        out = np.zeros((m, v.shape[1]), np.float64)
        for g in range(m):
            for i in range(first[g], first[g + 1]):
                for c in range(v.shape[1]):
                    out[g, c] += v[i, c]
        return out

    @numba.njit(cache=True, nogil=True)
    def finite_sums(starts, values):
        # per run [starts[k], starts[k + 1]) of values: (sum of the finite ones, their count)
        m = starts.shape[0] - 1
        out = np.zeros((m, 2), np.float64)
        for k in range(m):
            for i in range(starts[k], starts[k + 1]):
                v = np.float64(values[i])
                if np.isfinite(v):
                    out[k, 0] += v
                    out[k, 1] += 1.0
        return out

    @numba.njit(cache=True, nogil=True)
    def category_pairs(starts, values, ncat):
        # per run of points [starts[k], starts[k + 1]): the (run, category, count) of every
        # category present, by run then category
        m = starts.shape[0] - 1
        seen = np.zeros(ncat, np.int64)
        total = 0
        for k in range(m):
            for i in range(starts[k], starts[k + 1]):
                c = values[i]
                if seen[c] == 0:
                    total += 1
                seen[c] += 1
            for i in range(starts[k], starts[k + 1]):
                seen[values[i]] = 0
        pc = np.empty(total, np.int64)
        pcat = np.empty(total, np.int64)
        pn = np.empty(total, np.float64)
        j = 0
        for k in range(m):
            for i in range(starts[k], starts[k + 1]):
                seen[values[i]] += 1
            for c in range(ncat):
                if seen[c]:
                    pc[j] = k
                    pcat[j] = c
                    pn[j] = seen[c]
                    j += 1
                    seen[c] = 0
        return pc, pcat, pn

    @numba.njit(cache=True, nogil=True)
    def merge_pairs(first, offs, pcat, pn, ncat):
        # pairs of the parent groups [first[g], first[g + 1]) of cells whose pairs are
        # offs[cell] .. offs[cell + 1]: counts of each category summed, by group then category
        m = first.shape[0] - 1
        seen = np.zeros(ncat, np.float64)
        total = 0
        for g in range(m):
            for j in range(offs[first[g]], offs[first[g + 1]]):
                if seen[pcat[j]] == 0:
                    total += 1
                seen[pcat[j]] += pn[j]
            for j in range(offs[first[g]], offs[first[g + 1]]):
                seen[pcat[j]] = 0
        oc = np.empty(total, np.int64)
        ocat = np.empty(total, np.int64)
        on = np.empty(total, np.float64)
        t = 0
        for g in range(m):
            for j in range(offs[first[g]], offs[first[g + 1]]):
                seen[pcat[j]] += pn[j]
            for c in range(ncat):
                if seen[c]:
                    oc[t] = g
                    ocat[t] = c
                    on[t] = seen[c]
                    t += 1
                    seen[c] = 0
        return oc, ocat, on

    @numba.njit(cache=True, nogil=True)
    def invert_block(ids, p0, a, out):
        # out[id - a] = position for the ids (at positions p0, p0 + 1, ...) in [a, a + len(out))
        b = a + out.shape[0]
        for i in range(ids.shape[0]):
            v = np.int64(ids[i])
            if v >= a and v < b:
                out[v - a] = p0 + i

    @numba.njit(cache=True, nogil=True)
    def gather(values, idx, out):
        for i in range(idx.shape[0]):
            out[i] = values[idx[i]]

    _NUMBA.update(cell_codes=cell_codes, bounds=bounds, histogram=histogram,
                  take_window=take_window, radix_argsort=radix_argsort,
                  split_argsort=split_argsort, cell_runs=cell_runs,
                  parent_groups=parent_groups, sum_groups=sum_groups, finite_sums=finite_sums,
                  category_pairs=category_pairs, merge_pairs=merge_pairs,
                  invert_block=invert_block, gather=gather)
    return _NUMBA


def cell_codes(x, y, lo, scale, levels: int) -> np.ndarray:
    """uint32 Morton codes of the cells of points ``x, y`` on the ``2**levels`` grid with
    origin ``lo`` (2,) and cells per unit ``scale`` (2,); levels <= 16."""
    out = np.empty(len(x), np.uint32)
    _kernels()["cell_codes"](np.ascontiguousarray(x), np.ascontiguousarray(y), float(lo[0]),
                             float(lo[1]), float(scale[0]), float(scale[1]), 1 << int(levels),
                             out)
    return out


def bounds(x, y, acc: np.ndarray) -> None:
    """Update ``acc`` = [x min, x max, y min, y max] (float64) with a chunk of points."""
    _kernels()["bounds"](np.ascontiguousarray(x), np.ascontiguousarray(y), acc)


def histogram(codes, shift: int, hist: np.ndarray) -> None:
    """hist[code >> shift] += 1 for every code (hist int64, large enough)."""
    _kernels()["histogram"](codes, np.uint32(shift), hist)


def take_window(codes, c0: int, c1: int, id0: int, x, y, bufs, k: int) -> int:
    """Append the points of a chunk (first id ``id0``) whose code is in [c0, c1) to
    ``bufs`` = (x, y, id, code) from position ``k``; returns the new fill."""
    bx, by, bid, bcode = bufs
    return int(_kernels()["take_window"](codes, np.uint32(c0), np.uint64(c1), np.int64(id0),
                                         x, y, bx, by, bid, bcode, np.int64(k)))


def radix_argsort(keys: np.ndarray) -> np.ndarray:
    """Stable argsort of uint32 ``keys`` (the order ``np.argsort(kind="stable")`` gives)."""
    return _kernels()["radix_argsort"](np.ascontiguousarray(keys, np.uint32))


def split_argsort(keys: np.ndarray, shift: int, base: int, nhigh: int,
                  scratch: np.ndarray | None = None) -> np.ndarray:
    """Stable argsort of uint32 ``keys`` with ``(key >> shift) - base`` in [0, nhigh): by the
    high part, then by the low ``shift`` bits within each (the order of
    ``np.argsort(kind="stable")``). Positions int32 when they fit (half the memory);
    ``scratch``: a buffer of at least ``2 * len(keys)`` of that type to use."""
    n = len(keys)
    dt = np.int32 if n < (1 << 31) else np.int64
    if scratch is None or scratch.dtype != dt or len(scratch) < 2 * n:
        scratch = np.empty(2 * n, dt)
    first, perm = scratch[:n], scratch[n:2 * n]
    _kernels()["split_argsort"](np.ascontiguousarray(keys, np.uint32), np.uint32(shift),
                                np.uint32(base), int(nhigh), first, perm)
    return perm


def cell_runs(codes, xs, ys):
    """Runs of equal sorted ``codes``: (cell codes (m,) uint32, start positions (m + 1,)
    int64, x sums (m,) float64, y sums (m,) float64), sums added in order."""
    return _kernels()["cell_runs"](codes, xs, ys)


def parent_groups(cell):
    """Parents (code >> 2) of sorted cell codes: (parent codes (m,), first child (m + 1,))."""
    return _kernels()["parent_groups"](np.ascontiguousarray(cell, np.uint32))


def sum_groups(first, v):
    """Row sums of ``v`` (r, ch) float64 over the groups [first[g], first[g + 1]), in order."""
    return _kernels()["sum_groups"](first, np.ascontiguousarray(v, np.float64))


def finite_sums(starts, values):
    """(sum, count) of the finite ``values`` in each run [starts[k], starts[k + 1]); (m, 2)."""
    return _kernels()["finite_sums"](starts, values)


def category_pairs(starts, values, ncat: int):
    """(run, category, count) of the categories present in each run of ``values``."""
    return _kernels()["category_pairs"](starts, values, int(ncat))


def merge_pairs(first, offs, pcat, pn, ncat: int):
    """The (group, category, count) pairs of groups of cells (``first``) from the cells'
    pairs (``offs``: first pair of each cell, + end)."""
    return _kernels()["merge_pairs"](first, offs, pcat, pn, int(ncat))


def invert_block(ids, p0: int, a: int, out: np.ndarray) -> None:
    """out[id - a] = p0 + i for the ``ids[i]`` in [a, a + len(out))."""
    _kernels()["invert_block"](ids, np.int64(p0), np.int64(a), out)


def gather(values, idx, out) -> None:
    """out[i] = values[idx[i]]."""
    _kernels()["gather"](values, idx, out)
