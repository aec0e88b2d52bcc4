"""Colourings of the map: what a column's values mean as colours (categories or a mean).

:func:`colouring_of` turns a column (values in id order) into a :class:`Colouring`: integer
and text labels into category codes (at most :data:`MAX_CATEGORIES`), numbers into a mean per
pixel over a span. The in-memory renderer (:mod:`bigembed.view.frames`) and the on-disk map
(:mod:`bigembed.view.store`) both make theirs here, so they mean the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

MAX_CATEGORIES = 64
#: colour maps (colorcet names) per kind
DENSITY_CMAP = "fire"
MEAN_CMAP = "bmy"
ERROR_CMAP = "coolwarm"


@dataclass(frozen=True)
class Colouring:
    """How points are coloured: ``kind`` in density/categorical/mean.

    ``values``: array of shape (n,) in spatial order (category codes or floats) or None;
    ``categories``: names of the codes; ``span``: (lo, hi) of a mean colouring.
    """

    name: str
    kind: str
    values: np.ndarray | None = None
    categories: tuple = ()
    colors: tuple = ()
    span: tuple | None = None
    cmap: str = DENSITY_CMAP


def _palette(n: int) -> tuple:
    """``n`` categorical colours (hex), colorcet's glasbey_category10 repeated."""
    import colorcet as cc

    pal = cc.glasbey_category10
    return tuple(cc.rgb_to_hex(*[int(255 * c) for c in pal[i % len(pal)]]) for i in range(n))


#: rows per step of the chunked passes over a column (bounded temporaries at any size)
CHUNK = 1 << 24


def code_dtype(ncat: int, compact: bool):
    """int64 codes, or with ``compact`` the smallest unsigned type that holds ``ncat``."""
    if not compact:
        return np.int64
    return np.uint8 if ncat <= 256 else np.uint16 if ncat <= 65536 else np.int64


def int_codes(col: np.ndarray, *, compact: bool = False):
    """(distinct values, code of each element) of an integer array, as ``np.unique(col,
    return_inverse=True)`` gives them; by marking present values, in chunks, when the values
    span less than 2**24 (a billion labels in seconds, not a sort). Codes int64, or with
    ``compact`` the smallest unsigned type that holds them."""
    col = np.asarray(col)
    if col.dtype.kind in "iu" and len(col):
        lo, hi = int(col.min()), int(col.max())
        if hi - lo < (1 << 24):
            present = np.zeros(hi - lo + 1, bool)
            for a in range(0, len(col), CHUNK):
                present[col[a:a + CHUNK].astype(np.int64) - lo] = True
            uniq = (np.flatnonzero(present) + lo).astype(col.dtype)
            lut = (np.cumsum(present) - 1).astype(code_dtype(len(uniq), compact))
            codes = np.empty(len(col), lut.dtype)
            for a in range(0, len(col), CHUNK):
                codes[a:a + CHUNK] = lut[col[a:a + CHUNK].astype(np.int64) - lo]
            return uniq, codes
    uniq, inv = np.unique(col, return_inverse=True)
    return uniq, inv.astype(code_dtype(len(uniq), compact))


def colouring_of(name: str, col, added=None, *, compact: bool = False) -> Colouring:
    """The colouring of column ``name`` (values ``col`` in id order, shape (n,)); its
    ``values`` are in id order too. ``added``: (values, span, categories) of a column added
    with :meth:`FrameRenderer.add_column` (its span or categories say what it is).
    ``compact``: category codes in the smallest unsigned type (else int64)."""
    import pandas as pd

    if added is not None:
        _, span, cats = added
        if cats is not None:
            return Colouring(name, "categorical", np.asarray(col, np.int64), cats,
                             _palette(len(cats)))
        if span is not None:
            return Colouring(name, "mean", np.asarray(col, np.float64), span=span,
                             cmap=MEAN_CMAP)
    col = np.asarray(col)
    if name == "correct":
        err = 1.0 - np.asarray(col, np.float64)
        return Colouring(name, "mean", err, span=(0.0, 1.0), cmap=ERROR_CMAP)
    if col.dtype.kind == "f":
        v = np.asarray(col, np.float64)
        fin = v[np.isfinite(v)]
        span = (float(fin.min()), float(fin.max())) if len(fin) else (0.0, 1.0)
        if span[0] == span[1]:
            span = (span[0], span[0] + 1.0)
        if name == "knn_preservation":
            span = (0.0, 1.0)
        return Colouring(name, "mean", v, span=span, cmap=MEAN_CMAP)
    if col.dtype.kind in "iub":
        # Integer labels: codes in numeric order, no text conversion of N values (a second
        # of work at 4M points)
        uniq, inv = int_codes(col, compact=compact)
        if len(uniq) <= MAX_CATEGORIES:
            return Colouring(name, "categorical", inv,
                             tuple(str(u) for u in uniq.tolist()), _palette(len(uniq)))
    cats = pd.Categorical(pd.Series(col).astype(str))
    if len(cats.categories) > MAX_CATEGORIES:
        if col.dtype.kind in "iub":
            v = np.asarray(col, np.float64)
            return Colouring(name, "mean", v, span=(float(v.min()), float(v.max()) or 1.0),
                             cmap=MEAN_CMAP)
        raise InputError(f"color_by: column {name!r} has {len(cats.categories)} distinct "
                         f"values; at most {MAX_CATEGORIES} can be told apart by colour")
    cat_names = tuple(str(c) for c in cats.categories)
    if col.dtype.kind in "iu":
        # Order integer labels numerically, not as strings ("10" after "9").
        cat_names = tuple(sorted(cat_names, key=lambda s: int(s)))
        cats = pd.Categorical(pd.Series(col).astype(str), categories=list(cat_names))
    codes = np.asarray(cats.codes, code_dtype(len(cat_names), compact))
    return Colouring(name, "categorical", codes, cat_names, _palette(len(cat_names)))
