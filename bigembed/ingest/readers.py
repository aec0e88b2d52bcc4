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
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from ..errors import InputError

log = logging.getLogger(__name__)

META_COLUMNS = {"id", "key", "label", "prediction", "confidence", "loss", "text", "image",
                "split", "name", "path", "url", "caption", "target"}
SUFFIXES = {".npy": "npy", ".npz": "npz", ".parquet": "parquet", ".pq": "parquet",
            ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow", ".csv": "csv"}


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
                raise InputError(f"array: {path} has no array {array!r}; it has {names}")
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

    def __init__(self, path: Path, *, column: str | None, key: str | None,
                 exclude: tuple = ()):
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
                raise InputError(f"column: {path} has no column {missing[0]!r}; it has {names}")
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
            # ``exclude``: columns that are metadata whatever they hold (a layout's x, y)
            self.vec_cols = [n for n in names if n != key and n not in exclude
                             and n.lower() not in META_COLUMNS]
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
                key: str | None = None, exclude: tuple = ()) -> Source:
    """Open a vector file by its suffix; ``exclude``: table columns never read as vector
    components."""
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
    return cls(path, column=column, key=key, exclude=tuple(exclude))


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
        raise InputError(f"meta: {path} cannot be read: {e}") from None
    raise InputError(f"meta: {path} has unknown type {path.suffix!r}; expected .parquet, "
                     f".arrow/.feather or .csv")
