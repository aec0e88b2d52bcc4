"""A group of rows: validating the ids that name it (shared by stats, contrast and clusters)."""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def as_ids(ids, rows: int, *, name: str = "ids", allow_all: bool = True) -> np.ndarray:
    """``ids`` (row ids, or a boolean mask of shape (rows,)) -> sorted unique int64 ids.

    Raises :class:`InputError` naming ``name`` when the group is empty, holds ids outside
    0..rows-1, is a mask of another length, or (``allow_all=False``) covers every row.
    """
    if ids is None:
        raise InputError(f"{name} is required: row ids or a boolean mask of shape ({rows},)")
    a = np.asarray(ids)
    if a.ndim != 1:
        raise InputError(f"{name} must be one-dimensional (row ids or a mask), got shape {a.shape}")
    if a.dtype == bool:
        if len(a) != rows:
            raise InputError(f"{name}: a boolean mask must have one entry per row ({rows}), "
                             f"got {len(a)}")
        out = np.flatnonzero(a).astype(np.int64)
    elif a.size == 0:
        out = np.empty(0, np.int64)
    elif a.dtype.kind in "iu":
        out = a.astype(np.int64, copy=False)
        # sort + dedupe by hand: np.unique hashes (seconds at 1M ids); sorted ids skip it all
        if len(out) > 1 and not bool(np.all(out[1:] > out[:-1])):
            out = np.sort(out)
            out = out[np.r_[True, out[1:] != out[:-1]]]
        if out[0] < 0 or out[-1] >= rows:
            bad = out[0] if out[0] < 0 else out[-1]
            raise InputError(f"{name} must be row ids in 0..{rows - 1}, got {int(bad)}")
    else:
        raise InputError(f"{name} must be integer row ids or a boolean mask, got dtype {a.dtype}")
    if not len(out):
        raise InputError(f"{name} is empty: the group must hold at least one row")
    if not allow_all and len(out) == rows:
        raise InputError(f"{name} holds every row ({rows}): the rest is empty, so there is "
                         f"nothing to contrast the group with")
    return out
