"""Datasets from arrays already in memory, and a dataset's rows as one DataFrame (notebooks).

:func:`from_arrays` writes through the same :class:`~bigembed.dataset.writer.DatasetWriter`
transaction as ``bigembed ingest`` (temporary names, fsync, one atomic manifest replace under
the dataset's lock), so a killed kernel leaves the previous dataset or the complete new one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import InputError
from .layouts import find_layouts, load_layout
from .reader import Dataset
from .writer import DatasetWriter

log = logging.getLogger(__name__)

_DTYPES = {"float32": np.float32, "float16": np.float16}


def _vectors(vectors) -> np.ndarray:
    mod = type(vectors).__module__
    if mod.startswith("torch"):  # a tensor on any device: to host memory, no grad
        vectors = vectors.detach().cpu().numpy()
    arr = np.asarray(vectors)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"vectors must be a 2-D array of shape (n_rows, dim) with at least "
                         f"one row and column, got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise InputError(f"vectors must hold numbers, got dtype {arr.dtype}")
    return arr


def _meta_table(meta, rows: int):
    import pandas as pd
    import pyarrow as pa

    if meta is None:
        return None
    if isinstance(meta, dict):
        meta = pd.DataFrame(meta)
    if isinstance(meta, pd.DataFrame):
        table = pa.Table.from_pandas(meta, preserve_index=False)
    elif isinstance(meta, pa.Table):
        table = meta
    else:
        raise InputError(f"meta must be a pandas DataFrame, a dict of columns or a pyarrow "
                         f"Table, got {type(meta).__name__}")
    if table.num_rows != rows:
        raise InputError(f"meta has {table.num_rows} rows but vectors has {rows}; they are "
                         f"joined by row order, so the counts must match")
    return table


def from_arrays(path, vectors, meta=None, space: str = "default", *, dtype: str | None = None,
                overwrite: bool = False, batch_rows: int = 65536, progress: bool | None = None):
    """Write ``vectors`` (array of shape (n_rows, dim); numpy, or a torch tensor) as space
    ``space`` of the dataset at ``path`` and return the opened
    :class:`~bigembed.dataset.Dataset`.

    A new ``path`` becomes a new dataset with ``meta`` (a DataFrame, dict of columns or Arrow
    table, one row per vector, in order) as its metadata; an existing dataset gets the space
    added (its row count must match; ``meta`` is then refused, the metadata stays).
    ``overwrite`` replaces an existing space (or a non-dataset directory). Vectors are stored
    as float32 unless they are float16 (or ``dtype`` says). Rows with NaN or Inf are refused.
    """
    from ..progress import progress_bar

    arr = _vectors(vectors)
    if dtype is not None and dtype not in _DTYPES:
        raise InputError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    store = dtype or ("float16" if arr.dtype == np.float16 else "float32")
    if not isinstance(space, str) or not space:
        raise InputError(f"space must be a non-empty name, got {space!r}")
    n, dim = arr.shape
    path = Path(path)
    appending = (path / "manifest.json").exists()
    if appending and meta is not None:
        raise InputError(f"meta: dataset {path} exists and keeps its metadata; give meta only "
                         f"when creating a dataset")
    table = _meta_table(meta, n)
    if appending:
        n0 = Dataset.open(path, verify="none").rows
        if n0 != n:
            raise InputError(f"vectors hold {n} rows but dataset {path} has {n0}; a new space "
                             f"needs one vector per existing instance")
    elif path.exists() and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
    # every row checked before anything is written
    bad = []
    for start in range(0, n, batch_rows):
        with np.errstate(over="ignore", invalid="ignore"):
            chunk = arr[start:start + batch_rows].astype(_DTYPES[store], copy=False)
            fin = np.isfinite(chunk).all(axis=1)
        bad += (start + np.flatnonzero(~fin)).tolist()[:10 - len(bad)] if len(bad) < 10 else []
        if len(bad) >= 10:
            break
    if bad:
        raise InputError(f"vectors: rows {bad} hold NaN or Inf (values that do not fit "
                         f"{store} count too); fix them before writing")
    provenance = {"source": "from_arrays", "rows": n, "dim": dim, "dtype": str(arr.dtype)}
    mode = "append" if appending else "create"
    with DatasetWriter(path, mode=mode, overwrite=overwrite, provenance=provenance) as dw:
        bar = progress_bar(total=n, desc=f"write {space}", unit="rows", enabled=progress)
        try:
            with dw.space(space, dim=dim, dtype=store, total_rows=n,
                          provenance=provenance) as sw:
                for start in range(0, n, batch_rows):
                    chunk = arr[start:start + batch_rows]
                    sw.write(np.ascontiguousarray(chunk, dtype=_DTYPES[store]))
                    bar.update(len(chunk))
        finally:
            bar.close()
        if table is not None:
            dw.set_meta(table, key="key" if "key" in table.column_names else None)
    log.info("wrote space %r (%d x %d, %s) to %s", space, n, dim, store, path)
    return Dataset.open(path, verify="none")


def from_arrays_classmethod(cls, path, vectors, meta=None, space: str = "default", **kw):
    """``Dataset.from_arrays(path, vectors, meta=None, space="default")``: see
    :func:`from_arrays`."""
    return from_arrays(path, vectors, meta=meta, space=space, **kw)


def to_pandas(ds, space: str | None = None):
    """The metadata as a DataFrame (one row per id, a copy); with ``space`` (a space name,
    or a layout name), also the ``x``, ``y`` of its newest layout and the layout's per-point
    quality columns (``knn_preservation``, ...)."""
    df = ds.meta.copy()
    if space is None:
        return df
    if not isinstance(space, str):
        raise InputError(f"space must be a space or layout name, got {type(space).__name__}")
    names = ds.manifest.get("layouts", {})
    if space in names:
        lay = load_layout(ds, name=space)
    else:
        if space not in ds.spaces:
            raise InputError(f"space: dataset {ds.path} has no space or layout {space!r}; "
                             f"spaces: {sorted(ds.spaces)}, layouts: {sorted(names)}")
        if not find_layouts(ds, space=space):
            raise InputError(f"space: {space!r} has no layout yet; make one with "
                             f"`bigembed reduce {ds.path} --space {space}`")
        lay = load_layout(ds, space=space)
    df["x"] = np.asarray(lay.x, np.float32)
    df["y"] = np.asarray(lay.y, np.float32)
    for k, v in lay.columns.items():
        if k not in df.columns and len(v) == len(df):
            df[k] = np.asarray(v)
    return df
