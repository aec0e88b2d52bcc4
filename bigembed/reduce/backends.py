"""Layout backends for :mod:`bigembed.reduce`, registered under the ``reduce`` stage.

Every backend takes the same inputs: a precomputed kNN graph (indices and distances of shape
(m, k), self excluded) from the neighbour stage, the rows to fit (of shape (m, p), already
PCA-reduced when wide) and an initial layout of shape (m, 2); it returns (m, 2) float32.
So no backend computes neighbours again.

- ``cuml``: RAPIDS cuML UMAP / TSNE / PCA on a CUDA GPU (thin adapter over its documented API;
  the kNN graph goes in as a sparse ``knn_graph``).
- ``numba``: UMAP by bigembed's own CPU optimiser (``kernels/umap_sgd.py``): umap-learn's
  fuzzy graph and SGD schedule, float32, edges in Z-order, all cores; the default for UMAP on
  a machine without a GPU.
- ``cpu``: umap-learn (SGD in numba; the reference the ``numba`` backend is tested against),
  openTSNE (FFT-accelerated gradients past 10k points, Barnes-Hut below, openTSNE's own
  "auto" rule), scikit-learn PCA.

GPU libraries are imported here, lazily, and nowhere else in the stage.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import BackendUnavailable
from ..jitcache import cache_uncached, enable_numba_cache, is_cached, numba_cache_dir
from ..progress import progress_enabled
from ..registry import cuda_check, declare

log = logging.getLogger(__name__)


# -- numba compilation cache (one place: bigembed.jitcache) ---------------------------------

#: umap-learn's SGD epoch, serial (seeded, reproducible) and parallel: compiled on first use
UMAP_SGD = ("umap_*/layouts._optimize_layout_euclidean_single_epoch-*.nbi",
            "umap_*/layouts._optimize_layout_euclidean_single_epoch."
            "_nb_optimize_layout_euclidean_single_epoch_parallel-*.nbi")
#: bigembed's own UMAP optimiser (kernels/umap_sgd.py), one file per kernel
SGD_KERNELS = ("*/umap_sgd._epoch_chunks-*.nbi", "*/umap_sgd._relabel-*.nbi",
               "*/umap_sgd._smooth_knn-*.nbi")
_said_compiling = False
_said_compiling_sgd = False


def _import_umap():
    enable_numba_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import umap
        import umap.layouts
        import umap.spectral
        import umap.umap_
    cache_uncached(umap.layouts, umap.umap_, umap.spectral)
    return umap


def _say_if_compiling(parallel: bool) -> None:
    """The first UMAP after an install compiles umap-learn's numba code (tens of seconds on a
    small machine); say so once, so the wait is not mistaken for a hang."""
    global _said_compiling
    if _said_compiling or is_cached(UMAP_SGD[1 if parallel else 0]):
        return
    _said_compiling = True
    log.info("compiling umap-learn's numba code: once after install (tens of seconds; later "
             "runs load it from %s)", os.environ.get("NUMBA_CACHE_DIR") or numba_cache_dir())


def _import_sgd():
    """bigembed's UMAP optimiser, saying once when its kernels are compiled rather than loaded
    (about 10 s on a small machine, once after install; ``make install`` does it)."""
    global _said_compiling_sgd
    enable_numba_cache()
    if not _said_compiling_sgd and not all(is_cached(p) for p in SGD_KERNELS):
        _said_compiling_sgd = True
        log.info("compiling bigembed's UMAP optimiser: once after install (about 10 s; later "
                 "runs load it from %s)", os.environ.get("NUMBA_CACHE_DIR") or numba_cache_dir())
    from ..kernels import umap_sgd

    return umap_sgd


def warm_sgd_cache() -> None:
    """Compile (or load) bigembed's UMAP optimiser (``make install`` runs it)."""
    _import_sgd().warm()


def warm_numba_cache(progress=None) -> None:
    """Compile (or load) every numba function a layout uses (bigembed's optimiser, umap-learn's
    serial and parallel SGD) on a few points, so the first real UMAP after this starts at once
    (``make demo`` runs it)."""
    warm_sgd_cache()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    from sklearn.neighbors import NearestNeighbors

    dist, ind = NearestNeighbors(n_neighbors=6).fit(x).kneighbors(x)
    ind, dist = ind[:, 1:], dist[:, 1:].astype(np.float32)
    be = CpuLayouts()
    for seed in (0, None):  # a seed runs the serial epoch, none the parallel one
        be.umap(indices=ind, distances=dist, x=x, init=x[:, :2], n_neighbors=5, min_dist=0.1,
                n_epochs=5, seed=seed, progress=progress)


# -- the interface -------------------------------------------------------------------------


@runtime_checkable
class LayoutBackend(Protocol):
    """What every layout backend does (the methods it lacks raise BackendUnavailable).

    ``umap`` / ``tsne``: ``indices``, ``distances`` of shape (m, k), self excluded, from the
    neighbour stage; ``x`` (m, p) the rows to fit; ``init`` (m, 2). ``pca``: ``vectors``
    (N, d). Each returns an (m, 2) or (N, 2) float32 array. ``fit_rows``: the most rows it
    fits before the rest are placed by their neighbours. ``fit_info(method, rows)``: what the
    layout record should say about the fit (e.g. whether it is reproducible).
    """

    fit_rows: int

    def umap(self, *, indices, distances, x, init, n_neighbors, min_dist, n_epochs, seed,
             progress=False): ...

    def tsne(self, *, indices, distances, x, init, perplexity, n_iter, seed,
             progress=False): ...

    def pca(self, *, vectors, seed, progress=False): ...

    def fit_info(self, method: str, rows: int) -> dict: ...


LAYOUTS = declare("reduce", LayoutBackend, description="2-D layouts")


# -- backends -----------------------------------------------------------------------------

def _with_self(ind: np.ndarray, dist: np.ndarray, n_neighbors: int):
    """umap-learn's kNN convention: each row's first neighbour is itself at distance 0."""
    m = len(ind)
    k = n_neighbors - 1
    i = np.empty((m, k + 1), np.int64)
    d = np.empty((m, k + 1), np.float32)
    i[:, 0] = np.arange(m)
    d[:, 0] = 0.0
    i[:, 1:] = ind[:, :k]
    d[:, 1:] = dist[:, :k]
    return i, d


#: from this many fitted rows on, umap-learn's SGD runs multi-threaded (not reproducible)
PARALLEL_ROWS = 20_000


class CpuLayouts:
    """umap-learn, openTSNE and scikit-learn on the CPU."""

    fit_rows = 2_000_000

    def fit_info(self, method: str, rows: int) -> dict:
        return {"reproducible": rows < PARALLEL_ROWS} if method == "umap" else {}

    def umap(self, *, indices, distances, x, init, n_neighbors, min_dist, n_epochs, seed,
             progress=False):
        umap = _import_umap()
        ind, dist = _with_self(indices, distances, n_neighbors)
        # A random_state makes umap-learn's SGD single-threaded and reproducible; without one
        # it runs on all cores. Below PARALLEL_ROWS the threads cost more than they save (on
        # 2 busy cores: 1.7 s seeded vs 3.1 s parallel at 2k rows, equal at 20k), so small
        # layouts are reproducible; large ones use every core (the seed still fixes the
        # initial layout and the sample).
        rs = seed if seed is not None and len(indices) < PARALLEL_ROWS else None
        _say_if_compiling(parallel=rs is None)
        show = progress_enabled(progress)
        model = umap.UMAP(
            n_neighbors=n_neighbors, n_components=2, min_dist=min_dist, n_epochs=n_epochs,
            init=np.asarray(init, np.float32), random_state=rs, metric="euclidean",
            precomputed_knn=(ind, dist, None), force_approximation_algorithm=True,
            verbose=show, tqdm_kwds={"disable": not show, "leave": False},
        )
        # umap-learn reports progress with print(); keep stdout clean for callers' output.
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            return np.asarray(model.fit_transform(np.asarray(x, np.float32)), np.float32)

    def tsne(self, *, indices, distances, x, init, perplexity, n_iter, seed, progress=False):
        enable_numba_cache()
        from openTSNE import TSNEEmbedding, affinity, nearest_neighbors

        from ..progress import progress_bar

        # openTSNE starts its thread pool on every gradient call: below ~10k points that
        # costs more than it saves (67 ms a call measured on a busy 2-core machine).
        jobs = 1 if len(indices) < 10_000 else -1
        knn = nearest_neighbors.PrecomputedNeighbors(np.asarray(indices, np.int64),
                                                     np.asarray(distances, np.float64))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            aff = affinity.PerplexityBasedNN(perplexity=perplexity, knn_index=knn, n_jobs=jobs,
                                             random_state=seed, verbose=False)
        # openTSNE's recommendation: initial layout with standard deviation 1e-4.
        init = np.asarray(init, np.float64)
        init = init / max(float(init[:, 0].std()), 1e-12) * 1e-4
        # n_iter in all, the first third with early exaggeration (openTSNE: 250 + 500).
        early = max(1, n_iter // 3)
        bar = progress_bar(total=n_iter, desc="t-SNE", unit="iter", enabled=progress)

        def tick(it, err, emb):
            bar.update(25)

        emb = TSNEEmbedding(init, aff, negative_gradient_method="auto", n_jobs=jobs,
                            random_state=seed, verbose=False, callbacks=tick,
                            callbacks_every_iters=25)
        emb = emb.optimize(n_iter=early, exaggeration=12, momentum=0.5)
        emb = emb.optimize(n_iter=max(1, n_iter - early), momentum=0.8)
        bar.close()
        return np.asarray(emb, np.float32)

    def pca(self, *, vectors, seed, progress=False):
        from .pca import pca_layout

        return pca_layout(vectors, seed=seed, progress=progress)


class NumbaLayouts:
    """UMAP by bigembed's own optimiser on the CPU (``kernels/umap_sgd.py``): umap-learn's fuzzy
    graph and SGD schedule (epochs per edge by weight, negative-sample rate, learning-rate
    decay, clipping), so a layout means the same, at a fraction of the time. No t-SNE or PCA
    (the ``cpu`` backend has them; ``auto`` picks it for those)."""

    fit_rows = 2_000_000

    def fit_info(self, method: str, rows: int) -> dict:
        return {"reproducible": rows < PARALLEL_ROWS, "optimiser": "bigembed umap_sgd"}

    def umap(self, *, indices, distances, x, init, n_neighbors, min_dist, n_epochs, seed,
             progress=False):
        from ..kernels.umap_torch import find_ab_params
        from ..progress import progress_bar

        sgd = _import_sgd()
        n = len(indices)
        epochs = int(n_epochs or (500 if n <= 10_000 else 200))  # umap-learn's default
        ind, dist = _with_self(indices, distances, n_neighbors)
        graph = sgd.fuzzy_graph(ind, dist, n_neighbors=n_neighbors)
        a, b = find_ab_params(1.0, float(min_dist))
        # as the cpu backend: seeded small layouts on one core, reproducible; large ones on all
        threads = 1 if seed is not None and n < PARALLEL_ROWS else None
        bar = progress_bar(total=epochs, desc="UMAP", unit="epoch", enabled=progress)
        xy = sgd.optimize_layout(graph, np.asarray(init, np.float32), n_epochs=epochs, a=a,
                                 b=b, seed=0 if seed is None else seed, threads=threads,
                                 callback=lambda e: bar.update(1))
        bar.close()
        return xy

    def tsne(self, **kwargs):
        raise BackendUnavailable("the numba backend has UMAP only: use backend 'cpu' "
                                 "(openTSNE) or 'cuml' for t-SNE")

    def pca(self, **kwargs):
        raise BackendUnavailable("the numba backend has UMAP only: use backend 'cpu' "
                                 "(scikit-learn) or 'torch' for PCA")


class CumlLayouts:
    """RAPIDS cuML on a CUDA GPU (https://docs.rapids.ai/api/cuml/stable/api/)."""

    fit_rows = 5_000_000

    def fit_info(self, method: str, rows: int) -> dict:
        return {}

    @staticmethod
    def _graph(indices, distances):
        import scipy.sparse

        m, k = indices.shape
        indptr = np.arange(0, m * k + 1, k)
        return scipy.sparse.csr_matrix(
            (np.asarray(distances, np.float32).ravel(), np.asarray(indices).ravel(), indptr),
            shape=(m, m))

    def umap(self, *, indices, distances, x, init, n_neighbors, min_dist, n_epochs, seed,
             progress=False):
        from cuml.manifold import UMAP

        ind, dist = _with_self(indices, distances, n_neighbors)
        model = UMAP(n_neighbors=n_neighbors, n_components=2, min_dist=min_dist,
                     n_epochs=n_epochs, init="spectral", random_state=seed,
                     output_type="numpy")
        return np.asarray(model.fit_transform(np.asarray(x, np.float32),
                                              knn_graph=self._graph(ind, dist)), np.float32)

    def tsne(self, *, indices, distances, x, init, perplexity, n_iter, seed, progress=False):
        from cuml.manifold import TSNE

        model = TSNE(n_components=2, perplexity=perplexity, n_neighbors=indices.shape[1],
                     method="fft", n_iter=n_iter, random_state=seed, output_type="numpy")
        return np.asarray(model.fit_transform(np.asarray(x, np.float32),
                                              knn_graph=self._graph(indices, distances)),
                          np.float32)

    def pca(self, *, vectors, seed, progress=False):
        from cuml import PCA

        x = np.ascontiguousarray(vectors, dtype=np.float32)
        out = np.zeros((len(x), 2), np.float32)
        k = min(2, x.shape[1])
        out[:, :k] = np.asarray(PCA(n_components=k, output_type="numpy").fit_transform(x))
        return out


class TorchLayouts:
    """UMAP and PCA in torch (``kernels/umap_torch.py``): the GPU path where cuML is not
    installed; it runs on the CPU device too (slower than umap-learn there). No t-SNE: its
    repulsion needs an FFT or tree method this path does not have (cuML or openTSNE do)."""

    fit_rows = 5_000_000

    def fit_info(self, method: str, rows: int) -> dict:
        return {}

    def __init__(self, device: str | None = None):
        if device is None:
            from ..registry import cuda_check

            device = "cpu" if cuda_check() else "cuda"
        self.device = device

    def umap(self, *, indices, distances, x, init, n_neighbors, min_dist, n_epochs, seed,
             progress=False):
        from ..kernels.umap_torch import find_ab_params, fuzzy_graph, optimize_layout
        from ..progress import progress_bar

        n = len(indices)
        epochs = int(n_epochs or (500 if n <= 10_000 else 200))  # umap-learn's default
        a, b = find_ab_params(1.0, float(min_dist))
        head, tail, w = fuzzy_graph(indices, distances, n_neighbors=n_neighbors,
                                    device=self.device)
        bar = progress_bar(total=epochs, desc=f"UMAP (torch, {self.device})", unit="epoch",
                           enabled=progress)
        xy = optimize_layout(head, tail, w, init, n_epochs=epochs, a=a, b=b, seed=seed,
                             callback=lambda e: bar.update(1))
        bar.close()
        return xy

    def tsne(self, *, indices, distances, x, init, perplexity, n_iter, seed, progress=False):
        raise BackendUnavailable("the torch backend has no t-SNE (it needs FFT or tree "
                                 "repulsion): use --backend cpu (openTSNE) or cuml")

    def pca(self, *, vectors, seed, progress=False):
        from ..kernels.umap_torch import pca_2d

        return pca_2d(vectors, device=self.device)


LAYOUTS.register(
    "cuml", CumlLayouts, requires=("cuml",), check=cuda_check, gpu=True,
    install="Install RAPIDS cuML matching your CUDA (e.g. `pip install cuml-cu12 "
            "--extra-index-url=https://pypi.nvidia.com`).",
    description="cuML UMAP / TSNE / PCA on a CUDA GPU",
    methods={"umap": (), "tsne": (), "pca": ()})
LAYOUTS.register(
    "torch", TorchLayouts, requires=("torch", "scipy"),
    install="pip install torch (a CUDA build for the GPU)",
    description="UMAP / PCA in torch (kernels/umap_torch.py): CUDA when present, else CPU",
    # under auto only with a GPU (on the CPU umap-learn is faster); by name on any device
    methods={"umap": (), "pca": ()}, auto_check=cuda_check)
LAYOUTS.register(
    "numba", NumbaLayouts, requires=("numba", "scipy"),
    install="Install the layout extra: `pip install 'bigembed[layout]'`.",
    description="UMAP by bigembed's CPU optimiser (kernels/umap_sgd.py: umap-learn's model "
                "and schedule, float32, Z-ordered edges, all cores)",
    methods={"umap": ()})
LAYOUTS.register(
    "cpu", CpuLayouts, requires=("sklearn",),
    install="Install the layout extra: `pip install 'bigembed[layout]'`.",
    description="umap-learn / openTSNE (FFT) / scikit-learn PCA on the CPU",
    methods={"umap": ("umap", "numba"), "tsne": ("openTSNE",), "pca": ()})

__all__ = ["CpuLayouts", "CumlLayouts", "NumbaLayouts", "TorchLayouts", "enable_numba_cache",
           "numba_cache_dir", "warm_numba_cache", "warm_sgd_cache"]
