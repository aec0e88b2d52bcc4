"""Reading a dataset: :class:`Dataset` (the manifest, metadata, derived artifacts) and
:class:`Space` (one set of vectors, memory-mapped, verified against the manifest's checksums).

The manifest is the truth. A file that is not listed in it (a temp file of a killed writer, a
space being written) is invisible to readers.
"""

from __future__ import annotations

import contextlib
import fcntl
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
    file_checksum,
)
from .shards import read_shard

log = logging.getLogger(__name__)


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
        from ..progress import progress_bar

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
