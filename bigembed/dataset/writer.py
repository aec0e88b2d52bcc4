"""Writing a dataset: :class:`DatasetWriter` creates one, or adds spaces and metadata to an
existing one, and commits by replacing the manifest last (atomically), so a killed writer
leaves the previous dataset or the complete new one."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import InputError
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

log = logging.getLogger(__name__)


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
                    f"out: {self.path} already exists; pass --overwrite to replace it, or "
                    f"choose another path"
                )
            if self.path.exists() and not self.path.is_dir():
                raise InputError(f"out: {self.path} exists and is not a directory")
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
                f"meta: the metadata has {self._meta_rows} rows but the vectors have "
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
