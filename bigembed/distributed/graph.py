"""The kNN graph (and so ``compare``, which reads the graphs) on a cluster.

The client builds the searcher once as :func:`bigembed.search.knn_graph` does: for IVF it
trains on a sample, adds the rows and tunes ``nprobe``, then stores the index in the dataset
(a staged file next to the graphs); for exact search there is nothing to build. Each worker
loads the index from the dataset (or makes the exact searcher over the memory-mapped space),
once per process, and answers blocks of rows with the same code as the single-process path
(:func:`bigembed.search.graph.answer_rows`); each block is written as an Arrow shard with
the atomic writer. The client verifies every shard's checksum, gathers them and commits the
graph in one transaction (the graph artifact), then removes the staged files.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..dataset import _atomic
from ..dataset.format import file_checksum
from ..errors import DatasetError
from .cluster import blocks, check_visible, leave_task_slot, map_blocks, worker_count
from .session import register

log = logging.getLogger(__name__)

#: rows per task: big enough to amortise a task (~ms), small enough to balance and to rerun
BLOCK_ROWS = 65536

_searchers: dict = {}
_searchers_lock = threading.Lock()
#: blocks being written at once in a worker process after their task left its slot
_write_slots = threading.BoundedSemaphore(2)


def _searcher(spec: dict):
    """On a worker: ``(prepared x, searcher)`` for ``spec``, made once per process."""
    from ..dataset.reader import open_cached
    from ..search.index import (
        make_index,
        prepare_space,
        search_backend,
        set_search_params,
    )

    key = (spec["path"], spec["fingerprint"], spec["metric"], spec["method"], spec["backend"],
           spec.get("index_xxh3"))
    with _searchers_lock:
        hit = _searchers.get(key)
        if hit is not None:
            return hit
        ds = open_cached(spec["path"])
        sp = ds.space(spec["space"])
        if sp.fingerprint != spec["fingerprint"]:
            raise DatasetError(f"space {sp.name!r} of {spec['path']} changed while its kNN "
                               f"graph was computed on the cluster; nothing was stored")
        x = prepare_space(sp, spec["metric"]).x
        fmetric = "l2" if spec["metric"] == "l2" else "ip"
        _, impl = search_backend(spec["backend"])
        if spec["method"] == "exact":
            searcher = impl.exact_searcher(lambda: x, fmetric)
            if searcher is None:
                searcher, _ = make_index("flat", sp.dim, spec["metric"], n=sp.rows)
                searcher = impl.to_device(searcher)
                searcher.add(x)
        else:
            import faiss

            path = Path(spec["index_file"])
            if file_checksum(path) != spec["index_xxh3"]:
                raise DatasetError(f"the staged index {path} does not match its checksum on "
                                   f"this worker; the dataset storage is not consistent "
                                   f"between machines")
            index = faiss.deserialize_index(np.fromfile(path, dtype=np.uint8))
            searcher = impl.to_device(index)
            set_search_params(searcher, "ivf", spec["search"])
        _searchers.clear()  # one graph's searcher at a time per worker
        _searchers[key] = (x, searcher)
        return x, searcher


def answer_block(block, *, spec):
    """On a worker: answer rows ``block = (start, stop)`` and write them as one Arrow shard
    in the staging folder; returns its record (file, rows, bytes, checksum, underfilled)."""
    from ..search.graph import answer_rows

    start, stop = block
    x, searcher = _searcher(spec)
    k = spec["k"]
    ind = np.empty((stop - start, k), np.int64)
    dist = np.empty((stop - start, k), np.float32)
    short = 0
    step = spec["batch_rows"]
    for s in range(start, stop, step):
        e = min(stop, s + step)
        ind[s - start:e - start], dist[s - start:e - start], sh = answer_rows(
            searcher, x, s, e, k=k, metric=spec["metric"])
        short += sh
    table = pa.table({
        "indices": pa.FixedSizeListArray.from_arrays(pa.array(ind.reshape(-1)), k),
        "distances": pa.FixedSizeListArray.from_arrays(pa.array(dist.reshape(-1)), k),
    })
    final = Path(spec["staging"]) / f"block-{start:012d}.arrow"
    with _write_slots:
        leave_task_slot()  # the next block is searched while this one is written
        with _atomic.atomic_path(final) as tmp:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
                w.write_table(table)
        checksum = file_checksum(final)
    return {"start": start, "stop": stop, "file": final.name, "bytes": final.stat().st_size,
            "xxh3_64": checksum, "short": short}


def read_block(staging: Path, rec: dict, k: int):
    """Verify a block shard against its record and return (indices, distances)."""
    f = staging / rec["file"]
    if not f.is_file() or f.stat().st_size != rec["bytes"] or file_checksum(f) != rec["xxh3_64"]:
        raise DatasetError(f"graph block {f} does not match what its worker wrote (missing, "
                           f"truncated or changed); nothing was stored. Rerun the command")
    with pa.memory_map(str(f), "r") as src:
        t = pa.ipc.open_file(src).read_all()
    ind = t.column("indices").combine_chunks().values.to_numpy().reshape(-1, k)
    dist = t.column("distances").combine_chunks().values.to_numpy().reshape(-1, k)
    if len(ind) != rec["stop"] - rec["start"]:
        raise DatasetError(f"graph block {f} holds {len(ind)} rows, expected "
                           f"{rec['stop'] - rec['start']}")
    return ind, dist


@register("knn_graph_blocks")
def knn_graph_blocks(*, ds, sp, k, metric, method, backend, index, params, ind, dist,
                     batch_rows, progress) -> int:
    """Fill ``ind``/``dist`` (N, k) by row blocks on the workers; returns the underfilled
    rows. ``index``: the tuned IVF index (None for exact search)."""
    path = os.path.abspath(ds.path)
    check_visible(path, manifest=True)
    staging = _atomic.tmp_name(ds.path / "graphs" / f"{sp.name}.knn{k}.blocks")
    staging.mkdir(parents=True)
    try:
        spec = {"path": path, "space": sp.name, "fingerprint": sp.fingerprint, "k": k,
                "metric": metric, "method": method, "backend": backend,
                "batch_rows": int(batch_rows), "staging": os.path.abspath(staging)}
        if index is not None:
            import faiss

            f = staging / "index.faiss"
            with _atomic.atomic_path(f) as tmp:
                faiss.serialize_index(index).tofile(str(tmp))
            spec.update(index_file=os.path.abspath(f), index_xxh3=file_checksum(f),
                        search={k_: v for k_, v in params.items()
                                if k_ in ("nprobe", "efSearch")})
        n = sp.rows
        size = max(batch_rows, min(BLOCK_ROWS, -(-n // (4 * worker_count()))))
        parts = blocks(n, size)
        log.info("knn graph: %d blocks of up to %d rows on %d workers", len(parts), size,
                 worker_count())
        got = {"short": 0}

        def gather(_, rec):  # while the workers search the other blocks
            ind[rec["start"]:rec["stop"]], dist[rec["start"]:rec["stop"]] = read_block(
                staging, rec, k)
            got["short"] += rec["short"]
            (staging / rec["file"]).unlink()

        map_blocks(answer_block, parts, desc=f"knn graph k={k} ({method}, cluster)",
                   weights=[b - a for a, b in parts], broadcast={"spec": spec},
                   on_result=gather, progress=progress)
        return got["short"]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
