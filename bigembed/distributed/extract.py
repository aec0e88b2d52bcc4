"""Extraction on a cluster: chunks of rows across the workers, one manifest on the client.

The client probes the model and opens the output as :func:`bigembed.extract.extract` does
(same identity, same chunks, so a run started on one machine resumes on a cluster and the
other way round). Each chunk still to do is a task: a worker loads the model and the data
once (checking the model's weights hash against the client's, so every worker runs the same
model), runs the chunk's rows in the same batches as a single process, and writes the
chunk's shards (one per layer) and its metadata part with the same atomic shard writer, under
their final names; nothing is listed yet. As results arrive, the client verifies each
chunk's files against their checksums and lists the finished chunks in order in the
manifest (so a killed run resumes after them); it marks the extraction complete last.

A worker that dies mid-chunk: the scheduler reruns that chunk elsewhere, its files are
rewritten whole under the same names (never listed before), and the client takes one result
per chunk, so every row is in the dataset exactly once.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np

from ..dataset import _atomic
from ..dataset.format import file_checksum
from ..dataset.shards import write_shard
from ..errors import InputError
from .cluster import check_visible, leave_task_slot, map_blocks, worker_count
from .session import register

log = logging.getLogger(__name__)

_loaded: dict = {}
_loaded_lock = threading.Lock()
_pads: dict = {}
_pads_lock = threading.Lock()
#: chunks being written at once in a worker process, after their task left its slot; a
#: task with a chunk ready waits in its slot (so the model stops) while this many are
#: being written, as the single process's writer queue bounds its memory
WRITE_DEPTH = 2
_write_slots = threading.BoundedSemaphore(WRITE_DEPTH)


def _load(spec: dict):
    """On a worker: (model, source, layer modules, device backend) for ``spec``, made once per
    process, and checked to be the model and data the client probed."""
    from ..extract.backends import DEVICES
    from ..extract.capture import resolve_layers
    from ..extract.run import _text_data, _weights_hash
    from ..extract.sources import load_data, load_model
    from ..extract.store import ExtractError

    with _loaded_lock:
        hit = _loaded.get(spec["key"])
        if hit is not None:
            return hit
        device = spec["device"]
        _, run_on = DEVICES.create(device if device == "auto" else f"torch-{device}")
        mdl, _ = load_model(spec["model"], seed=spec["model_seed"])
        src = load_data(_text_data(mdl, spec["data"]), n=spec["n"], seed=spec["seed"])
        got = _weights_hash(mdl)
        if got != spec["weights"]:
            raise ExtractError(
                f"model {spec['model_desc']!r} has other weights on worker {os.getpid()} "
                f"(weights hash {got}, the client's is {spec['weights']}): every worker must "
                f"build the same model (seed its initialisation, or load saved weights)")
        if src.rows != spec["rows"] or src.fingerprint != spec["data_fingerprint"]:
            raise ExtractError(
                f"data {spec['data_desc']!r} is other data on worker {os.getpid()} "
                f"({src.rows} rows, {src.fingerprint!r}; the client's: {spec['rows']} rows, "
                f"{spec['data_fingerprint']!r}): every worker must see the same data")
        mdl.eval().to(run_on.device)
        layers = resolve_layers(mdl, spec["layers"])
        _loaded.clear()
        _loaded[spec["key"]] = (mdl, src, layers, run_on)
        return _loaded[spec["key"]]


class _ChunkFiles:
    """What :class:`bigembed.extract.run._Chunker` submits to: keeps the chunk (blocks and
    metadata) until :meth:`write` puts its shards and metadata part under their final names
    and keeps their records (no manifest)."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.chunk = None
        self.record = None

    def submit(self, index: int, start: int, blocks: dict, meta) -> None:
        self.chunk = (index, start, blocks, meta)

    def write(self) -> None:
        import pyarrow.parquet as pq

        index, start, blocks, meta = self.chunk
        out = Path(self.spec["path"])
        shards = {}
        for name, block in blocks.items():
            d = out / self.spec["dirs"][name]
            with _pads_lock:  # a hint (the pad that page-aligns), shared by concurrent writes
                pad = _pads.get(name, 0)
            shards[name], pad = write_shard(
                d, block, space=name, index=index, start=start, dtype=self.spec["dtype"],
                count=self.spec["count"], pad=pad)
            with _pads_lock:
                _pads[name] = pad
        mdir = out / self.spec["meta_parts"]
        mdir.mkdir(parents=True, exist_ok=True)
        mfile = mdir / f"meta-{index:05d}.parquet"
        with _atomic.atomic_path(mfile) as tmp:
            pq.write_table(meta, tmp)
        self.record = {"index": index, "start": start, "rows": meta.num_rows,
                       "shards": shards,
                       "meta": {"file": f"{self.spec['meta_parts']}/{mfile.name}",
                                "bytes": mfile.stat().st_size,
                                "xxh3_64": file_checksum(mfile)}}
        self.chunk = None


def extract_chunk(index: int, *, spec: dict) -> dict:
    """On a worker: run chunk ``index`` through the model and write its files; returns their
    records and the seconds spent."""
    from ..extract.capture import Capture
    from ..extract.run import _Batches, _Chunker, _labels_numpy, _Runner, _where
    from ..extract.sources import batch_rows
    from ..extract.store import ExtractError

    t0 = time.perf_counter()
    mdl, src, layers, run_on = _load(spec)
    chunk = spec["chunk_rows"]
    start = index * chunk
    stop = min(spec["rows"], start + chunk)
    view = copy.copy(src)
    view.rows = stop  # the batches and the chunk buffer end with this chunk
    files = _ChunkFiles(spec)
    chunker = _Chunker(files, view, spec["dims"], chunk_rows=chunk, index=index, start=start,
                       has_labels=spec["has_labels"], classes=spec["classes"],
                       has_loss=spec["has_loss"], dtype=spec["dtype"])
    batches = _Batches(view, start=start, chunk_rows=chunk, batch_size=spec["batch_size"],
                       workers=0, pin=False)
    cap = Capture(layers, spec["pooling"])
    runner = _Runner(mdl, cap, run_on, spec["amp"], spec["auto_batch"])
    with cap:
        for i, (rows, x, y) in enumerate(batches):
            n_b = batch_rows(x)
            where = f"batch {i} of chunk {index} ({_where(rows)})"
            try:
                pooled, logits = runner.forward(x, y, where)
            except (InputError, ExtractError):
                raise
            except Exception as e:
                raise ExtractError(f"the model raised {type(e).__name__} on {where}: {e}. "
                                   f"Finished chunks are kept; rerun the same command to "
                                   f"resume") from None
            host = {k: v.to("cpu").numpy() for k, v in pooled.items()}
            chunker.add(host, None if logits is None else logits.to("cpu").numpy(),
                        _labels_numpy(y, n_b), rows)
        chunker.flush()
    got = 0 if files.chunk is None else files.chunk[3].num_rows
    if got != stop - start:
        raise ExtractError(f"chunk {index}: the data yielded {got} of its {stop - start} rows "
                           f"on worker {os.getpid()}")
    computed = time.perf_counter() - t0
    with _write_slots:
        leave_task_slot()  # the next chunk runs through the model while this one is written
        t1 = time.perf_counter()
        files.write()
    files.record["seconds"] = computed
    files.record["write_seconds"] = time.perf_counter() - t1
    files.record["worker_pid"] = os.getpid()
    return files.record


def _verify(store, rec: dict) -> None:
    """The client's check of a chunk's files against the records its worker returned."""
    from ..extract.store import ExtractError

    for name, s in rec["shards"].items():
        f = store.path / store._dirs[name] / s["file"]
        _check_file(f, s, rec["index"], ExtractError)
    _check_file(store.path / rec["meta"]["file"], rec["meta"], rec["index"], ExtractError)


def _check_file(f: Path, s: dict, index: int, err) -> None:
    if not f.is_file() or f.stat().st_size != s["bytes"] or file_checksum(f) != s["xxh3_64"]:
        raise err(f"chunk {index}: {f} does not match what its worker wrote (missing, "
                  f"truncated or changed on the way); the dataset storage is not the same on "
                  f"every machine? Rerun the same command to resume")


def _commit(store, recs: list) -> None:
    """List finished chunks ``recs`` (consecutive, in order) in the manifest, one transaction."""
    from ..extract.store import ExtractError

    first = recs[0]["index"]

    def add(m):
        if len(m["extract"]["chunks"]) != first:
            raise ExtractError(f"{store.path}: another process is writing this extraction "
                               f"(chunk {first} is already listed)")
        for rec in recs:
            m["extract"]["chunks"].append({"start": rec["start"], "rows": rec["rows"],
                                           "meta": rec["meta"]})
            for name, s in rec["shards"].items():
                sp = m["spaces"][name]
                sp["shards"].append(s)
                sp["rows"] = sp["rows"] + rec["rows"]

    store._update(add)
    store.done_chunks = recs[-1]["index"] + 1
    store.done_rows = recs[-1]["start"] + recs[-1]["rows"]


class ExtractOnCluster:
    """The two hooks of :func:`bigembed.extract.extract`: ``check`` before anything is
    written, ``run`` in place of the single-process loop."""

    @staticmethod
    def check(*, out, src) -> None:
        if not src.map_style or src.rows is None:
            raise InputError(
                f"data {src.description}: an iterable of batches can only be read in order, "
                f"by one process; extraction on a cluster needs map-style data (a Dataset "
                f"with __len__ and __getitem__/__getitems__). Run without --cluster")
        out = Path(os.path.abspath(out))
        if (out / "manifest.json").is_file():
            check_visible(out, manifest=True)
            return
        where = out
        while not where.exists() and where != where.parent:
            where = where.parent
        check_visible(where, manifest=False)

    @staticmethod
    def run(*, store, src, model, data, n, seed, model_seed, layers, pooling, amp, dtype,
            device, batch_size, auto_batch, dims, chunk_rows, has_labels, classes, has_loss,
            identity, model_desc, result_kw, t0, progress):
        from ..extract.run import _result
        from ..extract.store import META_PARTS, ExtractError

        m = store._update(lambda m: None)
        store._dirs = {name: m["spaces"][name]["dir"] for name in dims}
        resumed = store.done_rows
        spec = {"key": store.key, "path": os.path.abspath(store.path), "model": model,
                "data": data, "n": n, "seed": seed, "model_seed": model_seed,
                "layers": list(layers), "pooling": pooling, "amp": amp, "dtype": dtype,
                "device": device, "batch_size": batch_size, "auto_batch": auto_batch,
                "dims": dict(dims), "chunk_rows": chunk_rows, "count": store.count,
                "rows": src.rows, "has_labels": has_labels, "classes": classes,
                "has_loss": has_loss, "weights": identity["weights"],
                "data_fingerprint": src.fingerprint, "model_desc": model_desc,
                "data_desc": src.description, "dirs": store._dirs, "meta_parts": META_PARTS}
        todo = list(range(store.done_chunks, store.count))
        rows_of = [min(src.rows, (i + 1) * chunk_rows) - i * chunk_rows for i in todo]
        log.info("extract: %d chunks of %d rows on %d workers (%d rows already done)",
                 len(todo), chunk_rows, worker_count(), resumed)
        ready: dict = {}
        seconds, writes = [], []

        def on_result(_, rec):
            ready[rec["index"]] = rec
            seconds.append(rec["seconds"])
            writes.append(rec.get("write_seconds", 0.0))
            batch = []
            nxt = store.done_chunks
            while nxt in ready:
                batch.append(ready.pop(nxt))
                nxt += 1
            if batch:
                for r in batch:
                    _verify(store, r)
                _commit(store, batch)

        map_blocks(extract_chunk, todo, desc="extract (cluster)", weights=rows_of,
                   broadcast={"spec": spec}, on_result=on_result, progress=progress,
                   unit="items")
        total = store.done_rows
        if total != src.rows:
            raise ExtractError(f"data {src.description}: {total} of {src.rows} rows were "
                               f"written; rerun the same command to resume")
        secs = time.perf_counter() - t0
        computed = total - resumed
        # worker_s: the model's time in the workers' task slots; write_s: writing, overlapped
        # with the next chunks' model (as the single process's background writer does)
        timings = {"worker_s": round(float(np.sum(seconds)), 3),
                   "write_s": round(float(np.sum(writes)), 3), "chunks": len(todo),
                   "workers": worker_count()}
        store.finish({"rows": total, "rows_computed": computed, "seconds": round(secs, 3),
                      "items_per_s": round(computed / max(secs, 1e-9), 1),
                      "device": result_kw["device"], "batch_size": batch_size,
                      "cluster": True, **timings})
        return _result(store.path, result_kw, t0, computed=computed, resumed=resumed,
                       timings=timings)


register("extract")(ExtractOnCluster)
