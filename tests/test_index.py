"""FAISS indexes: kinds, recall measured against exact search, content keys, cache, errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from bigembed import Dataset, DatasetWriter
from bigembed.errors import BackendUnavailable, InputError
from bigembed.search.backends import _TorchSearcher
from bigembed.search.index import build_index, clear_cache, find_index, load_index


def write(path, x, *, space="a"):
    with DatasetWriter(path) as dw:
        with dw.space(space, dim=x.shape[1], total_rows=len(x)) as sw:
            sw.write(x)
    return path


@pytest.fixture
def blobs(tmp_path, rng):
    """6,000 x 16 clustered vectors: what IVF is built for."""
    centres = rng.normal(0, 4, (20, 16))
    x = (centres[rng.integers(0, 20, 6000)] + rng.standard_normal((6000, 16))).astype(np.float32)
    return write(tmp_path / "b", x), x


def _true_recall(loaded, x, queries, k=10):
    """Recall@k of a loaded index on held-out queries, against scikit-learn's exact search."""
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x)
    td, _ = nn.kneighbors(queries)
    d, i = loaded.search(queries, k)
    assert (i >= 0).all()
    return float((np.sqrt(np.maximum(d, 0)) <= td[:, -1:] + 1e-4).mean())


def test_auto_flat_is_exact_stored_and_reused(blobs):
    path, x = blobs
    r = build_index(path, space="a")
    assert r.kind == "flat" and r.recall_at_10 == 1.0 and not r.cached
    ds = Dataset.open(path)
    rec = ds.artifacts("indexes")[r.name]
    assert (path / rec["file"]).is_file() and rec["space_fingerprint"] == ds.space("a").fingerprint
    again = build_index(path, space="a")
    assert again.cached and again.name == r.name
    # A different parameter is a different artifact; the first stays.
    other = build_index(path, space="a", metric="cosine")
    assert other.name != r.name and len(Dataset.open(path).artifacts("indexes")) == 2


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "ivfpq"])
def test_approximate_kinds_reach_target_recall(blobs, rng, kind):
    path, x = blobs
    r = build_index(path, kind=kind, target_recall=0.95)
    assert r.kind == kind and r.recall_at_10 >= 0.95
    assert r.search  # nprobe / efSearch was tuned and recorded
    loaded = load_index(path, r.name)
    held_out = (x[rng.integers(0, len(x), 100)] + 0.1 * rng.standard_normal((100, 16))
                ).astype(np.float32)
    assert _true_recall(loaded, x, held_out) >= 0.9


def test_tuned_recall_holds_on_held_out_queries(tmp_path, rng):
    """Tuned on one sample with a margin and verified on another, the promise holds on a third
    set of queries the tuner never saw, checked against exact search."""
    from bigembed.search.exact import sample_ids

    n, d = 40_000, 32
    centres = rng.normal(0, 3, (200, d))
    x = (centres[rng.integers(0, 200, n)] + rng.standard_normal((n, d))).astype(np.float32)
    path = write(tmp_path / "h", x)
    r = build_index(path, kind="ivf", target_recall=0.95)
    rec = Dataset.open(path).artifacts("indexes")[r.name]
    assert rec["recall_queries"] == 200 and rec["tuning_queries"] == 200
    assert "held-out" in rec["recall_measured_on"] and rec["recall_at_10"] >= 0.95
    loaded = load_index(path, r.name)
    # 1,000 rows outside both of the tuner's samples (it draws 400 with seed 2).
    used = set(sample_ids(n, 400, seed=2).tolist())
    fresh = np.array([i for i in np.random.default_rng(7).choice(n, 1400, replace=False)
                      if i not in used][:1000])
    assert _true_recall(loaded, x, x[fresh]) >= 0.95


def test_loaded_index_is_cached_per_process(blobs):
    path, _ = blobs
    clear_cache()
    r = build_index(path)
    assert load_index(path, r.name) is load_index(Dataset.open(path), r.name)


def test_cosine_zero_vectors_are_reported_never_nan(tmp_path, rng):
    x = rng.standard_normal((500, 8)).astype(np.float32)
    x[[3, 77]] = 0.0
    path = write(tmp_path / "z", x)
    r = build_index(path, metric="cosine")
    assert r.zero_vectors == 2
    d, i = load_index(path, r.name).search(np.vstack([x[3], x[5]]), 5)
    assert np.isfinite(d).all() and (i >= 0).all()
    assert np.allclose(d[0], 0.0)  # a zero query: inner product 0 with everything


def test_nan_in_space_is_a_clear_error(tmp_path, rng):
    x = rng.standard_normal((100, 4)).astype(np.float32)
    x[42, 1] = np.nan
    path = write(tmp_path / "n", x)
    with pytest.raises(InputError, match=r"space 'a' has 1 rows with NaN.*id 42"):
        build_index(path)
    assert not (path / "indexes").exists() or not list((path / "indexes").iterdir())


def test_bad_parameters(blobs):
    path, _ = blobs
    with pytest.raises(InputError, match="^kind"):
        build_index(path, kind="lsh")
    with pytest.raises(InputError, match="^metric"):
        build_index(path, metric="manhattan")
    with pytest.raises(InputError, match="^target_recall"):
        build_index(path, kind="ivf", target_recall=1.5)
    with pytest.raises(InputError, match="^space"):
        build_index(path, space="nope")


def test_explicit_gpu_backend_without_gpu_says_how_to_install(blobs):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    with pytest.raises(BackendUnavailable, match="torch.*cannot run"):
        build_index(blobs[0], backend="torch")


def test_tiny_and_one_dimensional_spaces(tmp_path, rng):
    x = rng.standard_normal((5, 1)).astype(np.float32)
    path = write(tmp_path / "t", x)
    r = build_index(path, kind="ivf")  # too few rows for IVF: falls back to flat
    assert r.kind == "flat" and r.recall_at_10 == 1.0
    assert find_index(Dataset.open(path), space="a") == r.name


def test_torch_searcher_on_cpu_agrees_with_faiss(blobs):
    pytest.importorskip("torch")
    path, x = blobs
    s = _TorchSearcher(x, "l2", "cpu")
    q = x[:50] + 0.01
    d, i = s.search(q, 10)
    loaded = load_index(path, build_index(path).name)
    fd, fi = loaded.search(q, 10)
    np.testing.assert_allclose(d, fd, rtol=1e-4, atol=1e-3)


def test_dimension_check_survives_python_O(blobs, tmp_path):
    """FAISS's own dimension check is an assert; ours must hold under -O."""
    path, _ = blobs
    np.save(tmp_path / "v.npy", np.ones(5, np.float32))
    p = subprocess.run([sys.executable, "-O", "-m", "bigembed", "neighbors", str(path),
                        "--vector", str(tmp_path / "v.npy")], capture_output=True, text=True)
    assert p.returncode == 2 and "expected (16,)" in p.stderr and "Traceback" not in p.stderr
