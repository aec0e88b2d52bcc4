"""2-D layouts: UMAP / t-SNE / PCA on the CPU backends, degenerate inputs, quality, CLI."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_clean_error, run_cli

from bigembed import BackendUnavailable, Dataset, DatasetWriter, InputError
from bigembed.dataset.layouts import load_layout
from bigembed.reduce.run import initial_layout, place_by_neighbors, reduce

FAST = {"n_epochs": 60}  # fewer epochs/iterations: tests check correctness, not beauty


def write(path, x, space="a"):
    x = np.asarray(x, np.float32)
    with DatasetWriter(path) as dw:
        with dw.space(space, dim=x.shape[1], total_rows=len(x)) as sw:
            sw.write(x)
    return path


def blobs(rng, n=600, d=10, centers=4, spread=0.3):
    c = rng.standard_normal((centers, d)) * 4
    lab = np.arange(n) % centers
    return c[lab] + spread * rng.standard_normal((n, d)), lab


def _separation(xy, lab):
    """Between-centroid distance over within-cluster spread (higher: clusters apart)."""
    cents = np.array([xy[lab == c].mean(0) for c in np.unique(lab)])
    within = np.mean([np.linalg.norm(xy[lab == c] - cents[c], axis=1).mean()
                      for c in np.unique(lab)])
    between = np.mean([np.linalg.norm(a - b) for i, a in enumerate(cents) for b in cents[i + 1:]])
    return between / within


@pytest.mark.parametrize("method", ["umap", "tsne"])
def test_layout_separates_clusters_stores_quality_and_is_reused(tmp_path, rng, method):
    x, lab = blobs(rng)
    ds_path = write(tmp_path / "d", x)
    r = reduce(ds_path, method=method, **FAST)
    from bigembed.registry import resolve

    # auto's pick without a GPU: bigembed's optimiser for UMAP, openTSNE (cpu) for t-SNE
    assert not r.cached and r.backend == resolve("reduce", "auto", method=method).name
    assert r.rows == 600
    lay = load_layout(Dataset.open(ds_path), name=r.name)
    assert lay.xy.shape == (600, 2) and np.isfinite(lay.xy).all()
    assert _separation(lay.xy, lab) > 3.0
    kp = lay.columns["knn_preservation"]
    assert kp.dtype == np.float32 and kp.min() >= 0 and kp.max() <= 1
    q = lay.record["quality"]
    assert q["k"] == 15 and q["knn_preservation"] == pytest.approx(float(kp.mean()), abs=1e-4)
    assert q["trustworthiness"] > 0.85 and q["continuity"] > 0.85
    assert lay.record["fit"]["rows"] == 600 and lay.record["fit"]["sampled"] is False
    again = reduce(ds_path, method=method, **FAST)
    assert again.cached and again.name == r.name and again.quality == q
    # Changing a parameter makes a new layout.
    assert reduce(ds_path, method=method, seed=1, **FAST).name != r.name


def test_large_pca_without_graph_estimates_quality_on_a_sample(tmp_path, rng, monkeypatch):
    """Past QUALITY_FULL_ROWS a PCA layout does not build the full kNN graph for its quality:
    kNN preservation is estimated on sampled rows (close to the per-point mean), no column."""
    import bigembed.reduce.run as red

    x, _ = blobs(rng, n=3000, d=12)
    ds_path = write(tmp_path / "d", x)
    full = reduce(ds_path, method="pca", quality_sample=800)
    assert "knn_preservation" in load_layout(Dataset.open(ds_path), name=full.name).columns
    monkeypatch.setattr(red, "QUALITY_FULL_ROWS", 1000)
    ds2 = write(tmp_path / "d2", x)
    est = reduce(ds2, method="pca", quality_sample=800)
    lay = load_layout(Dataset.open(ds2), name=est.name)
    assert "knn_preservation" not in lay.columns
    assert not Dataset.open(ds2).artifacts("graphs")  # no graph was built for it
    q = lay.record["quality"]
    assert q["per_point"] is False and q["knn_preservation_sample"] == 800
    assert q["knn_preservation"] == pytest.approx(full.quality["knn_preservation"], abs=0.04)
    assert q["trustworthiness"] == full.quality["trustworthiness"]
    # With a stored graph the full per-point column comes back.
    from bigembed.search.graph import knn_graph

    knn_graph(Dataset.open(ds2), k=15)
    again = reduce(ds2, method="pca", quality_sample=800, force=True)
    assert "knn_preservation" in load_layout(Dataset.open(ds2), name=again.name).columns


def test_umap_quality_close_to_plain_umap_learn(tmp_path, rng):
    """Our UMAP (exact kNN graph, PCA init) against umap-learn's defaults on the same data."""
    import warnings

    import umap

    from bigembed.reduce.quality import trustworthiness_continuity

    x, _ = blobs(rng, n=800, d=12, centers=6, spread=1.0)
    ds_path = write(tmp_path / "d", x)
    r = reduce(ds_path, method="umap")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = umap.UMAP(random_state=0).fit_transform(x.astype(np.float32))
    ref_t = trustworthiness_continuity(x, ref, k=15)["trustworthiness"]
    assert r.quality["trustworthiness"] >= ref_t - 0.02


def test_pca_layout_matches_scikit_learn_up_to_sign(tmp_path, rng):
    from sklearn.decomposition import PCA

    x = rng.standard_normal((400, 6)) * np.arange(1, 7)
    ds_path = write(tmp_path / "d", x)
    r = reduce(ds_path, method="pca")
    xy = load_layout(Dataset.open(ds_path), name=r.name).xy
    ref = PCA(2).fit_transform(x.astype(np.float32))
    for j in range(2):
        s = np.sign(xy[:, j] @ ref[:, j])
        np.testing.assert_allclose(s * xy[:, j], ref[:, j], atol=1e-3)


def _degenerate(rng):
    many_same = np.tile(rng.standard_normal((1, 6)), (40, 1))
    zeros = rng.standard_normal((60, 5))
    zeros[:20] = 0.0
    return {
        "n1": (rng.standard_normal((1, 4)), "l2"),
        "n2": (rng.standard_normal((2, 4)), "l2"),
        "n3": (rng.standard_normal((3, 4)), "l2"),
        "n8_below_k": (rng.standard_normal((8, 4)), "l2"),
        "identical": (many_same, "l2"),
        "identical_cosine": (many_same, "cosine"),
        "zero_vectors_cosine": (zeros, "cosine"),
        "d1": (rng.standard_normal((50, 1)), "l2"),
        "duplicates": (np.repeat(rng.standard_normal((10, 3)), 5, axis=0), "l2"),
    }


@pytest.mark.parametrize("method", ["umap", "tsne", "pca"])
@pytest.mark.parametrize("case", list(_degenerate(np.random.default_rng(0))))
def test_degenerate_input_never_gives_nan(tmp_path, method, case):
    x, metric = _degenerate(np.random.default_rng(7))[case]
    ds_path = write(tmp_path / "d", x)
    r = reduce(ds_path, method=method, metric=metric, **FAST)
    lay = load_layout(Dataset.open(ds_path), name=r.name)
    assert lay.xy.shape == (len(x), 2) and np.isfinite(lay.xy).all()
    kp = lay.columns["knn_preservation"]
    assert np.isfinite(kp).all() and kp.min() >= 0 and kp.max() <= 1
    if method != "pca" and len(x) < 30:
        # Lowered n_neighbors / perplexity (or the PCA fallback) is said in the record.
        assert lay.record.get("notes")


def test_sampled_fit_places_the_rest_and_records_it(tmp_path, rng):
    # A 2-D sheet embedded in 20-D: a good layout keeps most neighbours.
    z = rng.uniform(0, 10, size=(1500, 2))
    x = z @ rng.standard_normal((2, 20)) + 0.01 * rng.standard_normal((1500, 20))
    ds_path = write(tmp_path / "d", x)
    full = reduce(ds_path, method="umap", **FAST)
    r = reduce(ds_path, method="umap", fit_rows=400, pca_dims=8, **FAST)
    lay = load_layout(Dataset.open(ds_path), name=r.name)
    assert lay.record["fit"]["sampled"] is True and lay.record["fit"]["rows"] == 400
    assert lay.record["params"]["fit_rows"] == 400 and "transform" in lay.record["timings"]
    assert np.isfinite(lay.xy).all()
    # Placing by neighbours keeps a good share of what a full fit keeps.
    assert r.quality["knn_preservation"] > 0.5 * full.quality["knn_preservation"]
    assert r.quality["trustworthiness"] > 0.9


def test_place_by_neighbors_and_initial_layout():
    xy_fit = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)
    # A point at distance 0 from fitted row 1 lands on it (weights decay from the nearest).
    got = place_by_neighbors(xy_fit, np.array([[1, 0, 2]]), np.array([[0.0, 5.0, 5.0]]))
    assert got.shape == (1, 2) and np.linalg.norm(got[0] - xy_fit[1]) < 5.0
    even = place_by_neighbors(xy_fit, np.array([[0, 1]]), np.array([[2.0, 2.0]]))
    np.testing.assert_allclose(even[0], [5.0, 0.0], atol=1e-5)
    init = initial_layout(np.ones((5, 3), np.float32))
    assert np.isfinite(init).all() and np.ptp(init, axis=0).min() > 0


def test_bad_parameters_and_inputs_are_refused(tmp_path, rng):
    ds_path = write(tmp_path / "d", rng.standard_normal((50, 4)))
    with pytest.raises(InputError, match="^method"):
        reduce(ds_path, method="mds")
    with pytest.raises(InputError, match="^backend='gpu'|^backend must"):
        reduce(ds_path, method="umap", backend="gpu")
    with pytest.raises(InputError, match="^perplexity"):
        reduce(ds_path, method="tsne", perplexity=-1)
    with pytest.raises(InputError, match="^n_neighbors"):
        reduce(ds_path, method="umap", n_neighbors=1)
    with pytest.raises(InputError, match="^metric"):
        reduce(ds_path, method="umap", metric="manhattan")
    with pytest.raises(BackendUnavailable, match="cuml"):
        reduce(ds_path, method="umap", backend="cuml")
    x = rng.standard_normal((50, 4))
    x[7, 2] = np.nan
    bad = write(tmp_path / "nan", x)
    with pytest.raises(InputError, match="NaN or infinite.*id 7"):
        reduce(bad, method="umap")
    assert not Dataset.open(bad).manifest.get("layouts")


def test_cli_reduce_umap_then_info_shows_quality(tmp_path, rng):
    x, _ = blobs(rng, n=300, d=6)
    ds_path = write(tmp_path / "d", x)
    p = run_cli("reduce", ds_path, "--method", "umap", "--n-epochs", "50", check=True)
    assert "computed in" in p.stdout and "trustworthiness" in p.stdout
    p = run_cli("reduce", ds_path, "--method", "umap", "--n-epochs", "50", check=True)
    assert "up to date" in p.stdout
    info = run_cli("info", ds_path, check=True)
    assert "quality=" in info.stdout and "knn_preservation" in info.stdout
    assert_clean_error(run_cli("reduce", ds_path, "--method", "tsne", "--perplexity", "0"),
                       "--perplexity must be a number > 0")
    assert_clean_error(run_cli("reduce", ds_path, "--backend", "cuml", "--method", "umap"),
                       "cuml", "Install")


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["umap", "tsne", "pca"])
def test_cuml_backend_quality_close_to_cpu(tmp_path, rng, method):
    pytest.importorskip("cuml")
    x, _ = blobs(rng, n=2000, d=32)
    ds_path = write(tmp_path / "d", x)
    cpu = reduce(ds_path, method=method, backend="cpu")
    gpu = reduce(ds_path, method=method, backend="cuml")
    assert gpu.backend == "cuml"
    assert gpu.quality["trustworthiness"] >= cpu.quality["trustworthiness"] - 0.02


def test_numba_cache_goes_to_bigembed_cache_and_covers_umap_sgd(tmp_path):
    """A second process loads umap-learn's compiled SGD from disk instead of compiling it."""
    import os
    import subprocess
    import sys

    code = ("import os, umap.layouts as L\n"
            "from numba.core.caching import NullCache\n"
            "from bigembed.reduce.backends import _import_umap\n"
            "_import_umap()\n"
            "print(os.environ['NUMBA_CACHE_DIR'])\n"
            "print(isinstance(L._nb_optimize_layout_euclidean_single_epoch_parallel._cache,"
            " NullCache))\n"
            # serial and parallel SGD must not share one cache file (the last saved would
            # be loaded for both)
            "print(L._nb_optimize_layout_euclidean_single_epoch_parallel.py_func.__qualname__"
            " != L._nb_optimize_layout_euclidean_single_epoch.py_func.__qualname__)\n")
    env = dict(os.environ, BIGEMBED_CACHE=str(tmp_path / "c"))
    env.pop("NUMBA_CACHE_DIR", None)
    # The probe imports umap.layouts first on purpose: caching must still be switched on.
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    cache_dir, still_uncached, apart = p.stdout.split()
    assert cache_dir == str(tmp_path / "c" / "numba") and still_uncached == "False"
    assert apart == "True"


_RASTER_PROBE = """
import numpy as np
from bigembed.kernels import raster as R
img = np.zeros((8, 8), np.uint32); img[2, 3] = 1
R.neighbour_share(img, 1); R.nonzero_counts(img.ravel())
R.bin_runs(np.zeros(3, np.float32), np.zeros(3, np.float32), np.array([[0, 3]], np.int64),
           x_range=(-1, 1), y_range=(-1, 1), width=4, height=4)
st = [d.stats for d in R._kernels().values() if hasattr(d, "stats")]
print(sum(sum(s.cache_hits.values()) for s in st), sum(sum(s.cache_misses.values()) for s in st))
"""


def _compiled_files(root):
    return {p for p in root.rglob("*") if p.suffix in (".nbi", ".nbc")}


def test_kernels_compile_into_bigembed_cache_and_a_second_process_reuses_them(tmp_path):
    """Compiled kernels go to $BIGEMBED_CACHE/numba, never into the source tree, and a new
    process loads them instead of compiling."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "kernels"
    before = _compiled_files(src)
    env = dict(os.environ, BIGEMBED_CACHE=str(tmp_path / "c"))
    env.pop("NUMBA_CACHE_DIR", None)
    runs = []
    for _ in range(2):
        p = subprocess.run([sys.executable, "-c", _RASTER_PROBE], capture_output=True,
                           text=True, env=env, timeout=300)
        assert p.returncode == 0, p.stderr
        runs.append(tuple(int(v) for v in p.stdout.split()))
        if len(runs) == 1:
            first_files = _compiled_files(tmp_path / "c" / "numba")
    (hits1, misses1), (hits2, misses2) = runs
    assert misses1 > 0 and first_files  # compiled once, into the bigembed cache
    assert misses2 == 0 and hits2 >= misses1  # the second process only loaded
    assert _compiled_files(tmp_path / "c" / "numba") == first_files
    assert _compiled_files(src) == before  # nothing new beside the sources


@pytest.mark.slow
@pytest.mark.timeout(1500)  # compiles umap-learn from scratch once (about a minute when idle)
def test_warming_the_cache_covers_serial_and_parallel_umap(tmp_path):
    """What `make demo` leaves behind: the first UMAP of a new process compiles nothing."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, BIGEMBED_CACHE=str(tmp_path / "c"))
    env.pop("NUMBA_CACHE_DIR", None)
    warm = ("from bigembed.reduce.backends import warm_numba_cache, is_cached, UMAP_SGD\n"
            "warm_numba_cache()\nprint(all(is_cached(p) for p in UMAP_SGD))\n")
    p = subprocess.run([sys.executable, "-c", warm], capture_output=True, text=True, env=env,
                       timeout=600)
    assert p.returncode == 0 and p.stdout.split() == ["True"], p.stderr
    use = ("import logging, umap.layouts as L\n"
           "logging.basicConfig(level=logging.INFO)\n"
           "from bigembed.reduce.backends import warm_numba_cache\n"
           "warm_numba_cache()\n"
           "st = [L._nb_optimize_layout_euclidean_single_epoch.stats,\n"
           "      L._nb_optimize_layout_euclidean_single_epoch_parallel.stats]\n"
           "print(sum(sum(s.cache_misses.values()) for s in st),"
           " sum(sum(s.cache_hits.values()) for s in st))\n")
    p = subprocess.run([sys.executable, "-c", use], capture_output=True, text=True, env=env,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    misses, hits = map(int, p.stdout.split())
    assert misses == 0 and hits == 2
    assert "compiling umap-learn" not in p.stderr  # said only when it does compile
