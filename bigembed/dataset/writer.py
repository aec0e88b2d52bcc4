"""Writing a dataset: :class:`DatasetWriter` creates one, or adds spaces and metadata to an
existing one, as one transaction (:mod:`bigembed.dataset.transaction`): new files under
temporary names, then, under the dataset's lock, renames to names no manifest has listed and
one atomic manifest replace merged with what other writers committed meanwhile. A killed writer
leaves the previous dataset or the complete new one (plus orphans that ``gc`` removes)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import DatasetError, InputError
from . import _atomic
from .format import (
    ARTIFACT_KINDS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    META,
    _check_name,
    _now,
    _version,
    file_checksum,
)
from .reader import Dataset
from .shards import SpaceWriter
from .transaction import (
    READ_ONLY_ERRNOS,
    dataset_lock,
    not_writable,
    read_manifest,
    remove_unreferenced,
    unique_name,
    write_manifest,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Writing a dataset
# --------------------------------------------------------------------------------------------


class DatasetWriter:
    """Creates a dataset, or adds spaces / metadata to an existing one, atomically.

    ``mode="create"`` builds the whole dataset in a temporary sibling directory and renames it
    into place at the end (``overwrite=True`` replaces an existing one, swapping the two in one
    step where Linux allows). ``mode="append"`` adds spaces and/or replaces the metadata of an
    existing dataset: it checks the dataset is writable and collects orphans first, writes each
    space to a temporary directory inside it, and commits under the dataset's lock, merging
    with the manifest on disk then (another writer's space or index committed meanwhile stays).

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
        self._meta_merge: tuple | None = None
        self.rows: int | None = None
        if mode == "create":
            if self.path.exists() and not overwrite:
                raise InputError(
                    f"out: {self.path} already exists; pass --overwrite to replace it, or "
                    f"choose another path"
                )
            if self.path.exists() and not self.path.is_dir():
                raise InputError(f"out: {self.path} exists and is not a directory")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                _atomic.remove_stale_temps(self.path.parent, self.path.name)
                self.work = _atomic.tmp_name(self.path)
                self.work.mkdir()
            except OSError as e:
                if e.errno in READ_ONLY_ERRNOS:
                    raise InputError(f"out: cannot create {self.path} ({e.strerror}: "
                                     f"{e.filename}); choose a writable path") from None
                raise
            self.base_manifest = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "rows": None,
                "created": _now(), "bigembed_version": _version(),
                "provenance": self.provenance, "spaces": {},
            }
        else:
            ds = Dataset.open(self.path, verify="fast")
            # Refuse a read-only dataset before any work; collect killed writers' orphans.
            ds.prepare_write("spaces")
            self.dataset = ds
            self.work = self.path
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
                f"space: dataset {self.path} already has a space {name!r}; pass --overwrite "
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

    def adopt_space(self, name: str, directory, rec: dict) -> None:
        """Add space ``name`` from a finished space directory written elsewhere in the same
        filesystem (an extraction staged under ``cache/``): the directory is moved, not copied,
        and ``rec`` is its manifest entry (dim, dtype, rows, shards with checksums)."""
        _check_name("space", name)
        if name in self.base_manifest.get("spaces", {}) and not self.overwrite:
            raise InputError(
                f"space: dataset {self.path} already has a space {name!r}; pass --overwrite "
                f"to replace it, or choose another name")
        if name in self._spaces:
            raise InputError(f"space {name!r} written twice in one command")
        if self.rows is not None and int(rec["rows"]) != self.rows:
            raise InputError(
                f"space {name!r} has {rec['rows']} rows but dataset {self.path} has "
                f"{self.rows}; every space holds one vector per instance")
        tmpdir = _atomic.tmp_name(self.work / "spaces" / name)
        tmpdir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(directory, tmpdir)
        rec = {k: v for k, v in rec.items() if k != "dir"}
        rec["status"] = "complete"
        self.rows = int(rec["rows"])
        self._spaces[name] = rec
        self._space_dirs[name] = tmpdir

    def merge_meta_columns(self, table: pa.Table, *, must_match=()) -> None:
        """Add the columns of ``table`` (one row per instance, id order) that the dataset's
        metadata lacks, at commit time and under the lock, so columns another command added
        meanwhile are kept. Columns already there are left as they are, except that those
        named in ``must_match`` must hold the same values (the same instances in the same
        order), else nothing is stored."""
        if self.mode != "append":
            raise InputError("merge_meta_columns is for adding to an existing dataset")
        self._meta_merge = (table, tuple(must_match))

    def _merge_meta(self, current: dict) -> None:
        import pyarrow.parquet as pq

        table, must_match = self._meta_merge
        rec = current.get("meta")
        base = (pq.read_table(self.path / rec["file"]) if rec else
                pa.table({"id": pa.array(np.arange(self.rows, dtype=np.int64))}))
        if table.num_rows != base.num_rows:
            raise InputError(f"meta: {table.num_rows} new metadata rows for a dataset of "
                             f"{base.num_rows}; nothing was stored")
        added = []
        for c in table.column_names:
            if c == "id":
                continue
            if c in base.column_names:
                if c in must_match and not base.column(c).equals(
                        table.column(c).cast(base.column(c).type)):
                    a = base.column(c).to_numpy(zero_copy_only=False)
                    b = table.column(c).to_numpy(zero_copy_only=False)
                    first = int(np.flatnonzero(a != b)[0]) if len(a) == len(b) else 0
                    raise InputError(
                        f"meta: column {c!r} of {self.path} differs from the new data's at id "
                        f"{first} ({a[first]!r} there, {b[first]!r} here): is it the same "
                        f"data in the same order? Nothing was stored")
                continue
            base = base.append_column(c, table.column(c))
            added.append(c)
        self._meta_merge = None
        if added:
            self._write_meta_table(base)

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

    def set_rows(self, rows: int) -> None:
        """Declare the number of rows of a dataset written without vectors (a layout and
        metadata from elsewhere); a space written too must have as many."""
        if self.rows is not None and self.rows != int(rows):
            raise InputError(f"rows: the dataset has {self.rows} rows, got {rows}")
        self.rows = int(rows)

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
                f"meta: the metadata has {self._meta_rows} rows but the vectors have "
                f"{self.rows}; they must match (one metadata row per vector)"
            )
        try:
            if self.mode == "create":
                self._commit_create()
            else:
                with dataset_lock(self.path):
                    self._commit_append()
        except OSError as e:
            if e.errno in READ_ONLY_ERRNOS:
                raise not_writable(self.path, e) from None
            raise

    def _apply(self, manifest: dict, created: list) -> list:
        """Rename the new files to their final names (recorded in ``created``) and record them
        in ``manifest``; return the relative paths of what they replace."""
        replaced = []
        manifest["rows"] = self.rows
        manifest.setdefault("spaces", {})
        for name, rec in self._spaces.items():
            final = unique_name(self.work / "spaces", name)
            os.replace(self._space_dirs[name], final)
            created.append(final)
            old = manifest["spaces"].get(name)
            if old is not None:
                replaced.append(old.get("dir", f"spaces/{name}"))
            rec = dict(rec)
            rec["dir"] = str(final.relative_to(self.work))
            if self._dropped and self._dropped["space"] == name:
                rec["dropped"] = {k: v for k, v in self._dropped.items() if k != "space"}
            manifest["spaces"][name] = rec
            # Derived artifacts of a replaced space are stale.
            for kind in ARTIFACT_KINDS:
                for aname, a in list(manifest.get(kind, {}).items()):
                    if a.get("space") == name:
                        replaced.append(manifest[kind].pop(aname).get("file"))
        if self._spaces:
            _atomic.fsync_dir(self.work / "spaces")
        if self._meta_tmp is None and self.mode == "create":
            self._write_meta_table(pa.table({"id": pa.array(np.arange(self.rows,
                                                                      dtype=np.int64))}))
        if self._meta_tmp is not None:
            checksum = file_checksum(self._meta_tmp)
            # A new name when a meta file is there: the old manifest keeps pointing at a
            # complete file until the new manifest is in place.
            final = self.work / META
            if final.exists():
                final = unique_name(self.work, f"meta.{checksum[:16]}", ".parquet")
            os.replace(self._meta_tmp, final)
            self._meta_tmp = None
            created.append(final)
            _atomic.fsync_dir(self.work)
            if manifest.get("meta"):
                replaced.append(manifest["meta"]["file"])
            manifest["meta"] = {"file": final.name, "rows": self._meta_rows or self.rows,
                                "bytes": final.stat().st_size, "xxh3_64": checksum,
                                "columns": _parquet_columns(final)}
        manifest["updated"] = _now()
        return replaced

    def _commit_append(self) -> None:
        current = read_manifest(self.path)
        if int(current.get("rows") or 0) != self.rows:
            raise DatasetError(
                f"dataset {self.path} now has {current.get('rows')} rows (changed by another "
                f"command since this one started with {self.rows}); nothing was stored")
        for name in self._spaces:
            if name in current.get("spaces", {}) and \
                    name not in self.base_manifest.get("spaces", {}) and not self.overwrite:
                raise InputError(
                    f"space: another command added a space {name!r} to {self.path} while "
                    f"this one was written; nothing was stored. Pass --overwrite to replace "
                    f"it, or choose another --space")
        if self._meta_merge is not None:
            self._merge_meta(current)
        created: list = []
        try:
            replaced = self._apply(current, created)
            write_manifest(self.path, current)
        except BaseException:
            for p in created:  # renamed, never listed: remove so no orphan is left
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(
                    missing_ok=True)
            raise
        self.base_manifest = current
        remove_unreferenced(self.path, current, replaced)

    def _commit_create(self) -> None:
        manifest = json.loads(json.dumps(self.base_manifest))
        self._apply(manifest, [])
        _atomic.write_json(self.work / MANIFEST, manifest)
        _atomic.fsync_dir(self.work)
        if not self.path.exists():
            try:
                os.rename(self.work, self.path)
            except OSError:
                if self.path.exists() and not self.overwrite:
                    raise InputError(f"out: {self.path} was created by another command while "
                                     f"this one ran; nothing was stored. Choose another path "
                                     f"or pass --overwrite") from None
                if not self.path.exists():
                    raise
                self._replace_existing()
        else:
            self._replace_existing()
        _atomic.fsync_dir(self.path.parent)

    def _replace_existing(self) -> None:
        if not self.overwrite:
            raise InputError(f"out: {self.path} was created by another command while this "
                             f"one ran; nothing was stored. Choose another path or pass "
                             f"--overwrite")
        # Swap in one step where the OS can (the old dataset moves to our work name, and is
        # removed); elsewhere there is a moment with no dataset at the path.
        if _atomic.exchange(self.work, self.path):
            shutil.rmtree(self.work, ignore_errors=True)
            return
        trash = _atomic.tmp_name(self.path)
        os.replace(self.path, trash)
        os.replace(self.work, self.path)
        shutil.rmtree(trash, ignore_errors=True)


def _parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).schema_arrow.names
