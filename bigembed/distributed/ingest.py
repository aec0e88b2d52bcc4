"""Ingest on a cluster: the input files read and their shards written in parallel, one commit.

The rows of all inputs (concatenated in order) are cut into the same shards a single process
writes (the space writer's rows per shard), so the result is byte for byte the same dataset.
Each task writes the shards that start inside one input file (reading the head of the next
file when a shard runs over), so every file is read once, by one worker, plus less than a
shard's worth of rows by its neighbour. The workers write the shards with the same atomic
shard writer into the space's temporary directory; the client verifies each one's checksum,
adopts them and commits the dataset (or the new space) in one transaction, with the metadata
columns the workers read from table inputs.

Rows holding NaN/Inf are refused as in one process; with ``drop_invalid`` and such rows the
ids shift, so ingest falls back to the single-process path (and says so).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..dataset.format import DTYPES, file_checksum
from ..dataset.shards import write_shard
from ..errors import InputError
from .cluster import check_visible, map_blocks
from .session import register

log = logging.getLogger(__name__)

#: first ids listed when rows hold NaN/Inf (as bigembed.ingest.run.SHOW_IDS)
SHOW_IDS = 20

_opened: dict = {}
_opened_lock = threading.Lock()


def _source(path: str, open_kw: dict):
    from ..ingest.readers import open_source

    key = (path, tuple(sorted((k, str(v)) for k, v in open_kw.items())))
    with _opened_lock:
        if key not in _opened:
            if len(_opened) > 64:
                _opened.clear()
            _opened[key] = open_source(path, **open_kw)
        return _opened[key]


def _read_rows(spec: dict, lo: int, hi: int):
    """On a worker: rows ``lo..hi`` of the concatenated inputs: (vectors, extra table|None)."""
    vecs, extras = [], []
    for path, start, rows in zip(spec["inputs"], spec["starts"], spec["rows"]):
        a, b = max(lo, start), min(hi, start + rows)
        if a >= b:
            continue
        src = _source(path, spec["open_kw"])
        if hasattr(src, "arr"):  # .npy: memory-mapped, sliced directly
            vecs.append(np.asarray(src.arr[a - start:b - start]))
            continue
        pos = start
        for v, extra in src.batches(spec["batch_rows"]):
            s, e = max(a, pos), min(b, pos + len(v))
            if s < e:
                vecs.append(np.asarray(v[s - pos:e - pos]))
                if extra is not None:
                    extras.append(extra.slice(s - pos, e - s))
            pos += len(v)
            if pos >= b:
                break
    v = np.concatenate(vecs) if len(vecs) > 1 else vecs[0]
    if len(v) != hi - lo:
        raise InputError(f"inputs hold {len(v)} rows where {hi - lo} were expected at rows "
                         f"{lo}..{hi - 1} (a file changed while it was ingested?)")
    return v, (pa.concat_tables(extras) if extras else None)


def write_shards(task, *, spec):
    """On a worker: read and write shards ``task = (first, stop)``; returns their records,
    the metadata columns of their rows, and the rows holding NaN/Inf (nothing is written
    then)."""
    first, stop = task
    per = spec["rows_per_shard"]
    dtype = DTYPES[spec["dtype"]]
    recs, extras, bad, n_bad = [], [], [], 0
    for j in range(first, stop):
        lo, hi = j * per, min(spec["total"], (j + 1) * per)
        v, extra = _read_rows(spec, lo, hi)
        if v.ndim != 2 or v.shape[1] != spec["dim"]:
            raise InputError(f"rows {lo}..{hi - 1} have shape {v.shape}, expected (rows, "
                             f"{spec['dim']})")
        with np.errstate(over="ignore", invalid="ignore"):
            v = v.astype(dtype, copy=False)
            finite = np.isfinite(v).all(axis=1)
        if not finite.all():
            ids = np.flatnonzero(~finite)
            n_bad += len(ids)
            bad.extend((lo + ids[:SHOW_IDS]).tolist())
        if n_bad:
            continue  # keep counting, write nothing
        rec, _ = write_shard(Path(spec["directory"]), v, space=spec["space"], index=j,
                             start=lo, dtype=spec["dtype"], count=spec["count"])
        recs.append(rec)
        if extra is not None:
            extras.append(extra)
    return {"first": first, "shards": recs, "extra": pa.concat_tables(extras) if extras else None,
            "invalid": n_bad, "invalid_rows": bad[:SHOW_IDS]}


class IngestOnCluster:
    """The two hooks of :func:`bigembed.ingest.ingest`."""

    @staticmethod
    def check(*, out, appending: bool) -> None:
        out = Path(os.path.abspath(out))
        if appending:
            check_visible(out, manifest=True)
            return
        where = out.parent
        while not where.exists() and where != where.parent:
            where = where.parent
        check_visible(where, manifest=False)

    @staticmethod
    def write(*, dw, sources, space, dtype, total, open_kw, provenance, drop_invalid, extras,
              keep_masks, progress):
        """Write the space's shards on the workers into ``dw``'s space; returns the entered
        space context, its writer and the row count, or None to fall back to one process."""
        dims = {s.dim for s in sources}
        dim = next(iter(dims))
        if not dim:
            return None  # dimension known only after reading: one process
        cm = dw.space(space, dim=dim, dtype=dtype, total_rows=total, provenance=provenance)
        sw = cm.__enter__()
        try:
            per = sw.rows_per_shard
            count = max(1, -(-total // per))
            starts = np.cumsum([0] + [s.rows for s in sources])[:-1].tolist()
            spec = {"inputs": [os.path.abspath(s.path) for s in sources], "starts": starts,
                    "rows": [s.rows for s in sources], "open_kw": open_kw, "dim": dim,
                    "total": total, "rows_per_shard": per, "count": count, "dtype": dtype,
                    "space": space, "directory": os.path.abspath(sw.directory),
                    "batch_rows": 65536}
            # One task per input: the shards that start inside it.
            tasks, prev = [], 0
            for st, n in zip(starts, spec["rows"]):
                stop = min(count, -(-(st + n) // per))
                if stop > prev:
                    tasks.append((prev, stop))
                    prev = stop
            weights = [min(total, b * per) - a * per for a, b in tasks]
            log.info("ingest: %d shards of %d rows from %d files in %d tasks", count, per,
                     len(sources), len(tasks))
            res = map_blocks(write_shards, tasks, desc=f"ingest {space} (cluster)",
                             weights=weights, broadcast={"spec": spec}, progress=progress)
            n_bad = sum(r["invalid"] for r in res)
            if n_bad:
                first = [i for r in res for i in r["invalid_rows"]][:SHOW_IDS]
                if drop_invalid:
                    log.warning("ingest: %d rows hold NaN or Inf; dropping them shifts the "
                                "ids, so this ingest runs in one process", n_bad)
                    cm.__exit__(InputError, InputError("fallback"), None)
                    return None
                raise InputError(
                    f"{n_bad} of {total} rows hold NaN or Inf (first ids: {first}); fix the "
                    f"input or pass --drop-invalid to leave them out")
            shards = [s for r in res for s in r["shards"]]
            for s in shards:
                f = Path(sw.directory) / s["file"]
                if not f.is_file() or f.stat().st_size != s["bytes"] or \
                        file_checksum(f) != s["xxh3_64"]:
                    raise InputError(f"shard {f} does not match what its worker wrote "
                                     f"(missing, truncated or changed); is the dataset on "
                                     f"storage every worker sees? Nothing was stored")
            sw.adopt(shards)
            extras.extend(r["extra"] for r in res if r["extra"] is not None)
            keep_masks.append(np.ones(total, bool))
            return cm, sw, total
        except BaseException as e:
            with contextlib.suppress(Exception):
                cm.__exit__(type(e), e, e.__traceback__)
            shutil.rmtree(sw.directory, ignore_errors=True)
            raise


register("ingest")(IngestOnCluster)
