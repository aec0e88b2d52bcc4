"""FAISS indexes of a space: build, tune, store (content-keyed), load (cached), search.

``build_index(ds, kind="auto")`` uses exact ``IndexFlat`` while a brute-force scan stays fast
and an IVF index above, tunes ``nprobe`` / ``efSearch`` on a seeded sample of queries until
their recall@10 against exact search clears ``target_recall`` by two standard errors, verifies
it on a disjoint held-out sample (raising the parameter while that falls short) and stores the
CPU form of the index as ``indexes/<space>.<kind>.<hash>.faiss`` with its parameters and the
held-out recall in the manifest.

Backends (stage ``"knn"`` in the registry): ``faiss-gpu`` (moves indexes with
:func:`to_device`), ``torch`` (bigembed's own exact kernel, :mod:`bigembed.kernels.knn`, for a
GPU without FAISS GPU) and ``faiss-cpu``. Every search returns FAISS conventions: squared L2
ascending, or inner product descending; cosine is inner product on vectors normalised once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import xxhash

from ..dataset.format import checksum_matches
from ..dataset.reader import Dataset
from ..errors import DatasetError, InputError, check_choice
from ..progress import progress_bar
from .backends import SEARCH
from .exact import (check_finite, exact_knn, faiss_metric, normalise, per_query_recall,
                    recall, sample_ids)

log = logging.getLogger(__name__)

KINDS = ("auto", "flat", "ivf", "hnsw", "ivfpq")
METRICS = ("l2", "cosine", "ip")
INDEX_FORMAT = 1
#: ``auto`` keeps exact search while one query scans at most this many floats (a few ms on one
#: core: 4M floats is 31k x 128 or 5k x 768).
FLAT_MAX_FLOATS = 4_000_000
#: batches smaller than this search on one thread: OpenMP's fork/join costs more than it saves
#: for a handful of queries, and on a shared machine its spinning threads cost 5x (measured:
#: 100k x 128 flat, one query, 2 busy cores: 63 ms on 2 threads, 12 ms on 1).
SMALL_BATCH = 32
#: queries sampled to tune the search parameters, and as many again, held out, to verify them
RECALL_QUERIES = 200
DEFAULT_TARGET = 0.95
#: the tuning sample must reach the target by this many standard errors of its mean recall,
#: so the recall holds on queries it has not seen (aiming exactly at the target on one sample
#: left an independent measurement just below it: 0.948 for a target of 0.95)
TUNE_MARGIN_SE = 2.0


# --------------------------------------------------------------------------------------------
# Vectors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """Vectors ready for FAISS: ``x`` float32 (N, d), L2-normalised under cosine."""

    x: np.ndarray
    metric: str
    zero_rows: np.ndarray  # ids of all-zero rows (cosine only; empty otherwise)


def prepare_space(sp, metric: str) -> Prepared:
    """The vectors of space ``sp`` as FAISS wants them (copying only when it must)."""
    check_choice("metric", metric, METRICS)
    # Damaged shard bytes must not become a plausible-looking index or graph.
    sp.ensure_verified()
    v = sp.vectors
    check_finite(v, f"space {sp.name!r}", hint="clean them before indexing")
    if metric == "cosine":
        x, zero = normalise(v)
        if len(zero):
            log.warning("space %r: %d all-zero vectors have no direction; under cosine they "
                        "are at distance 1 from everything (first ids %s)", sp.name, len(zero),
                        zero[:5].tolist())
        return Prepared(x, metric, zero)
    x = v if v.dtype == np.float32 and v.flags.c_contiguous else np.ascontiguousarray(v, np.float32)
    return Prepared(x, metric, np.empty(0, np.int64))


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def default_nlist(n: int) -> int:
    """IVF lists: about sqrt(N), at least 39 training points per list (FAISS's minimum)."""
    return int(max(1, min(int(round(np.sqrt(n))), n // 39, 65536)))


def _pq_m(d: int) -> int:
    for m in (64, 32, 16, 8, 4, 2, 1):
        if d % m == 0 and m <= max(1, d // 2):
            return m
    return 1


def make_index(kind: str, d: int, metric: str, *, n: int, params: dict | None = None):
    """An empty FAISS index of ``kind`` (flat, ivf, hnsw, ivfpq) and the parameters used."""
    import faiss

    fm = faiss_metric(metric)
    p = dict(params or {})
    if kind == "flat":
        return (faiss.IndexFlatL2(d) if fm == faiss.METRIC_L2 else faiss.IndexFlatIP(d)), p
    if kind == "hnsw":
        p.setdefault("M", 32)
        p.setdefault("efConstruction", 64)
        idx = faiss.IndexHNSWFlat(d, int(p["M"]), fm)
        idx.hnsw.efConstruction = int(p["efConstruction"])
        return idx, p
    p.setdefault("nlist", default_nlist(n))
    quant = faiss.IndexFlatL2(d) if fm == faiss.METRIC_L2 else faiss.IndexFlatIP(d)
    if kind == "ivf":
        idx = faiss.IndexIVFFlat(quant, d, int(p["nlist"]), fm)
        return idx, p
    if kind == "ivfpq":
        p.setdefault("m", _pq_m(d))
        p.setdefault("nbits", 8 if n >= 256 * 39 else 4)
        p.setdefault("k_factor", 4)
        ivf = faiss.IndexIVFPQ(quant, d, int(p["nlist"]), int(p["m"]), int(p["nbits"]), fm)
        # Re-rank the PQ candidates with the full vectors so recall can reach the target.
        idx = faiss.IndexRefineFlat(ivf)
        idx.k_factor = float(p["k_factor"])
        return idx, p
    raise InputError(f"kind must be one of {list(KINDS)}, got {kind!r}")


def set_search_params(index, kind: str, search: dict) -> None:
    """Apply tuned search parameters (``nprobe`` / ``efSearch``) to a CPU or GPU index."""
    import faiss

    if not search:
        return
    if kind in ("ivf", "ivfpq") and "nprobe" in search:
        try:
            faiss.ParameterSpace().set_index_parameter(index, "nprobe", int(search["nprobe"]))
        except RuntimeError:
            faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", int(search["nprobe"]))
    elif kind == "hnsw" and "efSearch" in search:
        faiss.downcast_index(index).hnsw.efSearch = int(search["efSearch"])


def _sweep_values(index, kind: str, params: dict) -> tuple[str, list]:
    if kind == "hnsw":
        return "efSearch", [16, 32, 64, 128, 256, 512, 1024]
    nlist = int(params["nlist"])
    return "nprobe", sorted({min(nlist, v) for v in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96,
                                                     128, 192, 256, 384, 512, nlist)})


def tune(index, kind: str, queries: np.ndarray, true_d: np.ndarray, metric: str,
         target: float, params: dict, *, margin_se: float = 0.0) -> tuple[dict, float, list]:
    """Smallest ``nprobe`` / ``efSearch`` whose recall on ``queries`` reaches ``target`` plus
    ``margin_se`` standard errors of the mean; returns it, its recall and the sweep
    [(value, recall)]. Flat needs no tuning (recall 1 by construction, measured)."""
    k = true_d.shape[1]
    if kind == "flat":
        d, i = index.search(queries, k)
        return {}, recall(d, i, true_d, metric), []
    name, values = _sweep_values(index, kind, params)
    sweep = []
    best = None
    for v in values:
        set_search_params(index, kind, {name: v})
        d, i = index.search(queries, k)
        r = per_query_recall(d, i, true_d, metric)
        mean = float(r.mean())
        se = float(r.std(ddof=1) / np.sqrt(len(r))) if len(r) > 1 else 0.0
        sweep.append((v, mean))
        best = ({name: v}, mean)
        if mean - margin_se * se >= target:
            break
    if best[1] < target:
        log.warning("%s index reaches recall %.3f at most (%s=%s), below the target %.3f",
                    kind, best[1], name, best[0][name], target)
    set_search_params(index, kind, best[0])
    return best[0], best[1], sweep


def tune_and_verify(index, kind: str, x: np.ndarray, metric: str, target: float,
                    params: dict, *, k: int = 10, queries: int = RECALL_QUERIES) -> dict:
    """Tune the search parameters on one seeded sample of rows with a margin, then measure
    recall@k on a disjoint held-out sample, raising the parameter further while the held-out
    recall is below ``target``. The stored promise is the held-out measurement.

    x: the indexed vectors (n, d) as FAISS holds them; metric: the FAISS metric ("l2"/"ip").
    Returns ``{"search", "recall", "tuning_recall", "sweep", "queries", "held_out"}``.
    """
    n = len(x)
    k = min(k, n)
    ids = sample_ids(n, 2 * queries, seed=2)
    order = np.random.default_rng(2).permutation(len(ids))
    tune_ids = np.sort(ids[order[0::2]])
    check_ids = np.sort(ids[order[1::2]]) if len(ids) > 1 else tune_ids
    qa, qb = np.ascontiguousarray(x[tune_ids]), np.ascontiguousarray(x[check_ids])
    true_a, _ = exact_knn(qa, x, k, metric)
    true_b, _ = exact_knn(qb, x, k, metric)
    search, r_tune, sweep = tune(index, kind, qa, true_a, metric, target, params,
                                 margin_se=TUNE_MARGIN_SE)
    d, i = index.search(qb, k)
    r_check = recall(d, i, true_b, metric)
    if kind != "flat" and r_check < target:
        name, values = _sweep_values(index, kind, params)
        for v in values:
            if v <= search[name]:
                continue
            log.info("index: held-out recall %.4f at %s=%s is below %.3f; trying %s=%s",
                     r_check, name, search[name], target, name, v)
            set_search_params(index, kind, {name: v})
            d, i = index.search(qb, k)
            r_check = recall(d, i, true_b, metric)
            search = {name: v}
            if r_check >= target:
                break
        set_search_params(index, kind, search)
        if r_check < target:
            log.warning("%s index: held-out recall %.3f at most (%s=%s), below the target %.3f",
                        kind, r_check, name, search[name], target)
    return {"search": search, "recall": r_check, "tuning_recall": r_tune, "sweep": sweep,
            "queries": int(len(check_ids)), "tuning_queries": int(len(tune_ids)),
            "held_out": bool(len(ids) > 1)}


@dataclass(frozen=True)
class IndexResult:
    """The index written (or found) by :func:`build_index`."""

    name: str
    space: str
    kind: str
    metric: str
    rows: int
    recall_at_10: float
    seconds: float
    cached: bool
    backend: str
    params: dict = field(default_factory=dict)
    search: dict = field(default_factory=dict)
    zero_vectors: int = 0


def index_key(space, kind: str, metric: str, params: dict) -> str:
    h = xxhash.xxh3_64()
    h.update(json.dumps({"space": space.fingerprint, "kind": kind, "metric": metric,
                         "params": params, "format": INDEX_FORMAT}, sort_keys=True,
                        default=str).encode())
    return f"{space.name}.{kind}.{h.hexdigest()[:12]}"


def choose_kind(n: int, d: int) -> str:
    return "flat" if n * d <= FLAT_MAX_FLOATS else "ivf"


def _as_dataset(ds) -> Dataset:
    return ds if isinstance(ds, Dataset) else Dataset.open(ds)


def build_index(ds, *, space: str | None = None, kind: str = "auto", metric: str = "l2",
                target_recall: float | None = None, backend: str = "auto",
                params: dict | None = None, force: bool = False,
                progress: bool | None = None) -> IndexResult:
    """Build (or find) the FAISS index of a space and store its CPU form.

    kind: ``auto`` (flat while N*d <= FLAT_MAX_FLOATS, else ivf), flat, ivf, hnsw or ivfpq.
    target_recall: recall@10 the search parameters are tuned to (approximate kinds; default
    0.95), against exact search: tuned with a margin on 200 sampled rows, then verified on
    200 other held-out rows, whose recall is the one recorded.
    """
    import faiss

    t0 = time.perf_counter()
    ds = _as_dataset(ds)
    check_choice("kind", kind, KINDS)
    check_choice("metric", metric, METRICS)
    if target_recall is not None:
        try:
            target_recall = float(target_recall)
        except (TypeError, ValueError):
            raise InputError(f"target_recall must be a number in (0, 1], got "
                             f"{target_recall!r}") from None
        if not 0.0 < target_recall <= 1.0:
            raise InputError(f"target_recall must be in (0, 1], got {target_recall}")
    sp = ds.space(space)
    n, d = sp.rows, sp.dim
    if n < 1:
        raise InputError(f"space {sp.name!r} has no rows to index")
    if kind == "auto":
        kind = choose_kind(n, d)
        log.info("index: kind auto -> %s (N=%d, d=%d)", kind, n, d)
    if kind in ("ivf", "ivfpq") and n < 39:
        log.info("index: %d rows are too few for %s; using flat", n, kind)
        kind = "flat"
    target = 1.0 if kind == "flat" else (target_recall or DEFAULT_TARGET)
    be, impl = search_backend(backend)
    # Parameters that change the file are in the key; the backend only changes where it runs.
    _, full_params = make_index(kind, d, metric, n=n, params=params)
    name = index_key(sp, kind, metric, dict(full_params, target=target))
    rec = ds.artifacts("indexes").get(name)
    if rec is not None and not force and (ds.path / rec["file"]).is_file():
        return IndexResult(name, sp.name, kind, metric, n, rec["recall_at_10"], 0.0, True,
                           be.name, rec["params"], rec["search"], rec.get("zero_vectors", 0))
    ds.prepare_write("indexes")  # a read-only dataset fails now, not after the build
    prep = prepare_space(sp, metric)
    x = prep.x
    index, full_params = make_index(kind, d, metric, n=n, params=params)
    bar = progress_bar(total=n, desc=f"index {sp.name} ({kind})", unit="rows", enabled=progress)
    if kind in ("ivf", "ivfpq"):
        train = x[sample_ids(n, min(n, 64 * int(full_params["nlist"])), seed=1)]
        bar.set_postfix_str("training")
        index.train(np.ascontiguousarray(train))
    work = impl.to_device(index)
    for s in range(0, n, 65536):
        work.add(np.ascontiguousarray(x[s:s + 65536]))
        bar.update(min(65536, n - s))
    bar.close()
    if work is not index:
        index = faiss.index_gpu_to_cpu(work)
    build_s = time.perf_counter() - t0
    tuned = tune_and_verify(index, kind, x, "l2" if metric == "l2" else "ip", target,
                            full_params)
    search, r, sweep = tuned["search"], tuned["recall"], tuned["sweep"]
    blob = faiss.serialize_index(index)

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(blob.tobytes())

    seconds = time.perf_counter() - t0
    record = {"space": sp.name, "kind": kind, "metric": metric, "rows": n, "dim": d,
              "params": full_params, "search": search, "target_recall": target,
              "recall_at_10": round(r, 4), "recall_queries": tuned["queries"],
              "recall_measured_on": "held-out rows (not used for tuning)",
              "tuning_recall": round(tuned["tuning_recall"], 4),
              "tuning_queries": tuned["tuning_queries"], "tuning_margin_se": TUNE_MARGIN_SE,
              "tuning": [[v, round(rr, 4)] for v, rr in sweep], "backend": be.name,
              "build_seconds": round(build_s, 3), "seconds": round(seconds, 3),
              "zero_vectors": int(len(prep.zero_rows)), "space_fingerprint": sp.fingerprint,
              "format": INDEX_FORMAT}
    ds.write_artifact("indexes", name, write, record, ".faiss")
    log.info("index %s: %s over %d x %d, recall@10 %.3f %s, %.1fs", name, kind, n, d, r,
             search or "", seconds)
    return IndexResult(name, sp.name, kind, metric, n, round(r, 4), seconds, False, be.name,
                       full_params, search, int(len(prep.zero_rows)))


def find_index(ds, *, space: str, metric: str | None = None) -> str | None:
    """The newest stored index of ``space`` (and ``metric``) built from its current vectors."""
    sp = ds.space(space)
    best = None
    for name, rec in ds.artifacts("indexes").items():
        if rec.get("space") != sp.name or rec.get("space_fingerprint") != sp.fingerprint:
            continue
        if metric is not None and rec.get("metric") != metric:
            continue
        if best is None or rec.get("created", "") > best[0]:
            best = (rec.get("created", ""), name)
    return best[1] if best else None


# --------------------------------------------------------------------------------------------
# Loading (cached in-process: the map and the HTTP endpoint search on every click)
# --------------------------------------------------------------------------------------------


@dataclass
class LoadedIndex:
    """A stored index ready to search, on the device its backend chose."""

    name: str
    record: dict
    index: object  # anything with FAISS's search(q, k) -> (D, I)
    backend: str

    @property
    def metric(self) -> str:
        return self.record["metric"]

    @property
    def dim(self) -> int:
        return int(self.record["dim"])

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS (D, I) for queries of shape (m, d), normalised here under cosine."""
        q = np.asarray(q, np.float32).reshape(-1, self.dim)
        if self.metric == "cosine":
            q, _ = normalise(q)
        q = np.ascontiguousarray(q)
        if len(q) < SMALL_BATCH and self.backend == "faiss-cpu":
            with single_thread():
                return self.index.search(q, int(k))
        return self.index.search(q, int(k))


_THREADS_LOCK = threading.Lock()


@contextlib.contextmanager
def single_thread():
    """Run FAISS on one OpenMP thread inside the block (FAISS's thread count is global)."""
    import faiss

    with _THREADS_LOCK:
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            yield
        finally:
            faiss.omp_set_num_threads(before)


_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()
_BACKENDS: dict = {}


def search_backend(name: str = "auto"):
    """``(record, backend object)`` of the ``"knn"`` backend ``name``, made once per process
    (resolving probes imports and devices; a GPU backend holds its resources)."""
    hit = _BACKENDS.get(name)
    if hit is None:
        hit = _BACKENDS[name] = SEARCH.create(name)
    return hit


def load_index(ds, name: str, *, backend: str = "auto") -> LoadedIndex:
    """Read a stored index (once per process) and move it where ``backend`` runs."""
    import faiss

    ds = _as_dataset(ds)
    rec = ds.artifacts("indexes").get(name)
    if rec is None:
        raise InputError(f"dataset {ds.path} has no index {name!r}; it has "
                         f"{sorted(ds.artifacts('indexes'))}")
    be, impl = search_backend(backend)
    key = (str(ds.path.resolve()), rec["space"], name, rec.get("xxh3_64"), be.name)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    path = ds.path / rec["file"]
    try:
        ok, got = checksum_matches(path, rec["xxh3_64"]) if "xxh3_64" in rec else (True, "")
    except OSError as e:
        raise DatasetError(f"index {name!r}: {path} cannot be read ({e}); rebuild it with "
                           f"`bigembed index {ds.path} --force`") from None
    if not ok:
        raise DatasetError(f"index {name!r}: {path} checksum is {got}, the manifest says "
                           f"{rec['xxh3_64']} (bytes changed on disk); rebuild it with "
                           f"`bigembed index {ds.path} --force`")
    try:
        data = np.fromfile(path, dtype=np.uint8)
        index = faiss.deserialize_index(data)
    except (OSError, RuntimeError) as e:
        raise DatasetError(f"index {name!r}: {path} cannot be read ({e}); rebuild it with "
                           f"`bigembed index {ds.path} --force`") from None
    if index.d != int(rec["dim"]) or index.ntotal != ds.rows:
        raise DatasetError(f"index {name!r}: {path} holds {index.ntotal} x {index.d}, the "
                           f"dataset has {ds.rows} x {rec['dim']}; rebuild it with --force")
    searcher = None
    if rec["kind"] == "flat":
        searcher = impl.exact_searcher(
            lambda: prepare_space(ds.space(rec["space"]), rec["metric"]).x,
            "l2" if rec["metric"] == "l2" else "ip")
    if searcher is None:
        searcher = impl.to_device(index)
        set_search_params(searcher, rec["kind"], rec.get("search", {}))
    loaded = LoadedIndex(name, rec, searcher, be.name)
    with _CACHE_LOCK:
        _CACHE[key] = loaded
    return loaded


def clear_cache() -> None:
    """Forget every loaded index (tests; after deleting artifacts)."""
    with _CACHE_LOCK:
        _CACHE.clear()
