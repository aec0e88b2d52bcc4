"""Where extraction writes: a dataset whose spaces grow chunk by chunk, resumable after a kill.

Rows are cut into chunks of ``chunk_rows``; chunk ``i`` becomes shard ``i`` of every layer's
space plus one metadata part (``cache/extract/meta-<i>.parquet``). After each chunk the manifest
is replaced (atomically) listing it, with the spaces marked ``status: "partial"`` so readers
ignore them until the end. A rerun with the same identity (model weights, data, layers,
pooling, dtypes, chunk size) verifies the listed chunks' checksums and continues after the last
good one; :meth:`ExtractStore.finish` assembles ``meta.parquet`` and marks everything complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import shutil
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..dataset import _atomic
from ..dataset.format import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    META,
    _now,
    _version,
    file_checksum,
)
from ..dataset.reader import Dataset
from ..dataset.shards import write_shard
from ..errors import BigembedError, InputError

log = logging.getLogger(__name__)

META_PARTS = "cache/extract"


class ExtractError(BigembedError):
    """Extraction stopped (the model raised, the disk filled, ...); finished chunks are kept."""


class ExtractStore:
    """The output dataset of one extraction (see the module docstring)."""

    def __init__(self, out, *, identity: dict, key: str, dims: dict, dtype: str,
                 chunk_rows: int, total_rows: int | None, provenance: dict,
                 space_provenance: dict | None = None, overwrite: bool = False,
                 names: dict | None = None):
        self.path = Path(out)
        #: the space each layer is written as (``fc1@step10`` for a tagged checkpoint)
        self.names = {k: k for k in dims} if names is None else dict(names)
        self.identity = identity
        self.key = key
        self.dims = dict(dims)
        self.dtype = dtype
        self.chunk_rows = int(chunk_rows)
        self.total_rows = total_rows
        self.provenance = provenance
        #: per space: what only that space's provenance says (its pooling, say)
        self.space_provenance = dict(space_provenance or {})
        self.overwrite = overwrite
        self.count = None if total_rows is None else max(1, -(-total_rows // self.chunk_rows))
        self._pads = {name: 0 for name in self.dims}
        self.done_rows = 0
        self.done_chunks = 0
        self.complete = False

    # -- opening ------------------------------------------------------------------------
    def open(self) -> "ExtractStore":
        """Create the dataset, or resume the same extraction; refuse to mix different ones."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise InputError(f"out: {p} exists and is not a directory")
        manifest = None
        if (p / MANIFEST).is_file():
            try:
                manifest = json.loads((p / MANIFEST).read_text())
            except ValueError as e:
                raise InputError(f"out: {p / MANIFEST} is not valid JSON ({e}); choose "
                                 f"another --out") from None
        elif p.exists() and any(not c.name.startswith(".") for c in p.iterdir()):
            raise InputError(f"out: {p} exists, is not empty and is not a bigembed dataset; "
                             f"choose another path (it is never deleted, even with --overwrite)")
        if manifest is not None:
            ext = manifest.get("extract") or {}
            if ext.get("key") == self.key and not self.overwrite:
                return self._resume(manifest)
            if not self.overwrite:
                if ext:
                    old = ext.get("identity", {})
                    diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in self.identity.items()
                            if old.get(k) != v]
                    what = "; ".join(diff) or "the extraction differs"
                    raise InputError(
                        f"out: {p} holds an extraction with different settings ({what}); "
                        f"its shards cannot be mixed with these. Pass --overwrite to replace "
                        f"it, or choose another --out")
                raise InputError(f"out: {p} already holds a dataset not made by this "
                                 f"extraction; pass --overwrite to replace it, or choose "
                                 f"another --out")
            log.info("--overwrite: replacing the dataset at %s", p)
            trash = _atomic.tmp_name(p)
            p.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        self._create()
        return self

    def _create(self) -> None:
        p = self.path
        p.mkdir(parents=True, exist_ok=True)
        _atomic.remove_stale_temps(p)
        spaces = {
            self.names[layer]: {
                "dim": dim, "dtype": self.dtype, "rows": 0, "shards": [],
                "provenance": {**self.provenance, **self.space_provenance.get(layer, {}),
                               "layer": layer, "extract_key": self.key},
                "status": "partial", "dir": f"spaces/{self.names[layer]}"}
            for layer, dim in self.dims.items()
        }
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "rows": self.total_rows or 0,
            "created": _now(), "bigembed_version": _version(), "provenance": self.provenance,
            "spaces": spaces,
            "extract": {"key": self.key, "identity": self.identity, "status": "partial",
                        "chunk_rows": self.chunk_rows, "chunks": []},
            "updated": _now(),
        }
        _atomic.write_json(p / MANIFEST, manifest)

    def _resume(self, manifest: dict) -> "ExtractStore":
        ext = manifest["extract"]
        if ext.get("status") == "complete":
            self.complete = True
            self.done_rows = int(manifest["rows"])
            self.done_chunks = len(ext.get("chunks", []))
            return self
        good = 0
        for i, ch in enumerate(ext.get("chunks", [])):
            if not self._chunk_ok(manifest, i, ch):
                log.warning("extract: chunk %d of %s does not match its checksums; recomputing "
                            "from there", i, self.path)
                break
            good = i + 1
        chunks = ext.get("chunks", [])[:good]

        def cut(m):
            m["extract"]["chunks"] = chunks
            for name in self.names.values():
                sp = m["spaces"][name]
                sp["shards"] = sp["shards"][:good]
                sp["rows"] = sum(s["rows"] for s in sp["shards"])

        Dataset(self.path, manifest).update_manifest(cut)
        self.done_chunks = good
        self.done_rows = sum(c["rows"] for c in chunks)
        if good:
            log.info("extract: resuming %s after %d finished chunks (%d rows)", self.path, good,
                     self.done_rows)
        return self

    def _chunk_ok(self, manifest, i, ch) -> bool:
        try:
            for name in self.names.values():
                s = manifest["spaces"][name]["shards"][i]
                f = self.path / manifest["spaces"][name]["dir"] / s["file"]
                if not f.is_file() or f.stat().st_size != s["bytes"] or \
                        file_checksum(f) != s["xxh3_64"]:
                    return False
            m = ch["meta"]
            f = self.path / m["file"]
            return f.is_file() and f.stat().st_size == m["bytes"] and \
                file_checksum(f) == m["xxh3_64"]
        except (KeyError, IndexError, OSError):
            return False

    # -- writing ------------------------------------------------------------------------
    def write_chunk(self, index: int, start: int, blocks: dict, meta: pa.Table) -> None:
        """Write chunk ``index`` (rows ``start..``): one shard per layer, one meta part, then
        list it in the manifest. Blocks: ``{layer: array of shape (rows, dim)}``."""
        rows = meta.num_rows
        try:
            recs = {}
            for layer, block in blocks.items():
                name = self.names[layer]
                rec, self._pads[layer] = write_shard(
                    self.path / "spaces" / name, block, space=name, index=index, start=start,
                    dtype=self.dtype, count=self.count, pad=self._pads[layer])
                recs[name] = rec
            mdir = self.path / META_PARTS
            mdir.mkdir(parents=True, exist_ok=True)
            mfile = mdir / f"meta-{index:05d}.parquet"
            import pyarrow.parquet as pq

            with _atomic.atomic_path(mfile) as tmp:
                pq.write_table(meta, tmp)
            mrec = {"file": f"{META_PARTS}/{mfile.name}", "bytes": mfile.stat().st_size,
                    "xxh3_64": file_checksum(mfile)}
        except OSError as e:
            raise ExtractError(
                f"writing chunk {index} (rows {start}..{start + rows - 1}) under {self.path} "
                f"failed: {e}. Nothing half-written is listed; the {index} finished chunks "
                f"({start} rows) are kept: free space / fix the disk and rerun the same "
                f"command to resume") from None

        def add(m):
            if len(m["extract"]["chunks"]) != index:
                raise ExtractError(f"{self.path}: another process is writing this extraction "
                                   f"(chunk {index} is already listed)")
            m["extract"]["chunks"].append({"start": start, "rows": rows, "meta": mrec})
            for name, rec in recs.items():
                sp = m["spaces"][name]
                sp["shards"].append(rec)
                sp["rows"] = sp["rows"] + rows

        try:
            self._update(add)
        except OSError as e:
            raise ExtractError(f"updating {self.path / MANIFEST} after chunk {index} failed: "
                               f"{e}; rerun the same command to resume") from None
        self.done_chunks = index + 1
        self.done_rows = start + rows

    def _update(self, fn) -> dict:
        m = json.loads((self.path / MANIFEST).read_text())
        return Dataset(self.path, m).update_manifest(fn)

    def finish(self, summary: dict) -> None:
        """Assemble meta.parquet from the parts and mark every space complete."""
        import pyarrow.parquet as pq

        m = json.loads((self.path / MANIFEST).read_text())
        chunks = m["extract"]["chunks"]
        total = sum(c["rows"] for c in chunks)
        parts = [pq.read_table(self.path / c["meta"]["file"]) for c in chunks]
        table = pa.concat_tables(parts, promote_options="default") if parts else pa.table({})
        if "id" in table.column_names:
            table = table.drop_columns(["id"])
        table = table.add_column(0, "id", pa.array(np.arange(total, dtype=np.int64)))
        final = self.path / META
        try:
            with _atomic.atomic_path(final) as tmp:
                pq.write_table(table, tmp)
        except OSError as e:
            raise ExtractError(f"writing {final} failed: {e}; the shards are kept, rerun the "
                               f"same command to finish") from None
        meta_rec = {"file": META, "rows": total, "bytes": final.stat().st_size,
                    "xxh3_64": file_checksum(final), "columns": table.column_names}

        def done(m):
            m["rows"] = total
            m["meta"] = meta_rec
            for name in self.names.values():
                m["spaces"][name]["status"] = "complete"
            m["extract"]["status"] = "complete"
            m["extract"]["summary"] = summary
            for c in m["extract"]["chunks"]:
                c.pop("meta", None)

        self._update(done)
        shutil.rmtree(self.path / META_PARTS, ignore_errors=True)
        self.complete = True


class ChunkWriter:
    """Writes chunks in a background thread (so the model never waits on the disk), or inline.

    ``submit`` blocks when two chunks are already queued, bounding memory. An error in the
    thread is raised by the next ``submit`` or by ``close``.
    """

    def __init__(self, store: ExtractStore, *, background: bool = True, depth: int = 2):
        self.store = store
        self.background = background
        self.error: BaseException | None = None
        self.write_seconds = 0.0
        if background:
            self.q: queue.Queue = queue.Queue(maxsize=depth)
            self.thread = threading.Thread(target=self._run, name="bigembed-writer",
                                           daemon=True)
            self.thread.start()

    def _write(self, item) -> None:
        import time

        t0 = time.perf_counter()
        self.store.write_chunk(*item)
        self.write_seconds += time.perf_counter() - t0

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is None:
                try:
                    self._write(item)
                except BaseException as e:  # handed to the main thread
                    self.error = e

    def submit(self, index: int, start: int, blocks: dict, meta: pa.Table) -> None:
        if self.error is not None:
            raise self.error
        if not self.background:
            self._write((index, start, blocks, meta))
            return
        self.q.put((index, start, blocks, meta))

    def close(self) -> None:
        """Wait for every queued chunk; raise the first writing error."""
        if self.background and self.thread.is_alive():
            self.q.put(None)
            self.thread.join()
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    def abandon(self) -> None:
        """Finish the queued chunks (they are good), swallowing errors: used while failing."""
        with contextlib.suppress(BaseException):
            self.close()
