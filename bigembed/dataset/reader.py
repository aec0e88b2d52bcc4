"""Reading a dataset: :class:`Dataset` (the manifest, metadata, derived artifacts) and
:class:`Space` (one set of vectors, memory-mapped, verified against the manifest's checksums).

The manifest is the truth. A file that is not listed in it (a temp file of a killed writer, a
space being written) is invisible to readers.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import xxhash

from ..errors import DatasetError, InputError
from . import _atomic, _mmap
from .format import (
    ARTIFACT_KINDS,
    DTYPES,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    _now,
    checksum_matches,
    file_checksum,
)
from .shards import read_shard
from .transaction import (
    READ_ONLY_ERRNOS,
    check_writable,
    dataset_lock,
    not_writable,
    read_manifest,
    remove_unreferenced,
    unique_name,
    write_manifest,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


class Space:
    """One set of vectors for all N rows of a dataset (a layer, a checkpoint, a file).

    ``space.vectors`` is an (N, dim) read-only numpy array mapped from the shards without
    copying, after the shards' checksums were verified (once per process per file version:
    damaged bytes never answer a query). :meth:`iter_batches` streams it in (start, array)
    pieces.
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
        """Array of shape (rows, dim), read-only, memory-mapped (no copy); the shards'
        checksums are verified first (:meth:`ensure_verified`)."""
        if self._vectors is None:
            self.ensure_verified()
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
        from ..progress import progress_bar

        problems = []
        try:
            self.check()
        except DatasetError as e:
            return [str(e)]
        shards = self.record["shards"]
        for s in progress_bar(shards, desc=f"verify {self.name}", unit="shard", enabled=progress):
            p = self.directory / s["file"]
            try:
                ok, got = checksum_matches(p, s["xxh3_64"])
            except OSError as e:
                problems.append(f"space {self.name!r}: shard {p} cannot be read: {e}")
                continue
            if not ok:
                problems.append(
                    f"space {self.name!r}: shard {p} checksum is {got}, the manifest says "
                    f"{s['xxh3_64']} (bytes changed on disk)"
                )
        return problems

    def ensure_verified(self) -> None:
        """Recompute the shard checksums once per process; raise :class:`DatasetError` on a
        mismatch. :attr:`vectors` calls it, so damaged bytes never answer a query nor become
        a plausible-looking layout, index or graph."""
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
    ``Dataset.from_arrays(path, vectors, meta=None, space="default")`` and
    ``ds.to_pandas(space=None)`` come from :mod:`bigembed.dataset.arrays` (attached by the
    package, since they write and read layouts, which sit above this module).
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
        self._meta_cols: dict[str, np.ndarray] = {}

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

    def _verify_meta(self) -> None:
        """Check meta's size and checksum (once per process per file version)."""
        self._check_meta()
        rec = self.manifest.get("meta")
        if not rec or "xxh3_64" not in rec:
            return
        p = self.path / rec["file"]
        try:
            ok, got = checksum_matches(p, rec["xxh3_64"])
        except OSError as e:
            raise DatasetError(f"{p} cannot be read: {e}") from None
        if not ok:
            raise DatasetError(f"{p} checksum is {got}, the manifest says {rec['xxh3_64']} "
                               f"(bytes changed on disk); restore it or re-ingest the "
                               f"metadata")

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
            elif not checksum_matches(p, rec["xxh3_64"])[0]:
                problems.append(f"{p} checksum differs from the manifest (bytes changed on disk)")
        for kind in ARTIFACT_KINDS:
            for name, a in self.manifest.get(kind, {}).items():
                p = self.path / a["file"]
                if not p.exists():
                    problems.append(f"{kind[:-1]} {name!r}: {p} is missing")
                elif "xxh3_64" in a and not checksum_matches(p, a["xxh3_64"])[0]:
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
                raise DatasetError(f"dataset {self.path} has no vectors (no spaces: a layout "
                                   f"and metadata only); what needs vectors (true neighbours, "
                                   f"layout quality, indexes) cannot run on it. Add a space "
                                   f"with `bigembed ingest {self.path} --space NAME ...`")
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
                f"space: dataset {self.path} has no space {name!r}; it has "
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
                self._verify_meta()
                p = self.path / rec["file"]
                try:
                    self._meta = pq.read_table(p).to_pandas()
                except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError
                    raise DatasetError(f"{p} cannot be read as Parquet ({e}); restore it or "
                                       f"re-ingest the metadata") from None
            else:
                self._meta = pd.DataFrame({"id": np.arange(self.rows, dtype=np.int64)})
        return self._meta

    def meta_columns(self) -> list[str]:
        """Names of the metadata columns, from the Parquet schema (nothing else is read)."""
        if self._meta is not None:
            return list(self._meta.columns)
        rec = self.manifest.get("meta")
        if not rec:
            return ["id"]
        import pyarrow.parquet as pq

        p = self.path / rec["file"]
        try:
            return list(pq.read_schema(p).names)
        except (OSError, ValueError) as e:
            raise DatasetError(f"{p} cannot be read as Parquet ({e}); restore it or "
                               f"re-ingest the metadata") from None

    def meta_column(self, name: str) -> np.ndarray:
        """One metadata column as a numpy array in id order, read alone (and kept) when the
        metadata is not loaded (a billion-row dataset's label, without the rest)."""
        if self._meta is not None or not self.manifest.get("meta"):
            return self.meta[name].to_numpy()
        got = self._meta_cols.get(name)
        if got is None:
            got = self._meta_cols[name] = self._read_meta_column(name)
        return got

    def _read_meta_column(self, name: str) -> np.ndarray:
        import pyarrow.parquet as pq

        if name not in self.meta_columns():
            raise InputError(f"dataset {self.path} has no metadata column {name!r}; it has "
                             f"{self.meta_columns()}")
        self._verify_meta()
        p = self.path / self.manifest["meta"]["file"]
        try:
            col = pq.read_table(p, columns=[name]).column(0)
        except (OSError, ValueError) as e:
            raise DatasetError(f"{p} cannot be read as Parquet ({e}); restore it or "
                               f"re-ingest the metadata") from None
        return col.to_numpy() if col.null_count == 0 else col.to_pandas().to_numpy()

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

    # -- writing (transactions: see bigembed.dataset.transaction) ------------------------
    def prepare_write(self, *subdirs: str) -> None:
        """Call before computing something to store: raises :class:`DatasetError` at once when
        the dataset (or ``subdirs``) cannot be written, and collects the orphans of killed
        writers under the lock (live writers' temporaries are kept)."""
        from .gc import collect_garbage

        with dataset_lock(self.path):
            check_writable(self.path, *subdirs)
            collect_garbage(self.path)

    def update_manifest(self, fn) -> dict:
        """Apply ``fn(manifest) -> None`` to the manifest on disk now, under the writer lock,
        and replace it atomically (what other writers committed meanwhile is kept)."""
        with dataset_lock(self.path):
            current = read_manifest(self.path)
            fn(current)
            current["updated"] = _now()
            write_manifest(self.path, current)
        self.manifest = current
        return current

    def _space_changed(self, current: dict, space: str | None) -> bool:
        """Whether space ``space`` differs in ``current`` from when this dataset was opened."""
        if space is None:
            return False
        mine = (self.manifest.get("spaces") or {}).get(space)
        now = (current.get("spaces") or {}).get(space)
        if mine is None or now is None:
            return mine is not now
        return [s.get("xxh3_64") for s in mine.get("shards", [])] != \
            [s.get("xxh3_64") for s in now.get("shards", [])]

    def write_artifact(self, kind: str, name: str, writer, record: dict, suffix: str) -> Path:
        """Write a derived artifact and list it in the manifest, as one transaction.

        ``writer(tmp_path)`` writes the file (under a temporary name, outside the lock);
        ``record`` (JSON-able) is stored with it. Under the lock the file is renamed to
        ``<dataset>/<kind>/<name><suffix>``, or to a new unique name when a file is already
        there (``--force``: the old one stays complete until the manifest switches), and
        merged into the manifest on disk. Returns the final path.
        """
        if kind not in ARTIFACT_KINDS:
            raise InputError(f"kind must be one of {ARTIFACT_KINDS}, got {kind!r}")
        d = self.path / kind
        try:
            d.mkdir(exist_ok=True)
            tmp = _atomic.tmp_name(d / f"{name}{suffix}")
        except OSError as e:
            if e.errno in READ_ONLY_ERRNOS:
                raise not_writable(self.path, e) from None
            raise
        try:
            try:
                writer(tmp)
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
            except OSError as e:
                if e.errno in READ_ONLY_ERRNOS:
                    raise not_writable(self.path, e) from None
                raise
            rec = dict(record)
            rec.update(bytes=tmp.stat().st_size, xxh3_64=file_checksum(tmp), created=_now())
            with dataset_lock(self.path):
                current = read_manifest(self.path)
                if self._space_changed(current, record.get("space")):
                    raise DatasetError(
                        f"space {record.get('space')!r} of {self.path} was replaced or removed "
                        f"by another command while this {kind[:-1]} was computed from it; "
                        f"nothing was stored. Rerun the command")
                final = unique_name(d, name, suffix)
                os.replace(tmp, final)
                _atomic.fsync_dir(d)
                rec["file"] = f"{kind}/{final.name}"
                old = (current.get(kind) or {}).get(name)
                current.setdefault(kind, {})[name] = rec
                current["updated"] = _now()
                try:
                    write_manifest(self.path, current)
                except BaseException:
                    final.unlink(missing_ok=True)
                    raise
                remove_unreferenced(self.path, current, [old.get("file") if old else None])
        finally:
            tmp.unlink(missing_ok=True)
        self.manifest = current
        return final

    def remove_artifact(self, kind: str, name: str) -> None:
        self.artifact_path(kind, name)  # raises when there is none

        def drop(m):
            rec = m.get(kind, {}).pop(name, None)
            dropped.append(rec.get("file") if rec else None)

        dropped: list = []
        with dataset_lock(self.path):
            m = self.update_manifest(drop)
            remove_unreferenced(self.path, m, dropped)

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


def verify_artifact(ds: Dataset, what: str, name: str, rec: dict) -> None:
    """Raise :class:`DatasetError` unless the artifact file of ``rec`` is there with the
    checksum the manifest records (computed once per process per file version)."""
    p = ds.path / rec["file"]
    if "xxh3_64" not in rec:
        return
    try:
        ok, got = checksum_matches(p, rec["xxh3_64"])
    except FileNotFoundError:
        raise DatasetError(f"{what} {name!r}: {p} is missing") from None
    except OSError as e:
        raise DatasetError(f"{what} {name!r}: {p} cannot be read: {e}") from None
    if not ok:
        raise DatasetError(f"{what} {name!r}: {p} checksum is {got}, the manifest says "
                           f"{rec['xxh3_64']} (bytes changed on disk); recompute it with "
                           f"--force")


def open_dataset(path, **kw) -> Dataset:
    """Shorthand for :meth:`Dataset.open`."""
    return Dataset.open(path, **kw)


# --------------------------------------------------------------------------------------------
# Opening datasets once per process
# --------------------------------------------------------------------------------------------

_DS_CACHE: dict = {}
_DS_LOCK = threading.Lock()


def open_cached(ds) -> Dataset:
    """``Dataset.open`` once per process per manifest version (the manifest's mtime/size)."""
    if isinstance(ds, Dataset):
        return ds
    path = Path(ds)
    try:
        st = os.stat(path / "manifest.json")
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        return Dataset.open(path)  # raises the clear error
    key = str(path.resolve())
    with _DS_LOCK:
        hit = _DS_CACHE.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    d = Dataset.open(path)
    with _DS_LOCK:
        _DS_CACHE[key] = (stamp, d)
    return d
