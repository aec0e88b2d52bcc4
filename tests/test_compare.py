"""Comparing spaces on their vectors: overlap, movers, gained/lost, agreement, trajectories."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from conftest import assert_clean_error, run_cli

from bigembed import Dataset, DatasetWriter
from bigembed.compare import compare, trajectory
from bigembed.compare.overlap import neighbour_majority, neighbour_overlap
from bigembed.compare.run import depth_of
from bigembed.errors import InputError
from bigembed.search import neighbors
from bigembed.search.exact import exact_neighbors


def write(path, spaces: dict, meta: dict | None = None):
    n = len(next(iter(spaces.values())))
    with DatasetWriter(path) as dw:
        for name, x in spaces.items():
            with dw.space(name, dim=x.shape[1], total_rows=n) as sw:
                sw.write(np.asarray(x, np.float32))
        if meta is not None:
            dw.set_meta(pa.table(meta))
    return path


@pytest.fixture
def clustered(rng):
    """2,000 x 16 in 8 clusters, labels = clusters; B = A with 5% of rows moved into other
    clusters (each onto a point of another label)."""
    centres = rng.normal(0, 8, (8, 16))
    labels = rng.integers(0, 8, 2000)
    x = (centres[labels] + rng.standard_normal((2000, 16))).astype(np.float32)
    moved = np.sort(rng.choice(2000, 100, replace=False))
    y = x.copy()
    shift = rng.integers(1, 8, 100)  # never 0: another label
    partner = [rng.choice(np.flatnonzero(labels == (labels[i] + s) % 8))
               for i, s in zip(moved, shift)]
    y[moved] = x[partner] + 0.01 * rng.standard_normal((100, 16)).astype(np.float32)
    return x, y, labels, moved


def test_a_space_against_itself_overlaps_everywhere(tmp_path, clustered):
    x, _, labels, _ = clustered
    path = write(tmp_path / "d", {"a": x}, {"label": labels})
    r = compare(path, a="a", b="a", k=10)
    assert r.overlap.shape == (2000,) and r.overlap.dtype == np.float32
    assert (r.overlap == 1).all() and r.mean_overlap == 1.0
    assert r.gained(5) == [] and r.lost(5) == []


def test_a_row_permuted_copy_overlaps_by_chance_only(tmp_path, clustered, rng):
    x, _, labels, _ = clustered
    path = write(tmp_path / "d", {"a": x, "p": x[rng.permutation(len(x))]})
    r = compare(path, a="a", b="p", k=15)
    # neighbours of a point in a permuted copy are unrelated: about k / N of them coincide
    assert r.mean_overlap < 15 / 2000 + 0.01


def test_moved_rows_are_the_movers(tmp_path, clustered):
    x, y, labels, moved = clustered
    path = write(tmp_path / "d", {"a": x, "b": y},
                 {"label": labels, "prediction": labels})
    r = compare(path, a="a", b="b", k=15)
    least = np.argsort(r.overlap, kind="stable")[:len(moved)]
    assert len(np.intersect1d(least, moved)) >= 0.9 * len(moved)
    movers = r.movers(10)
    assert [m["id"] for m in movers] == sorted(
        [m["id"] for m in movers], key=lambda i: (r.overlap[i], i))
    assert set(m["id"] for m in movers) <= set(moved.tolist())
    assert all("label" in m for m in movers)
    # moved rows sit among another cluster in B: the neighbour majority no longer matches
    s = r.summary["agreement"]
    assert s["only_a"]["n"] >= 0.9 * len(moved) and s["both"]["mean"] > 0.9
    assert r.agreement.dtype == np.int8 and set(np.unique(r.agreement)) <= {0, 1, 2, 3}


def test_graph_overlap_is_checked_against_exact_search(tmp_path, rng):
    centres = rng.normal(0, 3, (10, 24))
    lab = rng.integers(0, 10, 6000)
    x = (centres[lab] + rng.standard_normal((6000, 24))).astype(np.float32)
    y = x + 0.3 * rng.standard_normal(x.shape).astype(np.float32)
    path = write(tmp_path / "d", {"a": x, "b": y})
    r = compare(path, a="a", b="b", k=10, graph_method="ivf", sample=300)
    rows = np.arange(0, 6000, 20)
    exact = neighbour_overlap(exact_neighbors(x, rows, 10), exact_neighbors(y, rows, 10))
    assert abs(float(exact.mean()) - float(r.overlap[rows].mean())) <= 0.02
    assert r.error_estimate["sample"] == 300 and r.error_estimate["mean_abs"] <= 0.02
    graphs = Dataset.open(path).artifacts("graphs")
    assert all(rec["method"] == "ivf" for rec in graphs.values())
    # By default no search runs: the exact neighbours each graph was checked on at build
    # time are reused, and they are exact search's own answer.
    d = compare(path, a="a", b="b", k=10, graph_method="ivf")
    e = d.error_estimate
    assert e["how"] == "exact neighbours stored with the graphs" and e["mean_abs"] <= 0.02
    rows = np.asarray(next(iter(graphs.values()))["exact_sample"]["rows"])
    want = neighbour_overlap(exact_neighbors(x, rows, 10), exact_neighbors(y, rows, 10))
    assert e["sample"] == len(rows) and e["exact_mean_overlap"] == round(float(want.mean()), 4)
    np.testing.assert_array_equal(d.overlap, r.overlap)


def test_gained_and_lost_are_the_set_differences_of_neighbour_lookups(tmp_path, clustered):
    x, y, labels, moved = clustered
    path = write(tmp_path / "d", {"a": x, "b": y}, {"label": labels})
    r = compare(path, a="a", b="b", k=8)
    for i in [int(moved[0]), int(moved[1]), 3, 17]:
        na = [n["id"] for n in neighbors(path, space="a", id=i, k=8).neighbors]
        nb = [n["id"] for n in neighbors(path, space="b", id=i, k=8).neighbors]
        assert r.gained(i) == [j for j in nb if j not in na]
        assert r.lost(i) == [j for j in na if j not in nb]
        pt = r.point(i)
        assert pt["gained"] == r.gained(i) and pt["meta"]["label"] == int(labels[i])


def test_result_is_stored_and_reused(tmp_path, clustered):
    x, y, labels, _ = clustered
    path = write(tmp_path / "d", {"a": x, "b": y}, {"label": labels})
    r1 = compare(path, a="a", b="b", k=10)
    r2 = compare(path, a="a", b="b", k=10)
    assert not r1.cached and r2.cached and r1.artifact == r2.artifact
    np.testing.assert_array_equal(r1.overlap, r2.overlap)
    assert r1.artifact in Dataset.open(path).artifacts("comparisons")
    assert compare(path, a="a", b="b", k=5).artifact != r1.artifact


def test_prediction_flips_per_checkpoint(tmp_path, clustered, rng):
    x, y, labels, moved = clustered
    pred_a = labels.copy()
    pred_b = labels.copy()
    pred_b[moved] = (labels[moved] + 1) % 8  # the moved rows are now predicted wrong
    meta = {"label": labels, "prediction@a": pred_a, "correct@a": pred_a == labels,
            "prediction@b": pred_b, "correct@b": pred_b == labels}
    path = write(tmp_path / "d", {"fc1@a": x, "fc1@b": y}, meta)
    r = compare(path, a="fc1@a", b="fc1@b", k=15)
    flips = r.summary["prediction_flips"]
    assert flips["right->wrong"]["n"] == len(moved) and flips["wrong->right"]["n"] == 0
    assert flips["right->wrong"]["mean"] < flips["right->right"]["mean"]


def test_trajectory_finds_the_layer_where_labels_separate(tmp_path, rng):
    """Layers before L carry no label structure (noise), layers from L on separate the 40
    labels: depth L for at least 95% of points (a noise layer's neighbour majority matches a
    point's label by chance for about 1 in 40)."""
    n, L, c = 4000, 2, 40
    labels = rng.integers(0, c, n)
    centres = rng.normal(0, 10, (c, 12))
    layers = [rng.standard_normal((n, 12)).astype(np.float32) for _ in range(L)]
    layers += [(centres[labels] + rng.standard_normal((n, 12))).astype(np.float32)
               for _ in range(2)]
    spaces = {f"l{i}": v for i, v in enumerate(layers)}
    path = write(tmp_path / "d", spaces, {"label": labels})
    t = trajectory(path, spaces=list(spaces), k=15)
    assert t.agreement.shape == (n, 4) and t.depth.shape == (n,)
    assert (t.depth == L).mean() >= 0.95
    assert all(cv[-1] > 0.9 and cv[0] < 0.2 for cv in t.curves.values())
    assert trajectory(path, spaces=list(spaces), k=15).cached


def test_depth_and_majority_helpers():
    ok = np.array([[0, 1, 1], [1, 0, 1], [1, 1, 1], [1, 1, 0], [0, 0, 0]], bool)
    assert depth_of(ok).tolist() == [1, 2, 0, -1, -1]
    idx = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])
    codes = np.array([0, 1, 1, -1])
    # ties go to the smaller code; a missing code (-1) never wins
    assert neighbour_majority(idx, codes, 2).tolist() == [1, 0, 0, 1]


def test_bad_input_is_refused_and_writes_nothing(tmp_path, clustered):
    x, y, labels, _ = clustered
    path = write(tmp_path / "d", {"a": x, "b": y}, {"label": labels})
    before = json.loads((path / "manifest.json").read_text())
    with pytest.raises(InputError, match="no space 'zz'"):
        compare(path, a="a", b="zz")
    with pytest.raises(InputError, match="^k must be"):
        compare(path, a="a", b="b", k=2000)
    with pytest.raises(InputError, match="at least two"):
        trajectory(path, spaces=["a"])
    with pytest.raises(InputError, match="more than once"):
        trajectory(path, spaces=["a", "a"])
    assert json.loads((path / "manifest.json").read_text()) == before
    no_label = write(tmp_path / "n", {"a": x, "b": y})
    with pytest.raises(InputError, match="needs a label column"):
        trajectory(no_label, spaces=["a", "b"])


def test_cli_compare_json_and_errors(tmp_path, clustered):
    x, y, labels, moved = clustered
    path = write(tmp_path / "d", {"a": x, "b": y}, {"label": labels})
    p = run_cli("compare", path, "--a", "a", "--b", "b", "--top", "5", "--json", "--id",
                int(moved[0]), check=True)
    out = json.loads(p.stdout)
    assert {"a", "b", "k", "n", "mean_overlap", "error_estimate", "artifact", "movers"} <= set(out)
    assert len(out["movers"]) == 5 and {"id", "overlap", "label"} <= set(out["movers"][0])
    assert out["point"]["id"] == int(moved[0])
    p = run_cli("compare", path, "--a", "a", "--b", "b")
    assert p.returncode == 0 and "points that move most" in p.stdout
    p = run_cli("compare", path, "--spaces", "a,b", "--json", check=True)
    assert json.loads(p.stdout)["spaces"] == ["a", "b"]
    assert_clean_error(run_cli("compare", path, "--a", "a", "--b", "nope"), "no space 'nope'")
    assert_clean_error(run_cli("compare", path, "--a", "a", "--b", "b", "-k", "5000"), "-k")
    assert_clean_error(run_cli("compare", path, "--a", "a"), "--b")


def test_procrustes_recovers_a_similarity_transform(rng):
    from bigembed.reduce.run import procrustes

    ref = rng.standard_normal((500, 2))
    t = np.pi / 5
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) @ np.diag([1, -1])
    moved = 3.0 * ref @ rot + np.array([5.0, -2.0])
    aligned, info = procrustes(moved, ref)
    np.testing.assert_allclose(aligned, ref, atol=1e-4)
    assert info["rms"] < 1e-4 and abs(info["scale"] - 1 / 3) < 1e-4


def test_align_to_keeps_unmoved_points_in_place(tmp_path, clustered):
    from bigembed.dataset.layouts import load_layout
    from bigembed.reduce import reduce

    x, y, labels, moved = clustered
    path = write(tmp_path / "d", {"a": x, "b": y}, {"label": labels})
    la = reduce(path, space="a", method="umap", quality=False, n_epochs=100)
    free = reduce(path, space="b", method="umap", quality=False, n_epochs=100, seed=1)
    lb = reduce(path, space="b", method="umap", quality=False, n_epochs=100, seed=1,
                align_to=la.name)
    ds = Dataset.open(path)
    A, B = load_layout(ds, name=la.name), load_layout(ds, name=lb.name)
    F = load_layout(ds, name=free.name).xy
    disp = B.columns["displacement"]
    np.testing.assert_allclose(disp, np.linalg.norm(B.xy - A.xy, axis=1), rtol=1e-5)
    still = np.setdiff1d(np.arange(len(x)), moved)
    span = np.ptp(A.xy, axis=0).max()
    # unmoved points stay close to where A put them; the moved ones travel further
    assert np.median(disp[still]) < 0.1 * span
    assert np.median(disp[moved]) > 3 * np.median(disp[still])
    # without alignment the same layout of B sits elsewhere
    assert np.median(np.linalg.norm(F - A.xy, axis=1)) > np.median(disp[still])
    rec = ds.artifacts("layouts")[lb.name]
    assert rec["aligned"]["to"] == la.name and rec["params"]["align_to"] == la.name
    with pytest.raises(InputError, match="nope"):
        reduce(path, space="b", method="umap", align_to="nope")


@pytest.mark.slow
def test_api_compare_answers_like_the_cli(tmp_path, clustered):
    import urllib.error
    import urllib.request

    from bigembed.reduce import reduce
    from conftest import start_serve, stop_serve

    x, y, labels, moved = clustered
    path = write(tmp_path / "d", {"a": x, "b": y}, {"label": labels})
    reduce(path, space="a", method="pca", quality=False)
    i = int(moved[0])
    proc, url, _ = start_serve(path)
    try:
        with urllib.request.urlopen(f"{url}/api/compare?a=a&b=b&id={i}&k=8", timeout=120) as r:
            out = json.loads(r.read())
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{url}/api/compare?a=a&b=nope&id={i}", timeout=60)
        assert e.value.code == 400
    finally:
        stop_serve(proc)
    cli = json.loads(run_cli("compare", path, "--a", "a", "--b", "b", "-k", 8, "--json",
                             "--id", i, check=True).stdout)
    assert out["point"] == cli["point"] and out["mean_overlap"] == cli["mean_overlap"]
    assert out["point"]["gained"] == compare(path, a="a", b="b", k=8).gained(i)
