"""Statistics over a space, shard by shard: map on the workers (or here), reduce here.

:func:`map_shards` is the one helper group statistics and contrasts use to scale out: the
per-shard function sees one shard's rows (memory-mapped, an array of shape (rows, d)) and their
ids and returns something small (sums, counts, a histogram); the client folds the partial
results in shard order. Without a cluster in use it runs the same function over the shards in
this process, so a stage calls it unconditionally and never imports Dask itself.

This module imports no stage (stages import it), and Dask only when a cluster is in use.
"""

from __future__ import annotations

import os

from ..progress import progress_bar
from .session import active_client


def _run_shard(block, *, spec, fn, kw):
    """On a worker (or here): ``fn(vectors[lo:hi], ids lo..hi, **kw)`` for ``block``."""
    import numpy as np

    from ..dataset.reader import open_cached

    lo, hi = block
    v = open_cached(spec["path"]).space(spec["space"]).vectors
    return fn(v[lo:hi], np.arange(lo, hi, dtype=np.int64), **kw)


def map_shards(ds, *, space: str | None = None, fn, combine, initial=None, desc: str = "shards",
               progress: bool | None = None, **kw):
    """Fold ``combine(acc, fn(block, ids, **kw))`` over the shards of ``space`` in order.

    ``fn``: a module-level function (it is sent to the workers by reference) taking an array
    of shape (rows, d) and the (rows,) int64 ids of those rows; ``kw``: its other arguments
    (sent once to each worker). ``initial`` starts the fold (else the first result). On the
    cluster in use (:func:`bigembed.use_cluster`) each shard is a task; otherwise the shards
    run here, one after the other. Returns the folded result.
    """
    from ..dataset.reader import open_cached

    ds = open_cached(ds)
    sp = ds.space(space)
    sp.ensure_verified()
    blocks = [(s["start"], s["start"] + s["rows"]) for s in sp.record["shards"]]
    spec = {"path": os.path.abspath(ds.path), "space": sp.name}
    if active_client() is not None:
        from .cluster import check_visible, map_reduce

        check_visible(spec["path"], manifest=True)
        return map_reduce(_run_shard, blocks, combine, desc=desc, initial=initial,
                          weights=[b - a for a, b in blocks], progress=progress,
                          broadcast={"spec": spec, "fn": fn, "kw": kw})
    acc = initial
    bar = progress_bar(total=sp.rows, desc=desc, unit="rows", enabled=progress)
    for i, b in enumerate(blocks):
        r = _run_shard(b, spec=spec, fn=fn, kw=kw)
        acc = r if (i == 0 and initial is None) else combine(acc, r)
        bar.update(b[1] - b[0])
    bar.close()
    return acc
