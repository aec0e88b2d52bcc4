"""Which Dask cluster this process hands its heavy stages to, and what runs there.

This module is a leaf: it imports no Dask and no stage. A stage asks
:func:`implementation` for its cluster version at the one point where the work can be split
(``implementation("knn_graph_blocks")``); with no cluster in use the answer is ``None`` and
the stage runs as it always did, without importing Dask. The cluster versions live in
:mod:`bigembed.distributed` modules that import the stages, and register themselves here when
a cluster is put in use (:func:`bigembed.distributed.cluster.use_cluster`), so the stages
never import them and the package has no import cycle.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_state: dict = {"client": None}
#: stage hook name -> the function that runs that part on the cluster
_impls: dict = {}


def register(hook: str):
    """Decorator: ``fn`` runs hook ``hook`` on the cluster in use."""

    def deco(fn):
        _impls[hook] = fn
        return fn

    return deco


def active_client():
    """The ``distributed.Client`` in use, or None (the default: everything runs here)."""
    return _state["client"]


def set_client(client) -> None:
    with _lock:
        _state["client"] = client


def implementation(hook: str):
    """The cluster version of stage hook ``hook`` when a cluster is in use, else None."""
    if _state["client"] is None:
        return None
    return _impls.get(hook)
