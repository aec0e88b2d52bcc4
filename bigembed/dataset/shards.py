"""Space shards: one Arrow IPC record batch each, its vector body on a page boundary.

:func:`write_shard` / :class:`SpaceWriter` write them (temporary name, fsync, rename);
:func:`read_shard` validates one and returns its vector body's offset, so the shards of a
space map back to back into one contiguous N x d array (:mod:`bigembed.dataset._mmap`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import DatasetError, InputError
from . import _atomic, _mmap
from .format import (
    _ARROW_DTYPES,
    _PAD_KEY,
    DTYPES,
    VECTOR_FIELD,
    file_checksum,
    shard_rows_for,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardInfo:
    """Where a shard's vector body lies in its file, as found by :func:`read_shard`."""

    rows: int
    dim: int
    dtype: str
    body_offset: int
    body_bytes: int


def _shard_schema(dim: int, dtype: str, pad: int, extra: dict | None = None) -> pa.Schema:
    field = pa.field(VECTOR_FIELD, pa.list_(pa.field("item", _ARROW_DTYPES[dtype], nullable=False), dim), nullable=False)
    md = {_PAD_KEY: b" " * pad}
    for k, v in (extra or {}).items():
        md[k.encode()] = str(v).encode()
    return pa.schema([field], metadata=md)


def _write_shard_file(path: Path, block: np.ndarray, dtype: str, pad: int, extra: dict) -> None:
    rows, dim = block.shape
    flat = pa.array(np.ascontiguousarray(block).reshape(-1), type=_ARROW_DTYPES[dtype])
    arr = pa.FixedSizeListArray.from_arrays(flat, dim)
    schema = _shard_schema(dim, dtype, pad, extra)
    batch = pa.record_batch([arr], schema=schema)
    with pa.OSFile(str(path), "wb") as sink:
        with pa.ipc.new_file(sink, schema) as w:
            w.write_batch(batch)


def read_shard(path: Path, *, dim: int | None = None, dtype: str | None = None,
               rows: int | None = None, space: str = "?") -> tuple[np.ndarray, ShardInfo]:
    """Memory-map one shard and return its (rows, dim) array without copying.

    Checks the structure against what the manifest expects and raises :class:`DatasetError`
    naming the shard and what differs.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"space {space!r}: shard {path} is missing")
    if not path.is_file():
        raise DatasetError(f"space {space!r}: shard {path} is not a regular file")
    try:
        source = pa.memory_map(str(path), "r")
        whole = source.read_buffer()
        reader = pa.ipc.open_file(whole)
        if reader.num_record_batches != 1:
            raise DatasetError(
                f"space {space!r}: shard {path} holds {reader.num_record_batches} record "
                f"batches, expected 1"
            )
        batch = reader.get_batch(0)
    except DatasetError:
        raise
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError, ValueError) as e:
        raise DatasetError(
            f"space {space!r}: shard {path} is not a readable Arrow IPC file "
            f"(truncated or damaged?): {e}"
        ) from None
    if batch.num_columns != 1 or batch.schema.names[0] != VECTOR_FIELD:
        raise DatasetError(
            f"space {space!r}: shard {path} has columns {batch.schema.names}, "
            f"expected one column {VECTOR_FIELD!r}"
        )
    typ = batch.schema.field(0).type
    if not pa.types.is_fixed_size_list(typ):
        raise DatasetError(f"space {space!r}: shard {path} has type {typ}, expected fixed_size_list")
    found_dtype = {pa.float32(): "float32", pa.float16(): "float16"}.get(typ.value_type)
    if found_dtype is None:
        raise DatasetError(
            f"space {space!r}: shard {path} holds {typ.value_type}, expected float32 or float16"
        )
    if dim is not None and typ.list_size != dim:
        raise DatasetError(
            f"space {space!r}: shard {path} has dimension {typ.list_size}, expected {dim} "
            f"(as in the manifest and the other shards)"
        )
    if dtype is not None and found_dtype != dtype:
        raise DatasetError(
            f"space {space!r}: shard {path} holds {found_dtype}, expected {dtype} "
            f"(as in the manifest and the other shards)"
        )
    if rows is not None and batch.num_rows != rows:
        raise DatasetError(
            f"space {space!r}: shard {path} has {batch.num_rows} rows, expected {rows}"
        )
    col = batch.column(0)
    if col.null_count or col.offset:
        raise DatasetError(f"space {space!r}: shard {path} has null or offset vectors")
    values = col.values
    npdtype = DTYPES[found_dtype]
    d = typ.list_size
    n = batch.num_rows
    data_buf = values.buffers()[1]
    nbytes = n * d * np.dtype(npdtype).itemsize
    arr = np.frombuffer(data_buf, dtype=npdtype, count=n * d).reshape(n, d)
    info = ShardInfo(n, d, found_dtype, data_buf.address - whole.address, nbytes)
    return arr, info


def _aligned_pad(path: Path, block: np.ndarray, dtype: str, pad: int, extra: dict) -> int:
    """Write a shard and return the pad that puts its body on a page boundary.

    The body offset depends only on the schema and metadata sizes, not on the values, so once
    a writer knows the right pad every later shard is aligned at the first write.
    """
    for _ in range(6):
        _write_shard_file(path, block, dtype, pad, extra)
        _, info = read_shard(path)
        miss = info.body_offset % _mmap.PAGE
        if miss == 0:
            return pad
        pad += _mmap.PAGE - miss
    log.warning("could not page-align shard %s; reading it will copy", path)
    return pad


def write_shard(directory: Path, block: np.ndarray, *, space: str, index: int, start: int,
                dtype: str = "float32", count: int | None = None, pad: int = 0) -> tuple[dict, int]:
    """Write one shard of a space atomically, page-aligned; return (its manifest record, pad).

    For writers that record each shard in the manifest as soon as it exists (resumable
    extraction). ``block`` has shape (rows, dim); the file is ``part-<index>-of-<count>.arrow``
    (``part-<index>.arrow`` when the count is not known ahead). Pass the returned pad to the next
    call so later shards are aligned at the first write.
    """
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    block = np.ascontiguousarray(block, dtype=DTYPES[dtype])
    if block.ndim != 2 or block.shape[1] < 1 or block.shape[0] < 1:
        raise InputError(f"space {space!r}: shard {index} has shape {block.shape}, "
                         f"expected (rows >= 1, dim >= 1)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = (f"part-{index:05d}-of-{count:05d}.arrow" if count is not None
            else f"part-{index:05d}.arrow")
    final = directory / name
    extra = {"bigembed.space": space, "bigembed.shard": f"{index:012d}",
             "bigembed.start": f"{start:020d}"}
    with _atomic.atomic_path(final) as tmp:
        pad = _aligned_pad(tmp, block, dtype, pad, extra)
    rec = {"file": name, "rows": int(block.shape[0]), "start": int(start),
           "bytes": final.stat().st_size, "xxh3_64": file_checksum(final)}
    return rec, pad


class SpaceWriter:
    """Writes one space as shards, buffering rows until a shard is full.

    Use through :meth:`DatasetWriter.space`. Call :meth:`write` with arrays of shape
    (batch_rows, dim); the shards are finalised when the context exits without error.
    """

    def __init__(self, directory: Path, name: str, *, dim: int, dtype: str = "float32",
                 rows_per_shard: int | None = None, total_rows: int | None = None,
                 provenance: dict | None = None, shard_index: int = 0):
        if dtype not in DTYPES:
            raise InputError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.directory = Path(directory)
        self.name = name
        self.dim = int(dim)
        if self.dim < 1:
            raise InputError(f"space {name!r}: dimension must be >= 1, got {dim}")
        self.dtype = dtype
        self.rows_per_shard = rows_per_shard or shard_rows_for(self.dim, dtype)
        step = int(_mmap.PAGE // np.gcd(_mmap.PAGE, self.dim * np.dtype(DTYPES[dtype]).itemsize))
        self.rows_per_shard = int(self.rows_per_shard)
        if self.rows_per_shard % step:
            self.rows_per_shard = max(step, self.rows_per_shard // step * step)
        self.total_rows = total_rows
        self.provenance = dict(provenance or {})
        self.shards: list[dict] = []
        self.rows = 0
        self._buf = np.empty((self.rows_per_shard, self.dim), dtype=DTYPES[dtype])
        self._fill = 0
        self._pad = 0
        self._first_shard = shard_index
        self.directory.mkdir(parents=True, exist_ok=True)

    def write(self, batch) -> None:
        """Append rows: an array-like of shape (rows, dim)."""
        batch = np.asarray(batch)
        if batch.ndim != 2 or batch.shape[1] != self.dim:
            raise InputError(
                f"space {self.name!r}: batch has shape {batch.shape}, expected (rows, {self.dim})"
            )
        i = 0
        while i < len(batch):
            take = int(min(len(batch) - i, self.rows_per_shard - self._fill))
            self._buf[self._fill:self._fill + take] = batch[i:i + take]
            self._fill += take
            i += take
            if self._fill == self.rows_per_shard:
                self._flush()

    def adopt(self, shards: list) -> None:
        """Take ``shards`` (records in row order, as :func:`write_shard` returns them) that
        other processes (cluster workers) wrote into this writer's directory under their
        final names, as if this writer had written them."""
        if self.shards or self._fill:
            raise InputError(f"space {self.name!r}: shards can be adopted only by an empty "
                             f"writer")
        start = 0
        for s in shards:
            if s["start"] != start:
                raise InputError(f"space {self.name!r}: adopted shard {s['file']} starts at "
                                 f"{s['start']}, expected {start}")
            start += s["rows"]
        self.shards = [dict(s) for s in shards]
        self.rows = start

    def _shard_name(self, index: int, count: int | None) -> str:
        if count is None:
            return f".part-{index:05d}.arrow.partial"
        return f"part-{index:05d}-of-{count:05d}.arrow"

    def _expected_count(self) -> int | None:
        if self.total_rows is None:
            return None
        return max(1, -(-self.total_rows // self.rows_per_shard))

    def _flush(self) -> None:
        if self._fill == 0:
            return
        index = self._first_shard + len(self.shards)
        name = self._shard_name(index, self._expected_count())
        final = self.directory / name
        block = self._buf[: self._fill]
        # Fixed-width values keep the header size, hence the body offset, the same per shard.
        extra = {"bigembed.space": self.name, "bigembed.shard": f"{index:012d}",
                 "bigembed.start": f"{self.rows:020d}"}
        with _atomic.atomic_path(final) as tmp:
            self._pad = _aligned_pad(tmp, block, self.dtype, self._pad, extra)
        self.shards.append({
            "file": name, "rows": int(self._fill), "start": int(self.rows),
            "bytes": final.stat().st_size, "xxh3_64": file_checksum(final),
        })
        self.rows += self._fill
        self._fill = 0

    def close(self) -> dict:
        """Flush the last shard, give shards their final names, return the space record."""
        self._flush()
        count = len(self.shards) + self._first_shard
        if self.total_rows is not None and self._first_shard == 0 and self.rows != self.total_rows:
            raise InputError(
                f"space {self.name!r}: got {self.rows} rows, expected {self.total_rows}"
            )
        for i, rec in enumerate(self.shards):
            want = f"part-{self._first_shard + i:05d}-of-{count:05d}.arrow"
            if rec["file"] != want:
                os.replace(self.directory / rec["file"], self.directory / want)
                rec["file"] = want
        _atomic.fsync_dir(self.directory)
        self._buf = None
        return {
            "dim": self.dim, "dtype": self.dtype, "rows": self.rows,
            "shards": self.shards, "provenance": self.provenance, "status": "complete",
        }
