"""The dataset directory: the contract between stages.

::

    <dataset>/
      manifest.json        written last, atomically: format version, rows, spaces, artifacts
      meta.parquet         one row per instance: id, key, label, prediction, ... user columns
      spaces/<space>/part-00000-of-00012.arrow   Arrow IPC, one FixedSizeList<float, d> column
      layouts/  indexes/  graphs/   derived artifacts, content-keyed, listed in the manifest
      cache/               anything else derived; always safe to delete

The manifest is the truth. A file that is not listed in it (a temp file of a killed writer, a
space being written) is invisible to readers. Every file is written to a temporary name,
fsynced and renamed, and the manifest is replaced last, so a reader sees the dataset either
as it was before a command or as the command left it, never half-way.

Each shard holds one record batch whose vector body starts on a page boundary, so the shards
of a space map into one contiguous N x d array without copying (see :mod:`bigembed._mmap`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import xxhash

from . import _atomic, _mmap
from .errors import DatasetError, InputError

log = logging.getLogger(__name__)

FORMAT = "bigembed.dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
META = "meta.parquet"
VECTOR_FIELD = "vector"
DTYPES = {"float32": np.float32, "float16": np.float16}
_ARROW_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}
#: Target bytes per shard; a space of 1M x 768 float32 becomes 12 shards. The environment
#: variable BIGEMBED_SHARD_BYTES overrides it (smaller shards: finer resume points).
SHARD_BYTES = int(os.environ.get("BIGEMBED_SHARD_BYTES", 256 * 1024 * 1024))
_PAD_KEY = b"bigembed.pad"
ARTIFACT_KINDS = ("layouts", "indexes", "graphs")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _version() -> str:
    from . import __version__

    return __version__


def file_checksum(path: Path, chunk: int = 16 * 1024 * 1024) -> str:
    """xxh3-64 of a file's bytes as 16 hex digits (about 10 GB/s, so verifying is cheap)."""
    h = xxhash.xxh3_64()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def shard_rows_for(dim: int, dtype: str, shard_bytes: int | None = None) -> int:
    """Rows per shard: about ``shard_bytes`` and a multiple that keeps bodies page-sized."""
    shard_bytes = shard_bytes or SHARD_BYTES
    row_bytes = dim * np.dtype(DTYPES[dtype]).itemsize
    step = int(_mmap.PAGE // np.gcd(_mmap.PAGE, row_bytes))
    rows = max(1, shard_bytes // row_bytes)
    return int(max(step, rows // step * step))


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not name or name.startswith(".") or any(
        c in name for c in "/\\\0"
    ) or name != name.strip():
        raise InputError(
            f"{kind} name must be a non-empty string without '/', '\\' or a leading '.', "
            f"got {name!r}"
        )
    return name


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


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


class Space:
    """One set of vectors for all N rows of a dataset (a layer, a checkpoint, a file).

    ``space.vectors`` is an (N, dim) read-only numpy array mapped from the shards without
    copying. :meth:`iter_batches` streams it in (start, array) pieces.
    """

    def __init__(self, dataset: "Dataset", name: str, record: dict):
        self.dataset = dataset
        self.name = name
        self.record = record
        self.dim = int(record["dim"])
        self.dtype = record["dtype"]
        self.rows = int(record["rows"])
        self.directory = dataset.path / record.get("dir", f"spaces/{name}")
        self._vectors = None
        self._shard_arrays = None

    def __repr__(self) -> str:
        return f"Space({self.name!r}, rows={self.rows}, dim={self.dim}, dtype={self.dtype})"

    @property
    def shard_paths(self) -> list[Path]:
        return [self.directory / s["file"] for s in self.record["shards"]]

    def check(self) -> None:
        """Cheap structural checks: every shard present, its size, schema and rows as listed."""
        self._open_shards()

    def _open_shards(self):
        if self._shard_arrays is not None:
            return self._shard_arrays
        arrays, infos = [], []
        start = 0
        for s in self.record["shards"]:
            p = self.directory / s["file"]
            if p.exists() and p.is_file() and p.stat().st_size != s["bytes"]:
                raise DatasetError(
                    f"space {self.name!r}: shard {p} is {p.stat().st_size} bytes, the manifest "
                    f"says {s['bytes']} (truncated or replaced?)"
                )
            if s.get("start", start) != start:
                raise DatasetError(f"space {self.name!r}: shard {p} starts at {s['start']}, expected {start}")
            a, info = read_shard(p, dim=self.dim, dtype=self.dtype, rows=s["rows"], space=self.name)
            arrays.append(a)
            infos.append((str(p), info))
            start += s["rows"]
        if start != self.rows:
            raise DatasetError(
                f"space {self.name!r}: shards hold {start} rows, the manifest says {self.rows}"
            )
        self._shard_arrays = (arrays, infos)
        return self._shard_arrays

    @property
    def vectors(self) -> np.ndarray:
        """Array of shape (rows, dim), read-only, memory-mapped (no copy)."""
        if self._vectors is None:
            arrays, infos = self._open_shards()
            if len(arrays) == 1:
                self._vectors = arrays[0]
            else:
                itemsize = np.dtype(DTYPES[self.dtype]).itemsize
                nbytes = self.rows * self.dim * itemsize
                raw = _mmap.map_contiguous(
                    [(p, i.body_offset, i.body_bytes) for p, i in infos], nbytes
                )
                if raw is None:
                    log.warning("space %r: shards not page-aligned; concatenating (copies %d MB)",
                                self.name, nbytes >> 20)
                    v = np.concatenate(arrays, axis=0)
                    v.flags.writeable = False
                    self._vectors = v
                else:
                    self._vectors = raw.view(DTYPES[self.dtype]).reshape(self.rows, self.dim)
        return self._vectors

    def iter_batches(self, batch_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (start_id, array of shape (b, dim)) pieces covering all rows in order."""
        v = self.vectors
        for s in range(0, self.rows, batch_rows):
            yield s, v[s:s + batch_rows]

    def verify(self, progress: bool = False) -> list[str]:
        """Full check: recompute every shard's checksum. Returns a list of problems (empty: ok)."""
        from .progress import progress_bar

        problems = []
        try:
            self.check()
        except DatasetError as e:
            return [str(e)]
        shards = self.record["shards"]
        for s in progress_bar(shards, desc=f"verify {self.name}", unit="shard", enabled=progress):
            p = self.directory / s["file"]
            got = file_checksum(p)
            if got != s["xxh3_64"]:
                problems.append(
                    f"space {self.name!r}: shard {p} checksum is {got}, the manifest says "
                    f"{s['xxh3_64']} (bytes changed on disk)"
                )
        return problems

    def ensure_verified(self) -> None:
        """Recompute the shard checksums once per process; raise :class:`DatasetError` on a
        mismatch. Stages that derive artifacts from every vector (layouts, indexes, graphs)
        call this first, so damaged bytes never become a plausible-looking result."""
        if getattr(self, "_verified", False):
            return
        problems = self.verify()
        if problems:
            raise DatasetError("; ".join(problems) + "; restore the file or re-create the space")
        self._verified = True

    @property
    def fingerprint(self) -> str:
        """Content hash of the space, from the shard checksums (cheap: nothing is read)."""
        h = xxhash.xxh3_64()
        h.update(f"{self.dim}:{self.dtype}:{self.rows}".encode())
        for s in self.record["shards"]:
            h.update(s["xxh3_64"].encode())
        return h.hexdigest()


class Dataset:
    """An opened dataset directory. Use :meth:`open`.

    Attributes: ``path``, ``manifest`` (dict), ``rows`` (N), ``spaces`` (name -> Space).
    """

    def __init__(self, path: Path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        self.rows = int(manifest["rows"])
        self.spaces = {
            name: Space(self, name, rec) for name, rec in manifest.get("spaces", {}).items()
            if rec.get("status", "complete") == "complete"
        }
        self._meta = None

    def __repr__(self) -> str:
        return f"Dataset({str(self.path)!r}, rows={self.rows}, spaces={list(self.spaces)})"

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, path, *, verify: str = "fast") -> "Dataset":
        """Open and validate a dataset directory.

        verify: ``"fast"`` checks every listed file's presence, size and structure (milliseconds
        for any size); ``"full"`` also recomputes checksums; ``"none"`` reads only the manifest.
        """
        if verify not in ("fast", "full", "none"):
            raise InputError(f"verify must be 'fast', 'full' or 'none', got {verify!r}")
        path = Path(path)
        if not path.exists():
            raise DatasetError(f"dataset {path} does not exist")
        if not path.is_dir():
            raise DatasetError(f"dataset {path} is not a directory (a dataset is a directory "
                               f"holding {MANIFEST})")
        mpath = path / MANIFEST
        if not mpath.is_file():
            partial = [p.name for p in path.parent.glob(f".{path.name}{_atomic.TMP_MARK}*")]
            hint = " (an interrupted write left a temporary copy; rerun the command)" if partial else ""
            raise DatasetError(f"dataset {path} has no {MANIFEST}; it is not a bigembed dataset "
                               f"or was never completed{hint}")
        try:
            manifest = json.loads(mpath.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise DatasetError(f"{mpath} is not valid JSON: {e}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise DatasetError(f"{mpath} is not a bigembed manifest (no format {FORMAT!r})")
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise DatasetError(
                f"{mpath} has format version {manifest.get('format_version')}, this bigembed "
                f"reads up to {FORMAT_VERSION}; upgrade bigembed"
            )
        ds = cls(path, manifest)
        if verify != "none":
            for sp in ds.spaces.values():
                sp.check()
            ds._check_meta()
        if verify == "full":
            problems = ds.verify()
            if problems:
                raise DatasetError("; ".join(problems))
        return ds

    def _check_meta(self) -> None:
        rec = self.manifest.get("meta")
        if not rec:
            return
        p = self.path / rec["file"]
        if not p.is_file():
            raise DatasetError(f"dataset {self.path}: {p} is missing")
        if p.stat().st_size != rec["bytes"]:
            raise DatasetError(
                f"{p} is {p.stat().st_size} bytes, the manifest says {rec['bytes']}"
            )

    def verify(self, progress: bool = False) -> list[str]:
        """Recompute every checksum; return the problems found (empty list: all good)."""
        problems = []
        for sp in self.spaces.values():
            problems += sp.verify(progress=progress)
        rec = self.manifest.get("meta")
        if rec:
            p = self.path / rec["file"]
            if not p.is_file():
                problems.append(f"{p} is missing")
            elif file_checksum(p) != rec["xxh3_64"]:
                problems.append(f"{p} checksum differs from the manifest (bytes changed on disk)")
        for kind in ARTIFACT_KINDS:
            for name, a in self.manifest.get(kind, {}).items():
                p = self.path / a["file"]
                if not p.exists():
                    problems.append(f"{kind[:-1]} {name!r}: {p} is missing")
                elif "xxh3_64" in a and file_checksum(p) != a["xxh3_64"]:
                    problems.append(f"{kind[:-1]} {name!r}: {p} checksum differs from the manifest")
        return problems

    # -- access --------------------------------------------------------------------------
    def space(self, name: str | None = None) -> Space:
        """The named space; with ``None``, the only space (or the one named 'default')."""
        if name is None:
            if len(self.spaces) == 1:
                return next(iter(self.spaces.values()))
            if "default" in self.spaces:
                return self.spaces["default"]
            if not self.spaces:
                raise DatasetError(f"dataset {self.path} has no spaces")
            raise InputError(
                f"dataset {self.path} has several spaces {sorted(self.spaces)}; choose one "
                f"with --space"
            )
        if name not in self.spaces:
            incomplete = self.manifest.get("spaces", {}).get(name)
            if incomplete is not None:
                raise DatasetError(
                    f"space {name!r} of {self.path} is incomplete "
                    f"({len(incomplete.get('shards', []))} shards written); rerun the command "
                    f"that writes it to finish"
                )
            import difflib

            close = difflib.get_close_matches(name, list(self.spaces), n=3)
            hint = f"; did you mean {close}?" if close else ""
            raise InputError(
                f"--space: dataset {self.path} has no space {name!r}; it has "
                f"{sorted(self.spaces)}{hint}"
            )
        return self.spaces[name]

    @property
    def meta(self):
        """The per-instance metadata as a pandas DataFrame (one row per id, in id order)."""
        if self._meta is None:
            import pandas as pd
            import pyarrow.parquet as pq

            rec = self.manifest.get("meta")
            if rec:
                self._meta = pq.read_table(self.path / rec["file"]).to_pandas()
            else:
                self._meta = pd.DataFrame({"id": np.arange(self.rows, dtype=np.int64)})
        return self._meta

    def artifacts(self, kind: str) -> dict:
        if kind not in ARTIFACT_KINDS:
            raise InputError(f"kind must be one of {ARTIFACT_KINDS}, got {kind!r}")
        return dict(self.manifest.get(kind, {}))

    def artifact_path(self, kind: str, name: str) -> Path:
        rec = self.artifacts(kind).get(name)
        if rec is None:
            raise InputError(f"dataset {self.path} has no {kind[:-1]} {name!r}")
        return self.path / rec["file"]

    def reload(self) -> "Dataset":
        return Dataset.open(self.path, verify="none")

    # -- derived artifacts ---------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self):
        lock = self.path / ".lock"
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def update_manifest(self, fn) -> dict:
        """Apply ``fn(manifest) -> None`` to the manifest on disk under a lock, atomically."""
        with self._locked():
            current = json.loads((self.path / MANIFEST).read_text())
            fn(current)
            current["updated"] = _now()
            _atomic.write_json(self.path / MANIFEST, current)
        self.manifest = current
        return current

    def write_artifact(self, kind: str, name: str, writer, record: dict, suffix: str) -> Path:
        """Write a derived artifact atomically and list it in the manifest.

        ``writer(tmp_path)`` writes the file; ``record`` (JSON-able) is stored with it.
        Returns the final path ``<dataset>/<kind>/<name><suffix>``.
        """
        if kind not in ARTIFACT_KINDS:
            raise InputError(f"kind must be one of {ARTIFACT_KINDS}, got {kind!r}")
        d = self.path / kind
        d.mkdir(exist_ok=True)
        final = d / f"{name}{suffix}"
        with _atomic.atomic_path(final) as tmp:
            writer(tmp)
        rec = dict(record)
        rec.update(file=f"{kind}/{final.name}", bytes=final.stat().st_size,
                   xxh3_64=file_checksum(final), created=_now())

        def add(m):
            m.setdefault(kind, {})[name] = rec

        self.update_manifest(add)
        return final

    def remove_artifact(self, kind: str, name: str) -> None:
        path = self.artifact_path(kind, name)

        def drop(m):
            m.get(kind, {}).pop(name, None)

        self.update_manifest(drop)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def info(self) -> dict:
        """A JSON-able summary: rows, spaces, sizes, artifacts."""
        spaces = {}
        for name, rec in self.manifest.get("spaces", {}).items():
            spaces[name] = {
                "dim": rec["dim"], "dtype": rec["dtype"], "rows": rec["rows"],
                "shards": len(rec.get("shards", [])),
                "bytes": sum(s["bytes"] for s in rec.get("shards", [])),
                "status": rec.get("status", "complete"),
                "provenance": rec.get("provenance", {}),
            }
            if rec.get("dropped"):
                spaces[name]["dropped"] = rec["dropped"]
        out = {
            "path": str(self.path), "rows": self.rows, "format_version":
            self.manifest.get("format_version"), "created": self.manifest.get("created"),
            "spaces": spaces,
            "meta": self.manifest.get("meta"),
        }
        for kind in ARTIFACT_KINDS:
            out[kind] = self.manifest.get(kind, {})
        return out


# --------------------------------------------------------------------------------------------
# Writing a dataset
# --------------------------------------------------------------------------------------------


class DatasetWriter:
    """Creates a dataset, or adds spaces / metadata to an existing one, atomically.

    ``mode="create"`` builds the whole dataset in a temporary sibling directory and renames it
    into place at the end (``overwrite=True`` replaces an existing one). ``mode="append"`` adds
    spaces to an existing dataset: each is written to a temporary directory inside it, and the
    manifest, replaced last, is what makes them visible.

    ::

        with DatasetWriter(path, mode="create") as dw:
            with dw.space("default", dim=128) as sw:
                for batch in batches:
                    sw.write(batch)
            dw.set_meta(table)
    """

    def __init__(self, path, *, mode: str = "create", overwrite: bool = False,
                 provenance: dict | None = None):
        if mode not in ("create", "append"):
            raise InputError(f"mode must be 'create' or 'append', got {mode!r}")
        self.path = Path(path)
        self.mode = mode
        self.overwrite = overwrite
        self.provenance = provenance or {}
        self._spaces: dict[str, dict] = {}
        self._space_dirs: dict[str, Path] = {}
        self._meta_tmp: Path | None = None
        self._meta_rows: int | None = None
        self._dropped: dict | None = None
        self._old_dirs: list[Path] = []
        self.rows: int | None = None
        if mode == "create":
            if self.path.exists() and not overwrite:
                raise InputError(
                    f"--out: {self.path} already exists; pass --overwrite to replace it, or "
                    f"choose another path"
                )
            if self.path.exists() and not self.path.is_dir():
                raise InputError(f"--out: {self.path} exists and is not a directory")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _atomic.remove_stale_temps(self.path.parent, self.path.name)
            self.work = _atomic.tmp_name(self.path)
            self.work.mkdir()
            self.base_manifest = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "rows": None,
                "created": _now(), "bigembed_version": _version(),
                "provenance": self.provenance, "spaces": {},
            }
        else:
            ds = Dataset.open(self.path, verify="fast")
            self.dataset = ds
            self.work = self.path
            _atomic.remove_stale_temps(self.path / "spaces")
            self.base_manifest = ds.manifest
            self.rows = ds.rows

    @contextlib.contextmanager
    def space(self, name: str, *, dim: int, dtype: str = "float32",
              total_rows: int | None = None, provenance: dict | None = None,
              rows_per_shard: int | None = None):
        """Context manager yielding a :class:`SpaceWriter` for space ``name``."""
        _check_name("space", name)
        exists = name in self.base_manifest.get("spaces", {})
        if exists and not self.overwrite:
            raise InputError(
                f"--space: dataset {self.path} already has a space {name!r}; pass --overwrite "
                f"to replace it, or choose another --space"
            )
        if name in self._spaces:
            raise InputError(f"space {name!r} written twice in one command")
        tmpdir = _atomic.tmp_name(self.work / "spaces" / name)
        tmpdir.parent.mkdir(parents=True, exist_ok=True)
        sw = SpaceWriter(tmpdir, name, dim=dim, dtype=dtype, total_rows=total_rows,
                         provenance=provenance, rows_per_shard=rows_per_shard)
        try:
            yield sw
            rec = sw.close()
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        if self.rows is not None and rec["rows"] != self.rows:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise InputError(
                f"space {name!r} has {rec['rows']} rows but dataset {self.path} has "
                f"{self.rows}; every space holds one vector per instance"
            )
        self.rows = rec["rows"]
        self._spaces[name] = rec
        self._space_dirs[name] = tmpdir

    def set_dropped(self, space: str, info: dict) -> None:
        self._dropped = {"space": space, **info}

    def set_meta(self, table: pa.Table | None, *, key: str | None = None) -> None:
        """Write the metadata table (one row per instance, in id order); ids are added."""
        if table is None:
            return
        if "id" in table.column_names:
            table = table.drop_columns(["id"])
        n = table.num_rows
        table = table.add_column(0, "id", pa.array(np.arange(n, dtype=np.int64)))
        if key is not None and key != "key" and key in table.column_names:
            table = table.append_column("key", table.column(key).cast(pa.string()))
        elif "key" in table.column_names:
            table = table.set_column(table.column_names.index("key"), "key",
                                     table.column("key").cast(pa.string()))
        self._write_meta_table(table)

    def _write_meta_table(self, table: pa.Table) -> None:
        import pyarrow.parquet as pq

        if self._meta_tmp is not None:
            self._meta_tmp.unlink(missing_ok=True)
        tmp = _atomic.tmp_name(self.work / META)
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        self._meta_tmp = tmp
        self._meta_rows = table.num_rows

    def set_meta_file(self, tmp_parquet: Path, rows: int) -> None:
        """Adopt an already written parquet file (streamed by the caller) as the metadata."""
        self._meta_tmp = Path(tmp_parquet)
        self._meta_rows = rows

    def meta_tmp_path(self) -> Path:
        return _atomic.tmp_name(self.work / META)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._abort()
            return False
        try:
            self._commit()
        except BaseException:
            self._abort()
            raise
        return False

    def _abort(self) -> None:
        for d in self._space_dirs.values():
            shutil.rmtree(d, ignore_errors=True)
        if self._meta_tmp is not None:
            self._meta_tmp.unlink(missing_ok=True)
        if self.mode == "create":
            shutil.rmtree(self.work, ignore_errors=True)

    def _commit(self) -> None:
        if self.rows is None:
            raise InputError("nothing was written: a dataset needs at least one space")
        if self._meta_rows is not None and self._meta_rows != self.rows:
            raise InputError(
                f"--meta: the metadata has {self._meta_rows} rows but the vectors have "
                f"{self.rows}; they must match (one metadata row per vector)"
            )
        manifest = json.loads(json.dumps(self.base_manifest))
        manifest["rows"] = self.rows
        manifest.setdefault("spaces", {})
        for name, rec in self._spaces.items():
            tmpdir = self._space_dirs[name]
            final = self.work / "spaces" / name
            if final.exists():
                # Replacing a space: the new one goes beside the old, the manifest switches
                # to it, then the old one is removed.
                final = self.work / "spaces" / f"{name}.{uuid.uuid4().hex[:8]}"
            old = manifest["spaces"].get(name)
            if old is not None:
                self._old_dirs.append(self.work / old.get("dir", f"spaces/{name}"))
            os.replace(tmpdir, final)
            rec = dict(rec)
            rec["dir"] = str(final.relative_to(self.work))
            if self._dropped and self._dropped["space"] == name:
                rec["dropped"] = {k: v for k, v in self._dropped.items() if k != "space"}
            manifest["spaces"][name] = rec
            # Derived artifacts of a replaced space are stale.
            for kind in ARTIFACT_KINDS:
                for aname, a in list(manifest.get(kind, {}).items()):
                    if a.get("space") == name:
                        manifest[kind].pop(aname)
        _atomic.fsync_dir(self.work / "spaces")
        if self._meta_tmp is not None:
            os.replace(self._meta_tmp, self.work / META)
            p = self.work / META
            manifest["meta"] = {"file": META, "rows": self._meta_rows,
                                "bytes": p.stat().st_size, "xxh3_64": file_checksum(p),
                                "columns": _parquet_columns(p)}
            self._meta_tmp = None
        elif self.mode == "create":
            self._write_default_meta(manifest)
        manifest["updated"] = _now()
        _atomic.write_json(self.work / MANIFEST, manifest)
        if self.mode == "create":
            trash = None
            if self.path.exists():
                trash = _atomic.tmp_name(self.path)
                os.replace(self.path, trash)
            os.replace(self.work, self.path)
            _atomic.fsync_dir(self.path.parent)
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
        for d in self._old_dirs:
            shutil.rmtree(d, ignore_errors=True)

    def _write_default_meta(self, manifest: dict) -> None:
        table = pa.table({"id": pa.array(np.arange(self.rows, dtype=np.int64))})
        self._write_meta_table(table)
        os.replace(self._meta_tmp, self.work / META)
        p = self.work / META
        manifest["meta"] = {"file": META, "rows": self.rows, "bytes": p.stat().st_size,
                            "xxh3_64": file_checksum(p), "columns": ["id"]}
        self._meta_tmp = None


def _parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).schema_arrow.names


def open_dataset(path, **kw) -> Dataset:
    """Shorthand for :meth:`Dataset.open`."""
    return Dataset.open(path, **kw)
