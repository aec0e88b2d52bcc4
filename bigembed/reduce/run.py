"""2-D layouts of a space: UMAP, t-SNE and PCA, on the GPU (cuML) or the CPU.

``reduce(ds, method=...)`` writes a content-keyed layout artifact (id-ordered x, y float32 plus
a per-point ``knn_preservation`` column, see :mod:`bigembed.reduce.quality`); repeating the call with
the same inputs returns the stored one at once.

UMAP and t-SNE reuse the exact kNN graph of the neighbour stage rather than searching again.
Wide vectors are PCA-reduced to ``pca_dims`` for what the backends still need the rows for
(the initial layout, cuML's input). When N is above the backend's ``fit_rows`` the layout is
fitted on a seeded sample and the other rows are placed at the membership-weighted mean of
their nearest sampled neighbours, in batches (recorded as ``fit`` in the layout record).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from ..dataset.layouts import layout_key, load_layout, save_layout
from ..dataset.reader import Dataset
from ..distributed.session import implementation as cluster_implementation
from ..errors import BigembedError, InputError
from ..progress import progress_bar
from ..search.exact import (check_finite, drop_self, exact_knn, normalise, sample_ids,
                            to_user_distance)
from .backends import LAYOUTS
from .pca import _pca_project, pca_layout  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

METHODS = ("pca", "umap", "tsne")
METRICS = ("l2", "cosine")


@dataclass(frozen=True)
class ReduceResult:
    """The layout written (or found) by :func:`reduce`.

    ``quality`` is the record's quality dict (kNN preservation, trustworthiness, continuity).
    """

    name: str
    space: str
    method: str
    rows: int
    cached: bool
    seconds: float
    backend: str
    quality: dict | None = None


# -- the neighbour stage, behind one function each (switch here at merge time) ---------------

def _knn_full(ds, sp, k: int, metric: str, progress):
    """(indices, distances) of shape (N, k), self excluded, from the neighbour stage."""
    from ..search.graph import knn_graph

    g = knn_graph(ds, space=sp.name, k=k, metric=metric, progress=progress)
    return g.indices, g.distances


def _knn_search(base: np.ndarray, queries: np.ndarray | None, k: int, metric: str,
                batch_rows: int = 16384, progress=None, desc="knn"):
    """Exact kNN of ``queries`` among the rows of ``base`` (a sample, in memory) with FAISS.

    With ``queries=None`` the base searches itself and self is excluded. Distances are L2
    (not squared) or 1 - cos, as in :func:`bigembed.search.knn_graph`.
    """
    base = np.ascontiguousarray(base, dtype=np.float32)
    if metric == "cosine":
        base, _ = normalise(base)
    fmetric = "ip" if metric == "cosine" else "l2"
    selfq = queries is None
    q_all = base if selfq else queries
    n = len(q_all)
    ind = np.empty((n, k), np.int64)
    dist = np.empty((n, k), np.float32)
    bar = progress_bar(total=n, desc=desc, unit="rows", enabled=progress)
    for s in range(0, n, batch_rows):
        q = np.ascontiguousarray(q_all[s:s + batch_rows], dtype=np.float32)
        if metric == "cosine" and not selfq:
            q, _ = normalise(q)
        d, i = exact_knn(q, base, k + selfq, fmetric)
        if selfq:
            d, i = drop_self(d, i, np.arange(s, s + len(q)), k)
        ind[s:s + len(q)] = i
        dist[s:s + len(q)] = to_user_distance(d, metric)
        bar.update(len(q))
    bar.close()
    return ind, dist


# -- pieces -------------------------------------------------------------------------------

def initial_layout(x: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Initial (m, 2) layout: the first two principal components of ``x`` (m, p), scaled to
    a maximum coordinate of 10 (umap-learn's convention) plus a little seeded noise, so that
    coincident points, one-dimensional data and N = 2 never give a zero-width layout (which
    the optimisers would divide by)."""
    m = len(x)
    xy = np.zeros((m, 2), np.float64)
    if m >= 2 and x.shape[1] >= 1:
        xy[:] = _pca_project(x, 2, seed=seed, progress=False)
    return _start_layout(xy, seed)


def place_by_neighbors(xy_fit: np.ndarray, indices: np.ndarray,
                       distances: np.ndarray) -> np.ndarray:
    """Place points at the membership-weighted mean of their neighbours' layout positions.

    ``indices``/``distances``: arrays of shape (b, k) into the fitted rows; ``xy_fit``: (m, 2).
    Weights follow UMAP's fuzzy membership, exp(-(d - d_nearest) / mean gap): a point equal to
    a sampled one lands on it. Returns (b, 2) float32.
    """
    d = distances.astype(np.float64)
    gap = d - d[:, :1]
    scale = gap.mean(1, keepdims=True)
    w = np.exp(-gap / np.where(scale > 0, scale, 1.0))
    w /= w.sum(1, keepdims=True)
    return np.einsum("bk,bkc->bc", w, xy_fit[indices].astype(np.float64)).astype(np.float32)


def _fit_input(sp, ids: np.ndarray, pca_dims: int, seed: int, progress) -> np.ndarray:
    """The rows the backends see: (m, min(d, pca_dims)) float32, PCA-reduced when wide."""
    x = np.asarray(sp.vectors[ids], dtype=np.float32) if len(ids) < sp.rows else \
        np.asarray(sp.vectors, dtype=np.float32)
    if sp.dim > pca_dims:
        x = _pca_project(x, pca_dims, seed=seed, progress=progress, desc=f"pca to {pca_dims}")
    return x


def _validate(method, backend, metric, pca_dims, seed, n_neighbors, perplexity, min_dist,
              n_epochs, fit_rows):
    from ..errors import check_choice, check_positive_int

    check_choice("method", method, METHODS)
    check_choice("backend", backend, LAYOUTS.choices())
    check_choice("metric", metric, METRICS)
    check_positive_int("pca_dims", pca_dims, minimum=2)
    check_positive_int("seed", seed, minimum=0)
    check_positive_int("n_neighbors", n_neighbors, minimum=2)
    if isinstance(perplexity, bool) or not isinstance(perplexity, (int, float)) or \
            not perplexity > 0 or not np.isfinite(perplexity):
        raise InputError(f"perplexity must be a number > 0, got {perplexity!r}")
    if isinstance(min_dist, bool) or not isinstance(min_dist, (int, float)) or \
            not 0 <= min_dist <= 1:
        raise InputError(f"min_dist must be a number in [0, 1], got {min_dist!r}")
    if n_epochs is not None:
        check_positive_int("n_epochs", n_epochs, minimum=1)
    if fit_rows is not None:
        check_positive_int("fit_rows", fit_rows, minimum=3)


def reduce(ds, *, method: str = "pca", space: str | None = None, backend: str = "auto",
           pca_dims: int = 50, seed: int = 0, force: bool = False, progress: bool | None = None,
           metric: str = "l2", n_neighbors: int = 15, perplexity: float = 30.0,
           min_dist: float = 0.1, n_epochs: int | None = None, fit_rows: int | None = None,
           quality: bool = True, quality_k: int = 15,
           quality_sample: int = 2000, align_to: str | None = None) -> ReduceResult:
    """Lay out ``space`` of ``ds`` in 2-D with ``method``; store and return the layout.

    ``n_epochs``: UMAP epochs (umap-learn's default when None) or t-SNE iterations in all,
    the first third with early exaggeration (750 when None, openTSNE's 250 + 500).
    ``fit_rows``: fit on a seeded sample of this many rows and place the rest by their
    neighbours (None: the backend's limit). ``metric``: of the kNN graph, "l2" or "cosine".
    ``quality``: compute kNN preservation per point (k = ``quality_k``) and trustworthiness /
    continuity on ``quality_sample`` rows, stored with the layout.
    ``align_to``: the name of a stored layout (of another space of the same rows) to line
    this one up with: UMAP / t-SNE start from its coordinates, and the result is aligned to
    it (Procrustes: rotation, reflection, scale, shift), so a point stays where it was unless
    its neighbourhood changed; the per-point ``displacement`` is stored as a column.
    """
    _validate(method, backend, metric, pca_dims, seed, n_neighbors, perplexity, min_dist,
              n_epochs, fit_rows)
    if not isinstance(ds, Dataset):
        ds = Dataset.open(ds)
    sp = ds.space(space)
    n = sp.rows
    reference = None
    if align_to is not None:
        reference = load_layout(ds, name=align_to)
    be, impl = LAYOUTS.create(backend, method=method)
    # A limit at or above N changes nothing: keep it out of the key (min) so it stays reused.
    limit = min(int(fit_rows or impl.fit_rows), n)

    params: dict = {"seed": seed, "backend": be.name}
    if method != "pca":
        params.update(metric=metric, pca_dims=pca_dims, fit_rows=limit)
        if method == "umap":
            params.update(n_neighbors=n_neighbors, min_dist=min_dist, n_epochs=n_epochs)
        else:
            params.update(perplexity=perplexity, n_iter=n_epochs or 750)
    if quality:
        params.update(quality_k=quality_k, quality_sample=quality_sample)
    if reference is not None:
        params.update(align_to=align_to, align_to_file=reference.record.get("xxh3_64"))
    name = layout_key(sp, method, params)
    if not force and name in ds.manifest.get("layouts", {}):
        log.info("layout %s is up to date", name)
        rec = ds.manifest["layouts"][name]
        return ReduceResult(name, sp.name, method, ds.rows, True, 0.0,
                            rec.get("backend", "?"), rec.get("quality"))
    # A read-only dataset fails now, not after minutes of computing.
    ds.prepare_write("layouts")
    sp.ensure_verified()
    check_finite(sp.vectors, f"space {sp.name!r}",
                 hint="a layout needs finite vectors: drop or fix them when ingesting")

    t0 = time.perf_counter()
    timings: dict = {}
    notes: list = []
    fit_info = {"rows": n, "sampled": False}
    graph = None  # (indices, distances) over all rows, when computed
    if method == "pca" or n < 3:
        if method != "pca":
            notes.append(f"N = {n} is too few for {method}: laid out by PCA")
            log.warning("space %r has %d rows: too few for %s; using PCA", sp.name, n, method)
        # a backend without PCA (UMAP only) hands the few rows to the first that has it
        pca_impl = impl if be.does("pca") else LAYOUTS.create("auto", method="pca")[1]
        xy = pca_impl.pca(vectors=sp.vectors, seed=seed, progress=progress)
    else:
        ids = sample_ids(n, limit, seed)
        m = len(ids)
        sampled = m < n
        if method == "umap":
            nn = min(n_neighbors, m - 1)
            if nn < n_neighbors:
                notes.append(f"n_neighbors lowered from {n_neighbors} to {nn} (N - 1)")
            k_graph = nn
        else:
            perp = min(float(perplexity), (m - 1) / 3.0)
            if perp < perplexity:
                notes.append(f"perplexity lowered from {perplexity} to {perp:.3g} (N - 1) / 3")
            k_graph = min(m - 1, max(1, int(3 * perp)))
        if notes:
            log.warning("space %r: %s", sp.name, "; ".join(notes))
        t = time.perf_counter()
        x = _fit_input(sp, ids, pca_dims, seed, progress)
        timings["pca"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        if sampled:
            ind, dist = _knn_search(x, None, k_graph, metric, progress=progress,
                                    desc=f"knn sample k={k_graph}")
        else:
            # Quality needs quality_k neighbours; ask once for whichever is larger.
            kq = min(max(k_graph, quality_k if quality else 0), n - 1)
            ind, dist = _knn_full(ds, sp, kq, metric, progress)
            graph = (ind, dist)
            ind, dist = ind[:, :k_graph], dist[:, :k_graph]
        timings["knn"] = round(time.perf_counter() - t, 3)
        init = initial_layout(x, seed=seed) if reference is None else \
            _start_layout(reference.xy[ids], seed)
        t = time.perf_counter()
        if method == "umap":
            xy_fit = impl.umap(indices=ind, distances=dist, x=x, init=init,
                               n_neighbors=nn, min_dist=float(min_dist),
                               n_epochs=n_epochs, seed=seed, progress=progress)
        else:
            xy_fit = impl.tsne(indices=ind, distances=dist, x=x, init=init, perplexity=perp,
                               n_iter=n_epochs or 750, seed=seed, progress=progress)
        timings["fit"] = round(time.perf_counter() - t, 3)
        if not np.isfinite(xy_fit).all():
            raise BigembedError(f"{method} backend {be.name!r} returned non-finite coordinates "
                                f"for space {sp.name!r}; nothing was stored")
        if sampled:
            t = time.perf_counter()
            xy = _place_rest(sp, ids, xy_fit, pca_dims, seed, metric, n_neighbors, progress)
            timings["transform"] = round(time.perf_counter() - t, 3)
            fit_info = {"rows": m, "sampled": True, "transform": "knn-weighted-mean",
                        "transform_k": min(n_neighbors, m)}
            log.info("fitted %s on %d of %d rows; placed the rest by their neighbours",
                     method, m, n)
        else:
            xy = xy_fit
        fit_info.update(impl.fit_info(method, m))
    if not np.isfinite(xy).all():
        raise BigembedError(f"{method} backend {be.name!r} returned non-finite coordinates "
                            f"for space {sp.name!r}; nothing was stored")
    columns = {}
    aligned = None
    if reference is not None:
        xy, aligned = procrustes(xy, reference.xy)
        columns["displacement"] = np.linalg.norm(xy - reference.xy, axis=1).astype(np.float32)
        aligned["to"] = align_to
    qual = None
    if quality:
        t = time.perf_counter()
        per_point, qual = _quality(ds, sp, xy, graph, quality_k, quality_sample, seed,
                                   metric, progress)
        if per_point is not None:
            columns["knn_preservation"] = per_point
        timings["quality"] = round(time.perf_counter() - t, 3)
    secs = time.perf_counter() - t0
    record = {"space": sp.name, "method": method, "params": params, "backend": be.name,
              "seconds": round(secs, 3), "timings": timings, "fit": fit_info}
    if qual is not None:
        record["quality"] = qual
    if notes:
        record["notes"] = notes
    if aligned is not None:
        record["aligned"] = aligned
    save_layout(ds, name, xy, record, columns)
    log.info("wrote layout %s in %.2fs (%s)", name, secs, be.name)
    return ReduceResult(name, sp.name, method, ds.rows, False, secs, be.name, qual)


def _start_layout(xy: np.ndarray, seed: int) -> np.ndarray:
    """Start coordinates (m, 2) for an optimiser: centred, scaled to a maximum coordinate of
    10, plus a little seeded jitter so coincident points can separate."""
    xy = np.asarray(xy, np.float64)
    xy = xy - xy.mean(0) if len(xy) else xy
    span = float(np.abs(xy).max()) if len(xy) else 0.0
    if span > 0:
        xy *= 10.0 / span
    xy += np.random.default_rng(seed).normal(scale=1e-3, size=xy.shape)
    return xy.astype(np.float32)


def procrustes(xy: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, dict]:
    """``xy`` (N, 2) rotated / reflected, scaled and shifted onto ``ref`` (N, 2) by least
    squares (orthogonal Procrustes); returns the aligned (N, 2) float32 and the transform
    (``rotation`` 2x2, ``scale``, ``shift``, ``rms`` distance after alignment)."""
    a = np.asarray(xy, np.float64)
    b = np.asarray(ref, np.float64)
    ma, mb = a.mean(0), b.mean(0)
    a0, b0 = a - ma, b - mb
    u, sig, vt = np.linalg.svd(a0.T @ b0)
    r = u @ vt
    norm = float((a0 ** 2).sum())
    scale = float(sig.sum() / norm) if norm > 0 else 1.0
    out = scale * (a0 @ r) + mb
    rms = float(np.sqrt(((out - b) ** 2).sum(1).mean()))
    return out.astype(np.float32), {"rotation": np.round(r, 6).tolist(),
                                    "scale": round(scale, 6),
                                    "shift": np.round(mb - scale * (ma @ r), 6).tolist(),
                                    "rms": round(rms, 6)}


def import_layout(ds, xy, *, space: str | None = None, source: dict | None = None,
                  quality: bool = True, quality_k: int = 15, quality_sample: int = 2000,
                  seed: int = 0, metric: str = "l2", progress: bool | None = None
                  ) -> ReduceResult:
    """Store coordinates computed elsewhere, ``xy`` of shape (N, 2) in id order, as a layout
    of ``space`` (method ``"imported"``), keyed by their content, with the same quality
    (kNN preservation per point, trustworthiness, continuity) as a computed layout when the
    space's vectors are finite. ``source``: what the record says they came from."""
    if not isinstance(ds, Dataset):
        ds = Dataset.open(ds)
    sp = ds.space(space)
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape != (ds.rows, 2):
        raise InputError(f"xy must have shape ({ds.rows}, 2), got {xy.shape}")
    if not np.isfinite(xy).all():
        raise InputError(f"xy has {int((~np.isfinite(xy)).any(1).sum())} rows with non-finite "
                         f"coordinates")
    xy = xy.astype(np.float32)
    import xxhash

    params: dict = {"content": xxhash.xxh3_64(np.ascontiguousarray(xy).tobytes()).hexdigest()}
    if quality:
        params.update(quality_k=quality_k, quality_sample=quality_sample)
    name = layout_key(sp, "imported", params)
    rec = ds.manifest.get("layouts", {}).get(name)
    if rec is not None:
        log.info("layout %s is already stored", name)
        return ReduceResult(name, sp.name, "imported", ds.rows, True, 0.0, "imported",
                            rec.get("quality"))
    t0 = time.perf_counter()
    columns, qual = {}, None
    if quality:
        sp.ensure_verified()
        if np.isfinite(sp.vectors).all():
            per_point, qual = _quality(ds, sp, xy, None, quality_k, quality_sample, seed,
                                       metric, progress)
            if per_point is not None:
                columns["knn_preservation"] = per_point
        else:
            log.warning("space %r has non-finite vectors: the imported layout's quality is "
                        "not measured", sp.name)
    secs = time.perf_counter() - t0
    record = {"space": sp.name, "method": "imported", "params": params, "backend": "imported",
              "seconds": round(secs, 3), "source": dict(source or {}),
              "fit": {"rows": ds.rows, "sampled": False}}
    if qual is not None:
        record["quality"] = qual
    save_layout(ds, name, xy, record, columns)
    log.info("imported layout %s (%d points)", name, ds.rows)
    return ReduceResult(name, sp.name, "imported", ds.rows, False, secs, "imported", qual)


def _place_rest(sp, ids, xy_fit, pca_dims, seed, metric, n_neighbors, progress,
                batch_rows: int = 65536) -> np.ndarray:
    """Full (N, 2) layout: fitted rows as fitted, the others placed by their neighbours."""
    from sklearn.decomposition import PCA

    n, m = sp.rows, len(ids)
    xy = np.empty((n, 2), np.float32)
    xy[ids] = xy_fit
    rest = np.setdiff1d(np.arange(n), ids, assume_unique=True)
    base = np.asarray(sp.vectors[ids], dtype=np.float32)
    proj = None
    if sp.dim > pca_dims:
        # Search in the same reduced space the sample was fitted in.
        proj = PCA(n_components=pca_dims, svd_solver="randomized", random_state=seed).fit(base)
        base = proj.transform(base).astype(np.float32)
    k = min(n_neighbors, m)
    cluster = cluster_implementation("place_rows")
    if cluster is not None:  # blocks of rows placed by the workers (bigembed.distributed)
        cluster(sp=sp, rest=rest, base=base, proj=proj, xy_fit=xy_fit, k=k, metric=metric,
                xy=xy, batch_rows=batch_rows, progress=progress)
        return xy
    bar = progress_bar(total=len(rest), desc="place rows", unit="rows", enabled=progress)
    for s in range(0, len(rest), batch_rows):
        rid = rest[s:s + batch_rows]
        xy[rid] = place_rows(sp.vectors, rid, base, proj, xy_fit, k, metric)
        bar.update(len(rid))
    bar.close()
    return xy


def place_rows(vectors, rid: np.ndarray, base: np.ndarray, proj, xy_fit: np.ndarray, k: int,
               metric: str) -> np.ndarray:
    """Layout (b, 2) of rows ``rid`` of ``vectors``, placed by their ``k`` nearest rows of
    ``base`` (the fitted sample, in the space it was fitted in: ``proj`` maps to it). One copy
    of this code places every block, in this process or on a cluster worker."""
    q = np.asarray(vectors[rid], dtype=np.float32)
    if proj is not None:
        q = proj.transform(q).astype(np.float32)
    ind, dist = _knn_search(base, q, k, metric)
    return place_by_neighbors(xy_fit, ind, dist)


#: past this many rows a PCA layout without a stored kNN graph gets its quality from a sample
#: (building the full graph for it would cost minutes where the PCA costs seconds)
QUALITY_FULL_ROWS = 200_000


def _quality(ds, sp, xy, graph, k, sample, seed, metric, progress):
    """(per-point kNN preservation (N,) or None, quality record) of a layout.

    Per point when the kNN graph is at hand (UMAP/t-SNE built it; a stored one is reused) or
    cheap to build (N <= QUALITY_FULL_ROWS); otherwise kNN preservation is estimated on a
    seeded sample of ``sample`` rows (their exact neighbours among all N) and no per-point
    column is stored: build the graph first (``bigembed index`` / ``knn_graph``) to get one.
    """
    from ..search.graph import find_graph, knn_graph
    from .quality import layout_quality, sample_quality

    n = sp.rows
    kq = min(k, n - 1)
    if kq < 1:
        return np.ones(n, np.float32), {"knn_preservation": 1.0, "trustworthiness": None,
                                        "continuity": None, "k": 0, "sample": n}
    if graph is None or graph[0].shape[1] < kq:
        stored = find_graph(ds, space=sp.name, k=kq, metric=metric)
        if stored is not None or n <= QUALITY_FULL_ROWS:
            g = knn_graph(ds, space=sp.name, k=kq, metric=metric, progress=progress)
            graph = (g.indices, g.distances)
        else:
            log.info("quality: no stored kNN graph of %r and %d rows; kNN preservation "
                     "estimated on %d sampled rows (build the graph for a per-point column)",
                     sp.name, n, sample)
            rows = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n),
                                                               replace=False))
            high, _ = _knn_search(sp.vectors, np.asarray(sp.vectors[rows], np.float32), kq + 1,
                                  metric, progress=progress, desc="quality sample")
            return None, sample_quality(rows, high, xy, sp.vectors, k=kq, sample=sample,
                                        seed=seed, metric=metric)
    return layout_quality(graph[0][:, :kq], xy, sp.vectors, k=kq, sample=sample, seed=seed,
                          metric=metric)


__all__ = ["reduce", "import_layout", "pca_layout", "initial_layout", "place_by_neighbors",
           "procrustes", "ReduceResult", "METHODS", "METRICS"]
