"""Nearest neighbours: FAISS indexes (:mod:`.index`), lookups (:mod:`.lookup`), the kNN graph
of all points (:mod:`.graph`), search backends (:mod:`.backends`) and the exact helpers every
stage shares (:mod:`.exact`: drop-self, seeded samples, exact kNN, recall)."""

from __future__ import annotations

from .graph import KnnGraph, find_graph, knn_graph
from .index import IndexResult, build_index, find_index, load_index
from .lookup import NeighborResult, neighbors, neighbors_many

__all__ = ["neighbors", "neighbors_many", "NeighborResult", "knn_graph", "find_graph",
           "KnnGraph", "build_index", "find_index", "load_index", "IndexResult"]
