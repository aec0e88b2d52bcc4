"""PCA projections of a space, fitted on a seeded sample of at most ``fit_rows`` rows and
applied in batches (the 2-D PCA layout, and the PCA pre-reduction of UMAP/t-SNE inputs)."""

from __future__ import annotations

import logging
import warnings

import numpy as np

from ..progress import progress_bar
from ..search.exact import sample_ids

log = logging.getLogger(__name__)


def pca_layout(vectors: np.ndarray, *, seed: int = 0, fit_rows: int = 200_000,
               batch_rows: int = 262_144, progress=None) -> np.ndarray:
    """Project (N, d) vectors on their first two principal components; returns (N, 2) float32.

    Fits on a seeded sample of at most ``fit_rows`` rows, projects all rows in batches.
    """
    return _pca_project(vectors, 2, seed=seed, fit_rows=fit_rows, batch_rows=batch_rows,
                        progress=progress, desc="pca transform")


def _pca_project(vectors, dims: int, *, seed: int = 0, fit_rows: int = 200_000,
                 batch_rows: int = 262_144, progress=None, desc="pca") -> np.ndarray:
    """(N, d) -> (N, dims) float32 on the first ``dims`` principal components (zero-padded)."""
    from sklearn.decomposition import PCA

    n, d = vectors.shape
    out = np.zeros((n, dims), np.float32)
    if n < 2 or d < 1:
        return out
    sample = np.asarray(vectors[sample_ids(n, fit_rows, seed)], dtype=np.float32)
    k = min(dims, d, len(sample))
    pca = PCA(n_components=k, svd_solver="full" if d <= 64 else "randomized", random_state=seed)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        # Identical rows have zero variance: scikit-learn warns on the explained-variance
        # ratio (0 / 0), which we never use; the components are still finite.
        warnings.simplefilter("ignore", RuntimeWarning)
        pca.fit(sample)
    bar = progress_bar(total=n, desc=desc, unit="rows", enabled=progress)
    for s in range(0, n, batch_rows):
        block = np.asarray(vectors[s:s + batch_rows], dtype=np.float32)
        out[s:s + len(block), :k] = pca.transform(block)
        bar.update(len(block))
    bar.close()
    return out
