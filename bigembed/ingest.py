"""Ingest vectors from files into a dataset space, streaming in batches.

Readers turn ``.npy``, ``.npz``, ``.parquet``, ``.arrow``/``.feather`` and ``.csv`` files into
an iterator of ``(vectors, extra_columns)`` batches, so a 5 GB input never needs twice its size
in memory: the writer holds at most one shard.

Column rules for table files (Parquet, Arrow, CSV):

* a list or fixed-size-list column holds the vectors (``column=`` picks one among several);
  every other column becomes metadata;
* otherwise every column is a vector component, except the ``key`` column and the well-known
  metadata columns (:data:`META_COLUMNS`), which become metadata; a non-numeric component is an
  error naming the column.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from .dataset import DTYPES, Dataset, DatasetWriter
from .errors import InputError
from .progress import progress_bar

log = logging.getLogger(__name__)

META_COLUMNS = {"id", "key", "label", "prediction", "confidence", "loss", "text", "image",
                "split", "name", "path", "url", "caption", "target"}
SUFFIXES = {".npy": "npy", ".npz": "npz", ".parquet": "parquet", ".pq": "parquet",
            ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow", ".csv": "csv"}
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


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


class Source:
    """A vector file opened for streaming. ``rows`` may be None where it is not known ahead."""

    kind = "?"

    def __init__(self, path: Path):
        self.path = path
        self.rows: int | None = None
        self.dim: int = 0
        self.dtype = np.float32

    def batches(self, batch_rows: int) -> Iterator[tuple[np.ndarray, pa.Table | None]]:
        raise NotImplementedError


def _check_file(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"input {path} does not exist")
    if path.is_dir():
        raise InputError(f"input {path} is a directory, expected a file")
    if path.stat().st_size == 0:
        raise InputError(f"input {path} is empty (0 bytes)")
    return path


def _float_dtype(dt, path, what) -> type:
    dt = np.dtype(dt)
    if dt.kind == "O":
        raise InputError(
            f"{path}{what} holds Python objects; refusing to load it (pickle can run code). "
            f"Save a numeric array instead"
        )
    if dt.kind not in "fiub":
        raise InputError(f"{path}{what} has dtype {dt}, expected numbers (float or int)")
    return np.float16 if dt == np.float16 else np.float32


class NpySource(Source):
    kind = "npy"

    def __init__(self, path: Path):
        super().__init__(path)
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            if "allow_pickle" in str(e) or "object" in str(e).lower():
                raise InputError(
                    f"{path} holds Python objects; refusing to load it (pickle can run code). "
                    f"Save a numeric array instead"
                ) from None
            raise InputError(f"{path} is not a valid .npy file: {e}") from None
        except (EOFError, OSError) as e:
            raise InputError(f"{path} is not a valid .npy file (truncated?): {e}") from None
        if isinstance(arr, np.lib.npyio.NpzFile):  # a .npz saved under .npy
            raise InputError(f"{path} is an .npz archive; rename it to .npz")
        self.dtype = _float_dtype(arr.dtype, path, "")
        if arr.ndim != 2:
            raise InputError(f"{path} holds an array of shape {arr.shape}, expected 2-D "
                             f"(rows, dim)")
        self.arr = arr
        self.rows, self.dim = arr.shape

    def batches(self, batch_rows):
        for s in range(0, self.rows, batch_rows):
            yield np.asarray(self.arr[s:s + batch_rows]), None


class NpzSource(Source):
    """One array of an .npz archive, read row-block by row-block from the zip member."""

    kind = "npz"
    PREFERRED = ("vectors", "embeddings", "embedding", "X", "x", "arr_0")

    def __init__(self, path: Path, array: str | None = None):
        super().__init__(path)
        try:
            self.zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise InputError(f"{path} is not a valid .npz archive: {e}") from None
        names = [n[:-4] for n in self.zf.namelist() if n.endswith(".npy")]
        if not names:
            raise InputError(f"{path} holds no arrays")
        if array is not None:
            if array not in names:
                raise InputError(f"--array: {path} has no array {array!r}; it has {names}")
            self.name = array
        else:
            shapes = {n: self._header(n)[0] for n in names}
            two_d = [n for n in names if len(shapes[n]) == 2]
            pick = [n for n in self.PREFERRED if n in two_d]
            if len(two_d) == 1:
                self.name = two_d[0]
            elif pick:
                self.name = pick[0]
            else:
                raise InputError(
                    f"{path} holds arrays {names} with shapes {[shapes[n] for n in names]}; "
                    f"choose the vectors with --array NAME"
                )
        shape, fortran, dt = self._header(self.name)
        self.dtype = _float_dtype(dt, path, f" (array {self.name!r})")
        if len(shape) != 2:
            raise InputError(f"{path} array {self.name!r} has shape {shape}, expected 2-D "
                             f"(rows, dim)")
        self.rows, self.dim = shape
        self.fortran = fortran
        self.file_dtype = dt

    def _header(self, name):
        with self.zf.open(name + ".npy") as f:
            try:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    return np.lib.format.read_array_header_1_0(f)
                return np.lib.format.read_array_header_2_0(f)
            except ValueError as e:
                raise InputError(f"{self.path} array {name!r} has a bad header: {e}") from None

    def batches(self, batch_rows):
        with self.zf.open(self.name + ".npy") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                np.lib.format.read_array_header_1_0(f)
            else:
                np.lib.format.read_array_header_2_0(f)
            if self.fortran:  # column-major: rows are not contiguous, read it whole
                data = np.frombuffer(f.read(), dtype=self.file_dtype)
                arr = data.reshape(self.rows, self.dim, order="F")
                for s in range(0, self.rows, batch_rows):
                    yield np.ascontiguousarray(arr[s:s + batch_rows]), None
                return
            row_bytes = self.dim * self.file_dtype.itemsize
            done = 0
            while done < self.rows:
                n = min(batch_rows, self.rows - done)
                raw = f.read(n * row_bytes)
                if len(raw) != n * row_bytes:
                    raise InputError(f"{self.path} array {self.name!r} is truncated at row "
                                     f"{done + len(raw) // max(row_bytes, 1)}")
                yield np.frombuffer(raw, dtype=self.file_dtype).reshape(n, self.dim), None
                done += n


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


class TableSource(Source):
    """Parquet, Arrow IPC or CSV: a vector column, or many numeric columns."""

    def __init__(self, path: Path, *, column: str | None, key: str | None):
        super().__init__(path)
        self.key = key
        schema = self._schema()
        names = schema.names
        if not names:
            raise InputError(f"{path} has no columns")
        lists = [f.name for f in schema if _is_list(f.type)]
        if column is not None:
            cols = [c.strip() for c in column.split(",") if c.strip()]
            missing = [c for c in cols if c not in names]
            if missing:
                raise InputError(f"--column: {path} has no column {missing[0]!r}; it has {names}")
            if len(cols) == 1 and _is_list(schema.field(cols[0]).type):
                self.list_col, self.vec_cols = cols[0], None
            else:
                self.list_col, self.vec_cols = None, cols
        elif len(lists) == 1:
            self.list_col, self.vec_cols = lists[0], None
        elif len(lists) > 1:
            raise InputError(f"{path} has several list columns {lists}; choose the vectors "
                             f"with --column NAME")
        else:
            self.list_col = None
            self.vec_cols = [n for n in names if n != key and n.lower() not in META_COLUMNS]
            if not self.vec_cols:
                raise InputError(f"{path} has no vector columns (columns: {names})")
        if self.list_col is not None:
            t = schema.field(self.list_col).type
            if not (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)):
                raise InputError(
                    f"{path} column {self.list_col!r} holds lists of {t.value_type}, "
                    f"expected numbers"
                )
            self.dtype = np.float16 if pa.types.is_float16(t.value_type) else np.float32
            self.dim = t.list_size if pa.types.is_fixed_size_list(t) else None
        else:
            for c in self.vec_cols:
                t = schema.field(c).type
                if not (pa.types.is_floating(t) or pa.types.is_integer(t)
                        or pa.types.is_boolean(t) or pa.types.is_null(t)):
                    raise InputError(
                        f"{path} column {c!r} is {t}, expected numbers; every column other "
                        f"than the key and metadata columns ({sorted(META_COLUMNS)}) is read as "
                        f"a vector component. Choose the vector columns with --column"
                    )
            self.dim = len(self.vec_cols)
            self.dtype = np.float32
        self.meta_cols = [n for n in names if n != self.list_col and
                          (self.vec_cols is None or n not in self.vec_cols)]
        self._row = 0

    def _schema(self) -> pa.Schema:
        raise NotImplementedError

    def _raw_batches(self, batch_rows) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError

    def _to_numpy(self, batch: pa.RecordBatch) -> np.ndarray:
        if self.list_col is not None:
            col = batch.column(self.list_col)
            if col.null_count:
                first = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
                raise InputError(f"{self.path} column {self.list_col!r}: row "
                                 f"{self._row + first} is null, expected a vector")
            if pa.types.is_fixed_size_list(col.type):
                vals = col.flatten()
                d = col.type.list_size
            else:
                offsets = np.asarray(col.offsets)
                lengths = np.diff(offsets)
                if self.dim is None:
                    self.dim = int(lengths[0]) if len(lengths) else 0
                bad = np.flatnonzero(lengths != self.dim)
                if len(bad):
                    r = int(bad[0])
                    raise InputError(
                        f"{self.path} column {self.list_col!r}: row {self._row + r} has "
                        f"{int(lengths[r])} values, expected {self.dim} like the rows before it "
                        f"(ragged rows cannot form vectors)"
                    )
                vals = col.flatten()
                d = self.dim
            if vals.null_count:
                raise InputError(f"{self.path} column {self.list_col!r} has null values inside "
                                 f"vectors (near row {self._row})")
            arr = vals.to_numpy(zero_copy_only=False).reshape(-1, d) if d else np.empty(
                (batch.num_rows, 0))
            return arr
        cols = []
        for c in self.vec_cols:
            a = batch.column(c)
            if pa.types.is_null(a.type) or a.null_count:
                raise InputError(f"{self.path} column {c!r} has missing values "
                                 f"(near row {self._row}), expected numbers")
            cols.append(a.to_numpy(zero_copy_only=False).astype(np.float32, copy=False))
        return np.stack(cols, axis=1) if cols else np.empty((batch.num_rows, 0), np.float32)

    def batches(self, batch_rows):
        self._row = 0
        for rb in self._raw_batches(batch_rows):
            vec = self._to_numpy(rb)
            extra = None
            if self.meta_cols:
                extra = pa.Table.from_batches([rb.select(self.meta_cols)])
            yield vec, extra
            self._row += rb.num_rows


class ParquetSource(TableSource):
    kind = "parquet"

    def __init__(self, path, **kw):
        import pyarrow.parquet as pq

        try:
            self.pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"{path} is not a valid Parquet file: {e}") from None
        super().__init__(path, **kw)
        self.rows = self.pf.metadata.num_rows

    def _schema(self):
        return self.pf.schema_arrow

    def _raw_batches(self, batch_rows):
        try:
            yield from self.pf.iter_batches(batch_size=batch_rows)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"{self.path}: cannot read Parquet data: {e}") from None


class ArrowSource(TableSource):
    kind = "arrow"

    def __init__(self, path, **kw):
        try:
            self.src = pa.memory_map(str(path), "r")
            try:
                self.reader = pa.ipc.open_file(self.src)
                self.stream = False
            except pa.ArrowInvalid:
                self.src.seek(0)
                self.reader = pa.ipc.open_stream(self.src)
                self.stream = True
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"{path} is not a valid Arrow IPC / Feather file: {e}") from None
        super().__init__(path, **kw)
        if not self.stream:
            self.rows = sum(self.reader.get_batch(i).num_rows
                            for i in range(self.reader.num_record_batches))

    def _schema(self):
        return self.reader.schema

    def _raw_batches(self, batch_rows):
        try:
            if self.stream:
                it = iter(self.reader)
            else:
                it = (self.reader.get_batch(i) for i in range(self.reader.num_record_batches))
            for b in it:
                for s in range(0, b.num_rows, batch_rows):
                    yield b.slice(s, batch_rows)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"{self.path}: cannot read Arrow data: {e}") from None


class CsvSource(TableSource):
    kind = "csv"

    def __init__(self, path, **kw):
        import pyarrow.csv as pcsv

        self._pcsv = pcsv
        with open(path, "rb") as f:
            first = f.readline().decode("utf-8", "replace").strip()
        fields = [x.strip() for x in first.split(",")]

        def isnum(x):
            try:
                float(x)
                return True
            except ValueError:
                return False

        self.header = not all(isnum(x) for x in fields if x != "")
        self.read_opts = pcsv.ReadOptions(
            autogenerate_column_names=not self.header, block_size=16 << 20)
        try:
            self.reader = pcsv.open_csv(path, read_options=self.read_opts)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"{path} is not a readable CSV file: {e}") from None
        super().__init__(path, **kw)

    def _schema(self):
        return self.reader.schema

    def _raw_batches(self, batch_rows):
        try:
            for b in self.reader:
                for s in range(0, b.num_rows, batch_rows):
                    yield b.slice(s, batch_rows)
        except pa.ArrowInvalid as e:
            raise InputError(
                f"{self.path}: a value is not a number (after row {self._row}): {e}"
            ) from None


def open_source(path, *, column: str | None = None, array: str | None = None,
                key: str | None = None) -> Source:
    """Open a vector file by its suffix."""
    path = _check_file(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"input {path}: unknown file type {path.suffix!r}; expected one of "
                         f"{sorted(SUFFIXES)}")
    if kind == "npy":
        return NpySource(path)
    if kind == "npz":
        return NpzSource(path, array)
    cls = {"parquet": ParquetSource, "arrow": ArrowSource, "csv": CsvSource}[kind]
    return cls(path, column=column, key=key)


def read_table(path) -> pa.Table:
    """Read a metadata file (Parquet, Arrow/Feather, CSV) into a table."""
    path = _check_file(path)
    kind = SUFFIXES.get(path.suffix.lower())
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        if kind == "arrow":
            import pyarrow.feather as feather

            return feather.read_table(path)
        if kind == "csv":
            import pyarrow.csv as pcsv

            return pcsv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"--meta: {path} cannot be read: {e}") from None
    raise InputError(f"--meta: {path} has unknown type {path.suffix!r}; expected .parquet, "
                     f".arrow/.feather or .csv")


# --------------------------------------------------------------------------------------------
# Ingest
# --------------------------------------------------------------------------------------------


def _join_by_key(meta: pa.Table, keys: pa.Array, key: str, meta_path) -> pa.Table:
    import pyarrow.compute as pc

    if key not in meta.column_names:
        raise InputError(f"--key: {meta_path} has no column {key!r}; it has {meta.column_names}")
    mk = meta.column(key).cast(pa.string())
    counts = pc.value_counts(mk)
    dup = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    if len(dup):
        raise InputError(f"--key: {meta_path} column {key!r} has duplicate keys, e.g. "
                         f"{dup.field('values')[0].as_py()!r}")
    idx = pc.index_in(keys.cast(pa.string()), value_set=mk)
    if idx.null_count:
        missing = pc.filter(keys, pc.is_null(idx))
        raise InputError(
            f"--key: {idx.null_count} vector rows have no metadata row in {meta_path}, e.g. "
            f"key {missing[0].as_py()!r}"
        )
    return meta.take(idx)


def ingest(inputs, *, out, space: str = "default", meta=None, key: str | None = None,
           column: str | None = None, array: str | None = None, dtype: str | None = None,
           drop_invalid: bool = False, overwrite: bool = False, batch_rows: int = 65536,
           progress: bool | None = None) -> IngestResult:
    """Write vectors from ``inputs`` (files, concatenated in order) as space ``space`` of the
    dataset at ``out`` (created if missing; otherwise the space is added to it).

    Rows holding NaN or Inf are refused, naming how many and the first ids, unless
    ``drop_invalid`` (then they are left out and listed in the manifest).
    """
    import time

    t0 = time.perf_counter()
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if not inputs:
        raise InputError("ingest needs at least one INPUT file")
    if dtype is not None and dtype not in DTYPES:
        raise InputError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    sources = [open_source(p, column=column, array=array, key=key) for p in inputs]
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
            raise InputError(f"--out: {out} exists and is not a bigembed dataset; choose "
                             f"another path or pass --overwrite")
    if appending and total is not None:
        n0 = Dataset.open(out, verify="none").rows
        if total != n0:
            raise InputError(f"inputs hold {total} rows but dataset {out} has {n0}; a new space "
                             f"needs one vector per existing instance")
    meta_table = read_table(meta) if meta is not None else None

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
        try:
            for src in sources:
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
        if table is not None:
            dw.set_meta(table, key=key)
    ds = Dataset.open(out, verify="none")
    rec = ds.manifest["spaces"][space]
    return IngestResult(out, space, rec["rows"], rec["dim"], rec["dtype"], len(rec["shards"]),
                        sum(s["bytes"] for s in rec["shards"]), n_invalid, invalid,
                        time.perf_counter() - t0)


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
            f"--meta: {meta_path} has {meta_table.num_rows} rows but the inputs hold {rows} "
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
