"""Per-column sums and sums of squares of row blocks (float64 accumulators), for group
contrasts over memory-mapped spaces.

``column_moments(x, rows)`` over a float32 array, or over a float16 array viewed as uint16
with :data:`F16_TABLE` (numba has no float16 arithmetic on the CPU; the 256 KB table stays in
cache). Rows are split across threads; each thread keeps its own accumulators. The numpy
twin :func:`column_moments_numpy` is the reference. No I/O, no logging.
"""

from __future__ import annotations

import numpy as np

try:
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is in the layout extra
    HAVE_NUMBA = False

#: float16 bit pattern -> float32 value
F16_TABLE = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)


def column_moments_numpy(x: np.ndarray, rows: np.ndarray | None = None):
    """Reference: ``(sum, sum of squares)`` float64 (d,) over ``rows`` (None: all) of ``x``."""
    x = (x if rows is None else x[rows]).astype(np.float64)
    return x.sum(0), np.einsum("ij,ij->j", x, x)


if HAVE_NUMBA:
    @numba.njit(parallel=True, cache=True, nogil=True)
    def _moments(x, table, rows, use_rows, nthreads):
        # One kernel for both dtypes: ``table`` is None for float32 input and
        # :data:`F16_TABLE` for float16 input viewed as uint16. ``table is None`` on a
        # None-typed argument is decided when numba compiles (its dead-branch pruning), so
        # each specialisation keeps only its own load: the float32 loop has no branch (it
        # could not even type ``table[...]`` on None otherwise).
        n = rows.shape[0] if use_rows else x.shape[0]
        d = x.shape[1]
        s = np.zeros((nthreads, d))
        q = np.zeros((nthreads, d))
        step = (n + nthreads - 1) // nthreads
        for t in numba.prange(nthreads):
            lo = t * step
            hi = min(n, lo + step)
            for i in range(lo, hi):
                r = rows[i] if use_rows else i
                for j in range(d):
                    if table is None:
                        v = np.float64(x[r, j])
                    else:
                        v = np.float64(table[x[r, j]])
                    s[t, j] += v
                    q[t, j] += v * v
        return s.sum(0), q.sum(0)


def column_moments(x: np.ndarray, rows: np.ndarray | None = None, nthreads: int = 0):
    """``(sum, sum of squares)``, float64 arrays of shape (d,), over ``rows`` (int64 ids,
    None: all rows) of ``x`` (n, d) float16 or float32 (other dtypes: the numpy twin)."""
    if not HAVE_NUMBA or x.dtype not in (np.float16, np.float32) or not x.flags.c_contiguous:
        return column_moments_numpy(x, rows)
    nthreads = nthreads or numba.get_num_threads()
    use = rows is not None
    r = np.ascontiguousarray(rows, np.int64) if use else np.empty(0, np.int64)
    if x.dtype == np.float16:
        return _moments(x.view(np.uint16), F16_TABLE, r, use, nthreads)
    return _moments(x, None, r, use, nthreads)


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernel for read-only float16/float32 input,
    the types a memory-mapped space has: ``make install`` does this (through
    :func:`bigembed.analysis.units.warm_contrast_cache`), since compiling holds the GIL for
    seconds."""
    for dt in (np.float16, np.float32):
        x = np.zeros((4, 3), dt)
        x.flags.writeable = False
        column_moments(x)
        column_moments(x, np.arange(2, dtype=np.int64))
