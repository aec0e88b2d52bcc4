"""2-D layouts of a space: PCA (scikit-learn) on every machine.

``reduce(ds, method="pca")`` fits on at most ``fit_rows`` rows (a seeded sample) and projects
all rows in batches, so memory stays bounded for any N. The result is a content-keyed layout
artifact: repeating the call with the same inputs returns the stored one at once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from .dataset import Dataset
from .errors import InputError
from .layouts import layout_key, load_layout, save_layout
from .progress import progress_bar

log = logging.getLogger(__name__)

METHODS = ("pca",)


@dataclass(frozen=True)
class ReduceResult:
    """The layout written (or found) by :func:`reduce`."""

    name: str
    space: str
    method: str
    rows: int
    cached: bool
    seconds: float
    backend: str


def _sample_ids(n: int, k: int, seed: int) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def pca_layout(vectors: np.ndarray, *, seed: int = 0, fit_rows: int = 200_000,
               batch_rows: int = 262_144, progress=None) -> np.ndarray:
    """Project (N, d) vectors on their first two principal components; returns (N, 2) float32.

    Fits on a seeded sample of at most ``fit_rows`` rows, projects all rows in batches.
    """
    from sklearn.decomposition import PCA

    n, d = vectors.shape
    out = np.zeros((n, 2), np.float32)
    if n < 2 or d < 1:
        return out
    sample = np.asarray(vectors[_sample_ids(n, fit_rows, seed)], dtype=np.float32)
    k = min(2, d, len(sample))
    pca = PCA(n_components=k, svd_solver="full" if d <= 64 else "randomized", random_state=seed)
    pca.fit(sample)
    bar = progress_bar(total=n, desc="pca transform", unit="rows", enabled=progress)
    for s in range(0, n, batch_rows):
        block = np.asarray(vectors[s:s + batch_rows], dtype=np.float32)
        out[s:s + len(block), :k] = pca.transform(block)
        bar.update(len(block))
    bar.close()
    return out


def reduce(ds, *, method: str = "pca", space: str | None = None, seed: int = 0,
           force: bool = False, progress: bool | None = None) -> ReduceResult:
    """Lay out ``space`` of ``ds`` in 2-D with ``method``; store and return the layout."""
    if not isinstance(ds, Dataset):
        ds = Dataset.open(ds)
    if method not in METHODS:
        raise InputError(f"--method must be one of {list(METHODS)}, got {method!r}")
    sp = ds.space(space)
    params = {"seed": seed}
    name = layout_key(sp, method, params)
    if not force and name in ds.manifest.get("layouts", {}):
        log.info("layout %s is up to date", name)
        return ReduceResult(name, sp.name, method, ds.rows, True, 0.0,
                            ds.manifest["layouts"][name].get("backend", "?"))
    sp.ensure_verified()
    t0 = time.perf_counter()
    xy = pca_layout(sp.vectors, seed=seed, progress=progress)
    secs = time.perf_counter() - t0
    save_layout(ds, name, xy, {"space": sp.name, "method": method, "params": params,
                               "backend": "sklearn", "seconds": round(secs, 3)})
    log.info("wrote layout %s in %.2fs", name, secs)
    return ReduceResult(name, sp.name, method, ds.rows, False, secs, "sklearn")


__all__ = ["reduce", "pca_layout", "ReduceResult", "load_layout", "METHODS"]
