"""The torch UMAP path (kernels/umap_torch.py, reduce backend "torch") on the CPU device,
against umap-learn: the fuzzy graph entry by entry, and the layout's quality."""

from __future__ import annotations

import numpy as np
import pytest

from bigembed import Dataset, DatasetWriter, InputError
from bigembed.dataset.layouts import load_layout
from bigembed.reduce.run import reduce

torch = pytest.importorskip("torch")


def _blobs(rng, n=800, d=12, centers=5):
    c = rng.standard_normal((centers, d)) * 4
    lab = np.arange(n) % centers
    return (c[lab] + 0.4 * rng.standard_normal((n, d))).astype(np.float32), lab


def _knn(x, k):
    from sklearn.neighbors import NearestNeighbors

    from bigembed.search.exact import drop_self

    d, i = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    rows = np.arange(len(x))
    _, keep_i = drop_self(None, i, rows, k)
    # the distances in the same order (self, wherever it came, dropped)
    order = np.argsort(np.where(i == rows[:, None], np.inf, 0), axis=1, kind="stable")[:, :k]
    return keep_i, np.take_along_axis(d, order, 1).astype(np.float32)


def test_fuzzy_graph_equals_umap_learn(rng):
    from umap.umap_ import fuzzy_simplicial_set

    from bigembed.kernels.umap_torch import fuzzy_graph

    x, _ = _blobs(rng, n=400)
    x[:5] = x[5]  # duplicates: zero distances
    nn = 15
    ind, dist = _knn(x, nn - 1)
    head, tail, w = fuzzy_graph(ind, dist, n_neighbors=nn)
    got = np.zeros((len(x), len(x)))
    got[head.numpy(), tail.numpy()] = w.numpy()
    # umap-learn's convention: self first at distance 0
    ui = np.c_[np.arange(len(x)), ind]
    ud = np.c_[np.zeros(len(x), np.float32), dist]
    ref = fuzzy_simplicial_set(x, nn, np.random.RandomState(0), "euclidean",
                               knn_indices=ui, knn_dists=ud)[0].toarray()
    assert np.allclose(got, got.T)
    np.testing.assert_allclose(got, ref, atol=2e-4)


def test_find_ab_params_matches_umap_learn():
    from umap.umap_ import find_ab_params as ref

    from bigembed.kernels.umap_torch import find_ab_params

    for md in (0.0, 0.1, 0.5):
        np.testing.assert_allclose(find_ab_params(1.0, md), ref(1.0, md), rtol=1e-4)


def test_pca_2d_equals_scikit_learn(rng):
    from sklearn.decomposition import PCA

    from bigembed.kernels.umap_torch import pca_2d

    x = rng.standard_normal((300, 6)) * np.array([5, 3, 1, 1, 0.5, 0.1])
    got = pca_2d(x)
    ref = PCA(2).fit_transform(x)
    for j in range(2):
        assert abs(np.corrcoef(got[:, j], ref[:, j])[0, 1]) > 0.9999
    assert pca_2d(x[:, :1]).shape == (300, 2) and (pca_2d(x[:, :1])[:, 1] == 0).all()


def _write(path, x):
    with DatasetWriter(path) as dw:
        with dw.space("a", dim=x.shape[1], total_rows=len(x)) as sw:
            sw.write(x)
    return path


def test_torch_backend_layout_quality_close_to_umap_learn(tmp_path, rng):
    x, lab = _blobs(rng)
    p = _write(tmp_path / "d", x)
    t = reduce(p, method="umap", backend="torch", n_epochs=200)
    c = reduce(p, method="umap", backend="cpu", n_epochs=200)
    assert t.backend == "torch" and t.name != c.name
    xy = load_layout(Dataset.open(p), name=t.name).xy
    assert xy.shape == (800, 2) and np.isfinite(xy).all()
    cents = np.array([xy[lab == i].mean(0) for i in range(5)])
    within = np.mean([np.linalg.norm(xy[lab == i] - cents[i], axis=1).mean() for i in range(5)])
    between = np.mean([np.linalg.norm(a - b) for i, a in enumerate(cents) for b in cents[i + 1:]])
    assert between / within > 3
    assert t.quality["trustworthiness"] >= c.quality["trustworthiness"] - 0.02
    assert t.quality["knn_preservation"] >= c.quality["knn_preservation"] - 0.05
    # PCA by torch: same picture as scikit-learn's up to signs
    pt = reduce(p, method="pca", backend="torch")
    pc = reduce(p, method="pca", backend="cpu")
    a = load_layout(Dataset.open(p), name=pt.name).xy
    b = load_layout(Dataset.open(p), name=pc.name).xy
    assert abs(np.corrcoef(a[:, 0], b[:, 0])[0, 1]) > 0.999


def test_torch_backend_refuses_tsne_and_auto_passes_it_over_on_cpu(tmp_path, rng):
    from bigembed.registry import resolve

    x, _ = _blobs(rng, n=100)
    p = _write(tmp_path / "d", x)
    with pytest.raises(InputError, match="torch.*no tsne"):
        reduce(p, method="tsne", backend="torch")
    assert not list((tmp_path / "d").glob("layouts/*"))
    if not torch.cuda.is_available():
        assert resolve("reduce", "auto", method="umap").name in ("cuml", "numba")
    assert resolve("reduce", "auto", method="tsne").name != "torch"
