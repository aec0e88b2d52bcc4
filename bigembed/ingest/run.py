"""Ingest vectors from files into a dataset space, streaming in batches.

:func:`ingest` reads each input through :mod:`bigembed.ingest.readers` (an iterator of
``(vectors, extra_columns)`` batches, so a 5 GB input never needs twice its size in memory),
drops or refuses non-finite rows, joins metadata by key, and writes one space through
:class:`~bigembed.dataset.writer.DatasetWriter`. The column rules for table files are in
:mod:`bigembed.ingest.readers`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..dataset.format import DTYPES
from ..dataset.reader import Dataset
from ..dataset.writer import DatasetWriter
from ..distributed.session import implementation as cluster_implementation
from ..errors import InputError
from ..progress import progress_bar
from .readers import open_source, read_table

log = logging.getLogger(__name__)

#: First ids listed in messages and in the manifest when rows are dropped.
SHOW_IDS = 20


@dataclass
class IngestResult:
    """What :func:`ingest` wrote."""

    path: Path
    space: str
    rows: int
    dim: int
    dtype: str
    shards: int
    bytes: int
    dropped: int = 0
    dropped_rows: list = field(default_factory=list)
    seconds: float = 0.0
    #: the layout imported with ``layout=`` (a :class:`~bigembed.reduce.run.ReduceResult`)
    layout: object = None


# --------------------------------------------------------------------------------------------
# Ingest
# --------------------------------------------------------------------------------------------


def _join_by_key(meta: pa.Table, keys: pa.Array, key: str, meta_path) -> pa.Table:
    import pyarrow.compute as pc

    if key not in meta.column_names:
        raise InputError(f"key: {meta_path} has no column {key!r}; it has {meta.column_names}")
    mk = meta.column(key).cast(pa.string())
    counts = pc.value_counts(mk)
    dup = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    if len(dup):
        raise InputError(f"key: {meta_path} column {key!r} has duplicate keys, e.g. "
                         f"{dup.field('values')[0].as_py()!r}")
    idx = pc.index_in(keys.cast(pa.string()), value_set=mk)
    if idx.null_count:
        missing = pc.filter(keys, pc.is_null(idx))
        raise InputError(
            f"key: {idx.null_count} vector rows have no metadata row in {meta_path}, e.g. "
            f"key {missing[0].as_py()!r}"
        )
    return meta.take(idx)


def ingest(inputs, *, out, space: str = "default", meta=None, key: str | None = None,
           column: str | None = None, array: str | None = None, dtype: str | None = None,
           drop_invalid: bool = False, overwrite: bool = False, batch_rows: int = 65536,
           allow_duplicate_keys: bool = False, layout=None,
           progress: bool | None = None) -> IngestResult:
    """Write vectors from ``inputs`` (files, concatenated in order) as space ``space`` of the
    dataset at ``out`` (created if missing; otherwise the space is added to it).

    ``layout``: two column names (``"x,y"`` or a pair) of the input table or of ``meta``
    holding a 2-D layout computed elsewhere; it is stored as a layout of ``space`` like any
    other (method ``"imported"``, keyed by its content) with its quality measured against the
    vectors. The columns stay in the metadata too.

    Rows holding NaN or Inf are refused, naming how many and the first ids, unless
    ``drop_invalid`` (then they are left out and listed in the manifest). ``key`` must name a
    column of the inputs or of ``meta``; keys that occur more than once are refused unless
    ``allow_duplicate_keys`` (a lookup by such a key then says which instance it used).
    """
    import time

    t0 = time.perf_counter()
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if not inputs:
        raise InputError("ingest needs at least one INPUT file")
    if dtype is not None and dtype not in DTYPES:
        raise InputError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    layout_cols = _layout_columns(layout)
    sources = [open_source(p, column=column, array=array, key=key, exclude=layout_cols)
               for p in inputs]
    dims = {s.dim for s in sources if s.dim is not None}
    if len(dims) > 1:
        a = sources[0]
        b = next(s for s in sources if s.dim != a.dim)
        raise InputError(f"{b.path} has dimension {b.dim} but {a.path} has {a.dim}; all inputs "
                         f"of one space must have the same dimension")
    store = dtype or ("float16" if all(s.dtype == np.float16 for s in sources) else "float32")
    known = [s.rows for s in sources]
    total = sum(known) if all(r is not None for r in known) else None
    out = Path(out)
    appending = out.exists() and (out / "manifest.json").exists()
    if out.exists() and not appending:
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        elif not overwrite:
            raise InputError(f"out: {out} exists and is not a bigembed dataset; choose "
                             f"another path or pass --overwrite")
    if appending and total is not None:
        n0 = Dataset.open(out, verify="none").rows
        if total != n0:
            raise InputError(f"inputs hold {total} rows but dataset {out} has {n0}; a new space "
                             f"needs one vector per existing instance")
    meta_table = read_table(meta) if meta is not None else None
    if key is not None:
        _check_key_column(key, sources, meta_table, meta)
    if layout_cols:  # before anything is written
        have = set(meta_table.column_names if meta_table is not None else ())
        for s in sources:
            have |= set(getattr(s, "meta_cols", ()))
        missing = [c for c in layout_cols if c not in have]
        if missing:
            raise InputError(f"layout: no column {missing[0]!r} in the input table"
                             f"{' or --meta' if meta is not None else ''}; columns there: "
                             f"{sorted(have)}")

    cluster = cluster_implementation("ingest")
    if cluster is not None:  # shards written by the workers (bigembed.distributed)
        cluster.check(out=out, appending=appending)
    provenance = {"source": "ingest", "inputs": [str(Path(p).resolve()) for p in inputs]}
    invalid: list[int] = []
    n_invalid = 0
    keep_masks = []
    extras = []
    row = 0
    mode = "append" if appending else "create"
    with DatasetWriter(out, mode=mode, overwrite=overwrite, provenance=provenance) as dw:
        dim = next(iter(dims)) if dims else None
        bar = progress_bar(total=total, desc=f"ingest {space}", unit="rows", enabled=progress)
        sw_cm = None
        sw = None
        done = None if cluster is None or total is None else cluster.write(
            dw=dw, sources=sources, space=space, dtype=store, total=total, open_kw=dict(
                column=column, array=array, key=key, exclude=layout_cols),
            provenance=provenance, drop_invalid=drop_invalid, extras=extras,
            keep_masks=keep_masks, progress=progress)
        if done is not None:
            sw_cm, sw, row = done
        try:
            for src in (sources if done is None else ()):
                for vec, extra in src.batches(batch_rows):
                    if sw is None:
                        dim = vec.shape[1]
                        if dim < 1:
                            raise InputError(f"{src.path} has vectors of dimension 0")
                        sw_cm = dw.space(space, dim=dim, dtype=store,
                                         total_rows=None if drop_invalid else total,
                                         provenance=provenance)
                        sw = sw_cm.__enter__()
                    if vec.shape[1] != dim:
                        raise InputError(f"{src.path} has dimension {vec.shape[1]}, expected "
                                         f"{dim}")
                    with np.errstate(over="ignore", invalid="ignore"):
                        v = vec.astype(DTYPES[store], copy=False)
                        finite = np.isfinite(v).all(axis=1)
                    bad = np.flatnonzero(~finite)
                    if len(bad):
                        n_invalid += len(bad)
                        invalid.extend((row + bad[: SHOW_IDS - len(invalid)]).tolist()
                                       if len(invalid) < SHOW_IDS else [])
                    if n_invalid and not drop_invalid:
                        row += len(vec)
                        bar.update(len(vec))
                        continue  # keep scanning to report the full count, write nothing
                    if len(bad):
                        v = v[finite]
                    sw.write(v)
                    keep_masks.append(finite)
                    if extra is not None:
                        extras.append(extra)
                    row += len(vec)
                    bar.update(len(vec))
            if sw is None:
                raise InputError(f"inputs {[str(p) for p in inputs]} hold no rows")
            if n_invalid and not drop_invalid:
                raise InputError(
                    f"{n_invalid} of {row} rows hold NaN or Inf (first ids: {invalid}); fix the "
                    f"input or pass --drop-invalid to leave them out"
                )
            if n_invalid and appending:
                raise InputError(
                    f"{n_invalid} rows hold NaN or Inf (first ids: {invalid}); rows cannot be "
                    f"dropped when adding a space to an existing dataset (ids must line up)"
                )
            sw_cm.__exit__(None, None, None)
            sw_cm = None
        except BaseException as e:
            if sw_cm is not None:
                sw_cm.__exit__(type(e), e, e.__traceback__)
            raise
        finally:
            bar.close()
        if n_invalid:
            log.warning("dropped %d rows holding NaN or Inf (first input rows: %s)",
                        n_invalid, invalid)
            dw.set_dropped(space, {"count": n_invalid, "first_input_rows": invalid,
                                   "reason": "NaN or Inf"})
        keep = np.concatenate(keep_masks) if keep_masks else np.ones(0, bool)
        table = _assemble_meta(meta_table, extras, keep, n_invalid, key, meta, row)
        xy = _layout_xy(table, layout_cols) if layout_cols else None
        if table is not None:
            _check_unique_keys(table, key, inputs, meta, allow_duplicate_keys)
            dw.set_meta(table, key=key)
    ds = Dataset.open(out, verify="none")
    lay = None
    if xy is not None:
        from ..reduce.run import import_layout

        lay = import_layout(ds, xy, space=space, progress=progress,
                            source={"columns": list(layout_cols),
                                    "from": [str(Path(p)) for p in inputs] +
                                    ([str(meta)] if meta is not None else [])})
    rec = ds.manifest["spaces"][space]
    return IngestResult(out, space, rec["rows"], rec["dim"], rec["dtype"], len(rec["shards"]),
                        sum(s["bytes"] for s in rec["shards"]), n_invalid, invalid,
                        time.perf_counter() - t0, lay)


def _layout_columns(layout) -> tuple:
    if layout is None:
        return ()
    cols = [c.strip() for c in layout.split(",")] if isinstance(layout, str) else list(layout)
    if len(cols) != 2 or not all(isinstance(c, str) and c for c in cols) or cols[0] == cols[1]:
        raise InputError(f"layout must name two different columns, 'x,y', got {layout!r}")
    return tuple(cols)


def _layout_xy(table, cols) -> np.ndarray:
    """The (N, 2) float64 coordinates from columns ``cols`` of the id-ordered metadata."""
    out = []
    for c in cols:
        a = table.column(c)
        if not (pa.types.is_floating(a.type) or pa.types.is_integer(a.type)):
            raise InputError(f"layout: column {c!r} holds {a.type}, expected numbers")
        v = a.to_numpy(zero_copy_only=False).astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(v))
        if len(bad):
            raise InputError(f"layout: column {c!r} has {len(bad)} missing or non-finite "
                             f"values (first ids: {bad[:SHOW_IDS].tolist()})")
        out.append(v)
    return np.stack(out, axis=1)


def _check_key_column(key, sources, meta_table, meta_path) -> None:
    """Refuse a ``key`` no input file and no metadata file has, naming the columns there are."""
    have: list[str] = []
    for s in sources:
        have += [c for c in getattr(s, "meta_cols", []) if c not in have]
    if meta_table is not None:
        have += [c for c in meta_table.column_names if c not in have]
    if key in have:
        return
    where = "the inputs" + (f" or {meta_path}" if meta_path is not None else "")
    cols = (f"the columns there are {have}" if have else
            "they have no columns (.npy/.npz hold only vectors; give the keys in --meta)")
    raise InputError(f"key: no column {key!r} in {where}; {cols}")


def _check_unique_keys(table: pa.Table, key, inputs, meta_path, allow: bool) -> None:
    """Refuse keys that name several instances (unless ``allow``: then warn)."""
    import pyarrow.compute as pc

    col = key if key is not None and key in table.column_names else (
        "key" if "key" in table.column_names else None)
    if col is None:
        return
    values = table.column(col).cast(pa.string())
    counts = pc.value_counts(values)
    dup = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    dup = pc.filter(dup, pc.is_valid(dup.field("values")))
    if not len(dup):
        return
    first = dup[0]["values"].as_py()
    ids = np.flatnonzero(values.to_numpy(zero_copy_only=False) == first)[:5].tolist()
    what = (f"{len(dup)} keys occur more than once in column {col!r}, e.g. {first!r} "
            f"{dup[0]['counts'].as_py()} times (ids {ids})")
    if allow:
        log.warning("%s; a lookup by such a key uses its first instance", what)
        return
    src = ", ".join(str(p) for p in inputs) + (f" / {meta_path}" if meta_path else "")
    raise InputError(f"key: {what} in {src}; a key must name one instance to look it up "
                     f"(neighbors --key). Fix the input, or pass --allow-duplicate-keys")


def _assemble_meta(meta_table, extras, keep, n_invalid, key, meta_path, rows):
    """Metadata rows in id order: the --meta file (by row order or key) and table columns."""
    extra = pa.concat_tables(extras) if extras else None
    if extra is not None and n_invalid:
        extra = extra.filter(pa.array(keep))
    if meta_table is None:
        if n_invalid:
            src = pa.array(np.flatnonzero(keep).astype(np.int64))
            extra = pa.table({"source_row": src}) if extra is None else extra.append_column(
                "source_row", src)
        return extra
    if key is not None and extra is not None and key in extra.column_names:
        keys = extra.column(key).combine_chunks()
        joined = _join_by_key(meta_table, keys, key, meta_path)
        for c in extra.column_names:
            if c not in joined.column_names:
                joined = joined.append_column(c, extra.column(c))
        return joined
    if meta_table.num_rows != rows:
        raise InputError(
            f"meta: {meta_path} has {meta_table.num_rows} rows but the inputs hold {rows} "
            f"vectors; they are joined by row order, so the counts must match (or join by a "
            f"shared column with --key)"
        )
    if n_invalid:
        meta_table = meta_table.filter(pa.array(keep))
        meta_table = meta_table.append_column(
            "source_row", pa.array(np.flatnonzero(keep).astype(np.int64)))
    if extra is not None:
        for c in extra.column_names:
            if c not in meta_table.column_names:
                meta_table = meta_table.append_column(c, extra.column(c))
    return meta_table
