"""Putting a cluster in use: ``bigembed.use_cluster(client)`` and the CLI's ``--cluster``."""

from __future__ import annotations

import contextlib
import logging

from ..errors import InputError
from . import session
from .cluster import _import_distributed, connect

log = logging.getLogger(__name__)


class _InUse:
    """What :func:`use_cluster` returns: a context manager that restores the previous one."""

    def __init__(self, previous):
        self.previous = previous

    def __enter__(self):
        return session.active_client()

    def __exit__(self, *exc):
        session.set_client(self.previous)
        return False


def use_cluster(client):
    """Run the heavy stages (extract, ingest, the kNN graph and compare, placing rows past
    ``fit_rows``) on the Dask cluster of ``client`` (a ``distributed.Client``); ``None`` goes
    back to running everything in this process. Usable as a context manager, which restores
    the previous setting. The dataset directory must be visible to every worker at the same
    path."""
    previous = session.active_client()
    if client is not None:
        distributed = _import_distributed()
        if not isinstance(client, distributed.Client):
            raise InputError(f"client must be a distributed.Client, got "
                             f"{type(client).__name__}")
        from . import stages  # noqa: F401  (registers the cluster versions of the stages)

        info = client.scheduler_info()
        log.info("cluster %s: %d workers; dashboard %s", client.scheduler.address,
                 len(info.get("workers", {})), client.dashboard_link)
    session.set_client(client)
    return _InUse(previous)


@contextlib.contextmanager
def cluster(spec: str | None, *, timeout: float | None = None):
    """Context manager: connect to ``spec`` (``local:N`` or an address), use it, and close
    what was started on exit. ``spec=None`` does nothing (everything runs here)."""
    if spec is None:
        yield None
        return
    client, local = connect(spec, timeout=timeout)
    try:
        with use_cluster(client):
            yield client
    finally:
        with contextlib.suppress(Exception):
            client.close()
        if local is not None:
            with contextlib.suppress(Exception):
                local.close()
