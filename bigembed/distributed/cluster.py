"""Connecting to a Dask cluster, putting it in use, and mapping work over its workers.

``--cluster ADDRESS`` connects to a running ``dask.distributed`` scheduler; ``--cluster
local:N`` starts a ``LocalCluster`` of N worker processes on 127.0.0.1 (one thread each, with
the machine's cores shared out as their BLAS/OpenMP threads), or, where dask-cuda is installed
and sees GPUs, a ``LocalCUDACluster`` with one worker per GPU. :func:`~bigembed.distributed.api.use_cluster` hands the
heavy stages to a client (see :mod:`bigembed.distributed.api`); :func:`map_blocks` and :func:`map_reduce` are the one way stage code
sends work there: tasks named after the stage (so the dashboard says what runs), a progress bar
that follows the tasks as they finish, and a clean cancel on error.

Every worker must see the dataset directory at the same path (a shared filesystem);
:func:`check_visible` asks each of them before anything is written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from pathlib import Path

from ..errors import BigembedError, DatasetError, InputError
from ..progress import progress_bar
from . import session

log = logging.getLogger(__name__)

#: seconds to wait for a scheduler to answer (``BIGEMBED_CLUSTER_TIMEOUT``)
CONNECT_TIMEOUT = 10.0


class ClusterError(BigembedError):
    """The cluster cannot be reached, or it lost work it could not redo."""


def _timeout(timeout) -> float:
    if timeout is not None:
        return float(timeout)
    try:
        return float(os.environ.get("BIGEMBED_CLUSTER_TIMEOUT", CONNECT_TIMEOUT))
    except ValueError:
        return CONNECT_TIMEOUT


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise InputError("cluster needs dask.distributed, which is not installed: "
                         "pip install 'bigembed[cluster]'") from None
    return distributed


def parse_spec(spec: str) -> tuple[str, int | str]:
    """``("local", N)`` for ``local:N``, else ``("address", spec)``."""
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"cluster must be a scheduler address (tcp://HOST:PORT) or local:N, "
                         f"got {spec!r}")
    spec = spec.strip()
    if spec == "local" or spec.startswith("local:"):
        n = spec.partition(":")[2]
        if not n.isdigit() or int(n) < 1:
            raise InputError(f"cluster='{spec}': local:N needs N, the number of worker "
                             f"processes (an integer >= 1), e.g. local:2")
        return "local", int(n)
    return "address", spec


#: Dask settings of the ``local:N`` clusters started here. Their workers share this machine's
#: cores with their own OpenMP/BLAS threads, so every wake-up of Dask's housekeeping takes a
#: core from a thread team that waits for its slowest member. Measured idle (a task sleeping
#: 10 s on local:1): the worker process used 0.71 s of CPU and the client process (scheduler,
#: nanny) 0.69 s with the defaults; 0.07 s and 0.16 s with these: no statistical profiler
#: sampling every thread each 10 ms (the dashboard's Profile page stays empty), the event
#: loops' blocked-tick check every 500 ms instead of 20 ms, the system monitor every 2 s and
#: work stealing every 1 s (the scheduler queues tasks; stealing rarely moves any). A cluster
#: given by address keeps its own configuration.
LOCAL_QUIET = {"distributed.worker.profile.enabled": False,
               "distributed.admin.tick.interval": "500ms",
               "distributed.admin.system-monitor.interval": "2s",
               "distributed.scheduler.work-stealing-interval": "1s"}


def start_local(n_workers: int, *, threads: int | None = None):
    """A ``LocalCluster`` of ``n_workers`` processes on 127.0.0.1, one task at a time each;
    the cores are shared out as each worker's BLAS/OpenMP/torch threads (``threads``)."""
    _import_distributed()
    import dask
    from distributed import LocalCluster

    cuda = _local_cuda(n_workers)
    if cuda is not None:
        return cuda
    cores = os.cpu_count() or 1
    threads = threads or max(1, cores // n_workers)
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads), "BIGEMBED_NO_PROGRESS": "1"}
    pre = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **env}
    # Dask sets MALLOC_TRIM_THRESHOLD_ for its workers; setting it also turns off glibc's
    # dynamic mmap threshold (mallopt(3)), so every batch-sized tensor above 128 kB becomes
    # an mmap + page faults. Workers here allocate like the single process.
    pre.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": pre,
                          "distributed.worker.daemon": False, **LOCAL_QUIET}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                            host="127.0.0.1", dashboard_address="127.0.0.1:0",
                            silence_logs=logging.ERROR)


def _local_cuda(n_workers: int):
    """A ``LocalCUDACluster`` (one worker per GPU, up to ``n_workers``) where dask-cuda is
    installed and sees GPUs; else None (CPU worker processes)."""
    try:
        from dask_cuda import LocalCUDACluster
        from dask_cuda.utils import get_n_gpus
    except ImportError:
        return None
    try:
        gpus = get_n_gpus()
    except Exception:  # no driver: the CPU cluster
        return None
    if gpus < 1:
        return None
    n = min(n_workers, gpus)
    if n < n_workers:
        log.warning("local:%d: %d GPUs here, so %d dask-cuda workers (one per GPU)",
                    n_workers, gpus, n)
    log.info("local:%d: dask-cuda LocalCUDACluster, one worker per GPU", n_workers)
    return LocalCUDACluster(n_workers=n, threads_per_worker=1, host="127.0.0.1",
                            dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR,
                            CUDA_VISIBLE_DEVICES=list(range(n)))


def connect(spec: str, *, timeout: float | None = None):
    """``(client, cluster)`` for ``spec`` (``local:N`` or an address); ``cluster`` is the
    ``LocalCluster`` started for it, or None. Raises :class:`ClusterError` when no scheduler
    answers within ``timeout`` seconds (``BIGEMBED_CLUSTER_TIMEOUT``, default 10)."""
    kind, what = parse_spec(spec)
    distributed = _import_distributed()
    t = _timeout(timeout)
    if kind == "local":
        cluster = start_local(what)
        client = distributed.Client(cluster, timeout=t)
        return client, cluster
    address = what if "://" in what else f"tcp://{what}"
    try:
        client = distributed.Client(address, timeout=t)
    except (OSError, TimeoutError) as e:
        raise ClusterError(f"cluster='{spec}': no Dask scheduler answered at {address} within "
                           f"{t:.0f}s ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                           f"start one (dask scheduler) or use local:N. Nothing was "
                           f"written") from None
    except ValueError as e:  # a malformed address
        raise ClusterError(f"cluster='{spec}': not a scheduler address ({e}); expected "
                           f"tcp://HOST:PORT or local:N") from None
    return client, None


def require_client():
    client = session.active_client()
    if client is None:
        raise InputError("no cluster in use: call bigembed.use_cluster(client) first")
    return client


# -- the shared-filesystem check --------------------------------------------------------------

def _probe_dir(path: str, name: str, nonce: str | None) -> str | None:
    """On a worker: None when ``path`` is the directory the client sees, else why not."""
    p = Path(path)
    if not p.is_dir():
        return f"{path} is not a directory there"
    if nonce is None:
        return None
    try:
        got = (p / name).read_text()
    except OSError as e:
        return f"{path} is another directory there ({e.strerror or e})"
    return None if got == nonce else f"{path} is another directory there"


def _probe_manifest(path: str, stamp: str | None) -> str | None:
    import json

    f = Path(path) / "manifest.json"
    try:
        m = json.loads(f.read_text())
    except OSError as e:
        return f"cannot read {f} ({e.strerror or e})"
    except ValueError as e:
        return f"{f} is not valid JSON there ({e})"
    if stamp is not None and m.get("created") != stamp:
        return f"{f} there is another dataset's manifest"
    return None


def check_visible(path, *, manifest: bool, client=None) -> None:
    """Raise :class:`DatasetError` unless every worker sees directory ``path`` as this process
    does: the dataset itself (``manifest=True``: each worker reads its manifest) or the folder
    a new dataset will be created in (a probe file with a random content is written there and
    read back by every worker, then removed)."""
    client = client or require_client()
    path = os.path.abspath(path)
    workers = list(client.scheduler_info().get("workers", {}))
    if not workers:
        raise ClusterError(f"the cluster at {client.scheduler.address} has no workers")
    if manifest:
        import json

        try:
            stamp = json.loads((Path(path) / "manifest.json").read_text()).get("created")
        except (OSError, ValueError):
            stamp = None
        res = client.run(_probe_manifest, path, stamp, on_error="return")
    else:
        name = f".bigembed-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        nonce = uuid.uuid4().hex
        probe = Path(path) / name
        try:
            probe.write_text(nonce)
        except OSError:
            probe, nonce = None, None  # a read-only folder: the directory check alone
        try:
            res = client.run(_probe_dir, path, name, nonce, on_error="return")
        finally:
            if probe is not None:
                probe.unlink(missing_ok=True)
    bad = {w: (v if isinstance(v, str) else f"{type(v).__name__}: {v}")
           for w, v in res.items() if v is not None}
    if bad:
        w, why = next(iter(bad.items()))
        raise DatasetError(
            f"dataset {path} is not visible to {len(bad)} of {len(res)} cluster workers "
            f"({w}: {why}); the dataset directory must be on storage every worker sees at the "
            f"same path (a shared filesystem). Nothing was written")


# -- mapping work over the workers ------------------------------------------------------------

def _name(desc: str) -> str:
    return "bigembed-" + "".join(c if c.isalnum() else "-" for c in desc).strip("-")


def map_blocks(fn, items, *, desc: str, weights=None, broadcast: dict | None = None,
               on_result=None, progress: bool | None = None, unit: str = "rows",
               client=None) -> list:
    """``[fn(item, **broadcast) for item in items]``, each call a task on the cluster.

    ``broadcast``: keyword arguments every call gets, sent to each worker once (scattered).
    ``weights``: per item, what the progress bar counts (rows); the bar advances as tasks
    finish, in whatever order. ``on_result(i, result)`` runs here as each result arrives
    (e.g. to commit finished shards). A task that raises cancels the rest and re-raises its
    error here; work on a worker that dies is rerun elsewhere by the scheduler.
    Returns the results in the order of ``items``.
    """
    from distributed import as_completed

    client = client or require_client()
    items = list(items)
    weights = [1] * len(items) if weights is None else [int(w) for w in weights]
    kw = {}
    if broadcast:
        kw = {k: client.scatter(v, broadcast=True, hash=False) for k, v in broadcast.items()}
    prefix = f"{_name(desc)}-{uuid.uuid4().hex[:8]}"
    # In the order of items (Dask's own order among separate submissions is not that): the
    # client commits finished chunks as a prefix, and a rerun resumes after the prefix.
    futures = [client.submit(fn, item, **kw, key=f"{prefix}-{i}", pure=False, priority=-i)
               for i, item in enumerate(items)]
    where = {f.key: i for i, f in enumerate(futures)}
    out: list = [None] * len(items)
    bar = progress_bar(total=sum(weights), desc=desc, unit=unit, enabled=progress)
    try:
        for fut in as_completed(futures):
            i = where[fut.key]
            try:
                out[i] = fut.result()
            except BigembedError:
                raise
            except Exception as e:
                if type(e).__name__ == "KilledWorker":
                    raise ClusterError(
                        f"{desc}: task {i} was running on workers that died each time it ran "
                        f"({e}); the finished parts are kept, rerun to resume") from None
                raise
            if on_result is not None:
                on_result(i, out[i])
            bar.update(weights[i])
            fut.release()
    except BaseException:
        client.cancel(futures)
        raise
    finally:
        bar.close()
        for f in kw.values():
            with contextlib.suppress(Exception):
                f.release()
    return out


def leave_task_slot() -> None:
    """On a Dask worker: hand this task's slot back (``distributed.secede``), so the worker
    starts its next task while this one finishes work that needs few cycles (writing its
    files: mostly waiting on the disk). Where the single process overlaps its writes with the
    compute in a background thread, a worker overlaps them this way; the task still returns
    only once its files are written. Outside a worker it does nothing."""
    try:
        from distributed import get_worker, secede

        get_worker()
    except (ImportError, ValueError):
        return
    secede()


def map_reduce(map_fn, items, reduce_fn, *, desc: str, initial=None, weights=None,
               broadcast: dict | None = None, progress: bool | None = None, client=None):
    """Map ``map_fn(item, **broadcast)`` over ``items`` on the cluster and fold the results
    here with ``reduce_fn(acc, result)``, in the order of ``items`` (so a non-commutative
    reduction gives what a loop here would); ``initial`` starts the fold (else the first
    result does). For statistics over a space's shards: the map returns small partial sums
    per shard, the reduction adds them."""
    results = map_blocks(map_fn, items, desc=desc, weights=weights, broadcast=broadcast,
                         progress=progress, client=client)
    acc = initial
    for i, r in enumerate(results):
        acc = r if (i == 0 and initial is None) else reduce_fn(acc, r)
    return acc


def blocks(n: int, size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(n)`` in pieces of ``size`` rows."""
    return [(s, min(n, s + size)) for s in range(0, n, size)]


def worker_count(client=None) -> int:
    client = client or require_client()
    return max(1, len(client.scheduler_info().get("workers", {})))
