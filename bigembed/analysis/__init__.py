"""Groups of points and why they are there: error distributions, unit contrast, named clusters.

:func:`group_stats` (a group's confusion matrix beside the dataset's, confidence and loss
histograms against the rest, its members worst-first), :func:`contrast` (which dimensions of a
space set a group apart: standardised mean differences, streamed over the memory-mapped
shards) and :func:`cluster` (density clusters of a layout or of a space's kNN graph, stored as
a ``clusters`` artifact with a table of named clusters). A group is given by row ids (or a
boolean mask of shape (N,)).
"""

from __future__ import annotations

from .clusters import ClusterResult, cluster, load_clusters
from .stats import GroupStats, group_stats
from .units import contrast

__all__ = ["ClusterResult", "GroupStats", "cluster", "contrast", "group_stats", "load_clusters"]
