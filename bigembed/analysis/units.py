"""Which units of a space set a group apart: :func:`contrast`.

For every dimension of a space, the group's mean against the rest's, as a standardised mean
difference (Cohen's d with the pooled standard deviation). The space is read in row blocks
straight from its memory-mapped shards (float16 or float32) by a numba kernel that accumulates
in float64 on every core; the whole space is never copied. The sums over all rows are kept per process per
space content, so a second group of the same space reads only the group's own rows.
"""

from __future__ import annotations

import logging
import os
import threading

import numpy as np

from ..dataset.reader import open_cached
from ..errors import InputError
from ..jitcache import enable_numba_cache, is_cached, numba_cache_dir
from ..progress import progress_bar
from .groups import as_ids

log = logging.getLogger(__name__)

#: rows per call of the moments kernel (a progress step; the kernel itself copies nothing)
BATCH_ROWS = 131072
#: the moments kernel's entry in numba's on-disk cache (see :func:`warm_contrast_cache`)
MOMENTS_KERNEL = "*/moments._moments-*.nbi"
_checked_cache = False

_TOTALS: dict = {}
_TOTALS_LOCK = threading.Lock()


def moments(v: np.ndarray, rows: np.ndarray | None = None, *, batch_rows: int = BATCH_ROWS,
            progress: bool | None = None, desc: str = "contrast"):
    """Per-dimension ``(sum, sum of squares)``, float64 arrays of shape (d,), over the rows
    ``rows`` (sorted ids; None: all) of ``v`` (n, d), ``batch_rows`` at a time.

    float16/float32 arrays go through the numba kernel (:mod:`bigembed.kernels.moments`),
    which reads the memory-mapped rows in place on every core; other dtypes (or no numba)
    through its numpy twin, one block at a time.
    """
    column_moments = _column_moments(v.dtype)
    n, d = v.shape
    total = n if rows is None else len(rows)
    s, q = np.zeros(d), np.zeros(d)
    bar = progress_bar(total=total, desc=desc, unit="rows", enabled=progress)
    for a in range(0, total, batch_rows):
        b = min(total, a + batch_rows)
        if rows is None:
            bs, bq = column_moments(v[a:b])
        else:
            bs, bq = column_moments(v, rows[a:b])
        s += bs
        q += bq
        bar.update(b - a)
    bar.close()
    return s, q


def _column_moments(dtype):
    """The moments kernel; the first call for a dtype the numba kernel takes says when the
    kernel will be compiled rather than loaded (a few seconds, once after install;
    ``make install`` does it)."""
    global _checked_cache
    from ..kernels.moments import HAVE_NUMBA, column_moments

    if not _checked_cache and HAVE_NUMBA and dtype in (np.float16, np.float32):
        _checked_cache = True
        if not is_cached(MOMENTS_KERNEL):
            log.info("compiling the contrast kernel: once after install (a few seconds; later "
                     "runs load it from %s)",
                     os.environ.get("NUMBA_CACHE_DIR") or numba_cache_dir())
    return column_moments


def warm_contrast_cache() -> None:
    """Compile (or load) the moments kernel of :func:`contrast` into numba's on-disk cache,
    for the float16/float32 read-only arrays a memory-mapped space is (``make install`` runs
    it, so neither a server's start nor its first contrast compiles)."""
    enable_numba_cache()
    from ..kernels.moments import warm_up

    warm_up()


def _space_array(ds, space) -> tuple[np.ndarray, str, object]:
    """(vectors (N, d), name, cache key or None) of ``space``: a name, None or an array."""
    if isinstance(space, np.ndarray) or (hasattr(space, "shape") and hasattr(space, "dtype")):
        v = space
        if v.ndim != 2:
            raise InputError(f"space must be a space name or an array of shape (N, d), got "
                             f"shape {v.shape}")
        if v.shape[0] != ds.rows:
            raise InputError(f"space: the array has {v.shape[0]} rows, the dataset has "
                             f"{ds.rows}; it must have one row per instance")
        if v.dtype.kind not in "fiu":
            raise InputError(f"space: the array must be numeric, got dtype {v.dtype}")
        return v, "array", None
    if space is not None and not isinstance(space, str):
        raise InputError(f"space must be a space name, None or an array, got {space!r}")
    if space is not None and space not in ds.spaces:
        ds.space(space)  # raises the clear error (incomplete space, did you mean ...)
    sp = ds.space(space)
    if sp.rows != ds.rows:
        raise InputError(f"space {sp.name!r} has {sp.rows} rows, the dataset has {ds.rows}")
    return sp.vectors, sp.name, (str(ds.path.resolve()), sp.fingerprint)


def _totals(v, key, batch_rows, progress):
    if key is not None:
        with _TOTALS_LOCK:
            hit = _TOTALS.get(key)
        if hit is not None:
            return hit
    t = moments(v, None, batch_rows=batch_rows, progress=progress, desc="contrast: all rows")
    if key is not None:
        with _TOTALS_LOCK:
            if len(_TOTALS) > 16:
                _TOTALS.clear()
            _TOTALS[key] = t
    return t


def contrast(ds, ids, space=None, top: int | None = 20, *, batch_rows: int = BATCH_ROWS,
             progress: bool | None = None):
    """Dimensions of ``space`` that set the group ``ids`` apart from the rest of ``ds``.

    ``ids``: row ids or a boolean mask of shape (N,); ``space``: a space name (None: the
    dataset's only or default space) or an array of shape (N, d). Returns a pandas DataFrame
    with one row per dimension, sorted by absolute effect (largest first; ``top`` rows, None:
    all): ``dim``, ``effect`` (standardised mean difference, group minus rest over the pooled
    standard deviation; 0 where both are constant and equal), ``mean_in``, ``mean_out``.
    ``df.attrs`` holds ``space``, ``n_in`` and ``n_out``.
    """
    import pandas as pd

    ds = open_cached(ds)
    if top is not None and (isinstance(top, bool) or not isinstance(top, (int, np.integer))
                            or top < 1):
        raise InputError(f"top must be a positive integer or None, got {top!r}")
    ids = as_ids(ids, ds.rows, allow_all=False)
    v, name, key = _space_array(ds, space)
    n = ds.rows
    s_all, q_all = _totals(v, key, batch_rows, progress)
    n_in, n_out = len(ids), n - len(ids)
    if n_in <= n_out:
        s_in, q_in = moments(v, ids, batch_rows=batch_rows, progress=progress,
                             desc="contrast: group")
        s_out, q_out = s_all - s_in, q_all - q_in
    else:  # a large group: read the (smaller) rest instead
        mask = np.ones(n, bool)
        mask[ids] = False
        s_out, q_out = moments(v, np.flatnonzero(mask), batch_rows=batch_rows,
                               progress=progress, desc="contrast: rest")
        s_in, q_in = s_all - s_out, q_all - q_out
    m_in, m_out = s_in / n_in, s_out / n_out
    # sums of squared deviations; tiny negatives from rounding are clipped
    ss_in = np.maximum(q_in - n_in * m_in ** 2, 0.0)
    ss_out = np.maximum(q_out - n_out * m_out ** 2, 0.0)
    dof = max(n - 2, 1)
    pooled = np.sqrt((ss_in + ss_out) / dof)
    diff = m_in - m_out
    with np.errstate(divide="ignore", invalid="ignore"):
        effect = np.where(pooled > 0, diff / pooled, np.where(diff == 0, 0.0,
                                                              np.sign(diff) * np.inf))
    order = np.lexsort((np.arange(len(effect)), -np.abs(effect)))
    if top is not None:
        order = order[:top]
    df = pd.DataFrame({"dim": order.astype(np.int64), "effect": effect[order],
                       "mean_in": m_in[order], "mean_out": m_out[order]})
    df.attrs.update(space=name, n_in=int(n_in), n_out=int(n_out))
    log.info("contrast of %d rows against %d in space %r: top dimension %s (effect %.3f)",
             n_in, n_out, name, int(order[0]) if len(order) else None,
             float(effect[order[0]]) if len(order) else float("nan"))
    return df


def contrast_json(df) -> dict:
    """A :func:`contrast` table as JSON: ``{"space", "n_in", "n_out", "rows": [...]}``
    (non-finite effects as null)."""
    rows = []
    for r in df.itertuples(index=False):
        e = float(r.effect)
        rows.append({"dim": int(r.dim), "effect": e if np.isfinite(e) else None,
                     "mean_in": float(r.mean_in), "mean_out": float(r.mean_out)})
    return {"space": df.attrs.get("space"), "n_in": df.attrs.get("n_in"),
            "n_out": df.attrs.get("n_out"), "rows": rows}
