"""Placing the rows past ``fit_rows`` on a cluster.

The layout is fitted on the sample in one place (the client); the sample's vectors (reduced
as they were fitted), the fitted positions and the projection go to every worker once, and
each worker places blocks of the other rows with the same code as the single-process path
(:func:`bigembed.reduce.run.place_rows`), reading them from the dataset.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from .cluster import check_visible, map_blocks, worker_count
from .session import register

log = logging.getLogger(__name__)


def place_block(rid, *, spec, base, proj, xy_fit):
    """On a worker: (b, 2) positions of rows ``rid``."""
    from ..dataset.reader import open_cached
    from ..reduce.run import place_rows

    sp = open_cached(spec["path"]).space(spec["space"])
    return place_rows(sp.vectors, rid, base, proj, xy_fit, spec["k"], spec["metric"])


@register("place_rows")
def place_rows_on_cluster(*, sp, rest, base, proj, xy_fit, k, metric, xy, batch_rows,
                          progress) -> None:
    """Fill ``xy[rest]`` with the rows placed by the workers."""
    path = os.path.abspath(sp.dataset.path)
    check_visible(path, manifest=True)
    size = max(1024, min(int(batch_rows), -(-len(rest) // (4 * worker_count()))))
    parts = [rest[s:s + size] for s in range(0, len(rest), size)]
    spec = {"path": path, "space": sp.name, "k": int(k), "metric": metric}
    out = map_blocks(place_block, parts, desc="place rows (cluster)",
                     weights=[len(p) for p in parts],
                     broadcast={"spec": spec, "base": base, "proj": proj,
                                "xy_fit": np.asarray(xy_fit)}, progress=progress)
    for rid, pos in zip(parts, out):
        xy[rid] = pos
