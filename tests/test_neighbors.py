"""Lookup (library + CLI) and the kNN graph artifact, against scikit-learn's exact search."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_clean_error
from sklearn.neighbors import NearestNeighbors

from bigembed import Dataset, DatasetWriter
from bigembed.errors import InputError
from bigembed.search.graph import knn_graph
from bigembed.search.index import build_index
from bigembed.search.lookup import neighbors, neighbors_many


def write(path, x, *, space="a"):
    with DatasetWriter(path) as dw:
        with dw.space(space, dim=x.shape[1], total_rows=len(x)) as sw:
            sw.write(x)
    return path


def _sk(x, k, metric="euclidean"):
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric=metric).fit(x)
    return nn.kneighbors(x)


def test_lookup_matches_exact_search_and_excludes_self(small_ds):
    ds = Dataset.open(small_ds)
    x = ds.space().vectors
    td, ti = _sk(x, 11)
    for qid in (0, 17, 1999):
        r = neighbors(small_ds, id=qid, k=10)
        ids = [n["id"] for n in r.neighbors]
        assert qid not in ids and len(ids) == 10
        assert ids == [i for i in ti[qid] if i != qid][:10]
        np.testing.assert_allclose([n["distance"] for n in r.neighbors],
                                   [d for d, i in zip(td[qid], ti[qid]) if i != qid][:10],
                                   rtol=1e-4)
        assert {"label", "key", "confidence"} <= set(r.neighbors[0])
    with_self = neighbors(small_ds, id=17, k=3, include_self=True)
    assert with_self.neighbors[0]["id"] == 17 and with_self.neighbors[0]["distance"] == 0.0


def test_key_and_vector_queries(small_ds):
    ds = Dataset.open(small_ds)
    key = ds.meta["key"].iloc[42]
    assert neighbors(small_ds, key=key, k=3).query["id"] == 42
    r = neighbors(small_ds, vector=ds.space().vectors[42], k=3)
    assert r.neighbors[0]["id"] == 42 and r.query == {"vector": True}


def test_duplicates_stay_and_self_goes(tmp_path, rng):
    x = rng.standard_normal((50, 3)).astype(np.float32)
    x[[5, 6, 7]] = x[4]
    path = write(tmp_path / "d", x)
    ids = [n["id"] for n in neighbors(path, id=5, k=3).neighbors]
    assert sorted(ids) == [4, 6, 7]
    assert all(n["distance"] == 0.0 for n in neighbors(path, id=5, k=3).neighbors)


def test_k_larger_than_n_returns_all_and_says_so(tmp_path, rng):
    path = write(tmp_path / "s", rng.standard_normal((4, 1)).astype(np.float32))
    r = neighbors(path, id=0, k=10)
    assert sorted(n["id"] for n in r.neighbors) == [1, 2, 3]
    assert any("returning all 3" in n for n in r.notes)


def test_ivf_never_returns_minus_one(tmp_path, rng):
    """IVF with few probes cannot fill a large k; those queries are answered exactly."""
    centres = rng.normal(0, 20, (40, 8))
    x = (centres[rng.integers(0, 40, 4000)] + rng.standard_normal((4000, 8))).astype(np.float32)
    path = write(tmp_path / "i", x)
    r = build_index(path, kind="ivf", target_recall=0.5)
    assert r.search["nprobe"] < 8
    res = neighbors(path, id=0, k=1500)
    ids = [n["id"] for n in res.neighbors]
    assert len(ids) == 1500 and min(ids) >= 0 and len(set(ids)) == 1500
    assert all(np.isfinite(n["distance"]) for n in res.neighbors)


def test_bad_queries_are_clear_errors(small_ds, cli, tmp_path):
    np.save(tmp_path / "nan.npy", np.full(16, np.nan, np.float32))
    np.save(tmp_path / "short.npy", np.ones(3, np.float32))
    (tmp_path / "ids.txt").write_text("1\nseven\n")
    # Through the CLI: one line, exit 2, no traceback.
    for args, frag in [(["--id", "2000"], "out of range"),
                       (["--vector", str(tmp_path / "short.npy")], "expected (16,)"),
                       (["--ids-file", str(tmp_path / "ids.txt")], "line 2")]:
        assert_clean_error(cli("neighbors", small_ds, *args), frag)
    # The same checks in the library (what the HTTP endpoint and the map call).
    cases = [
        (dict(key="no-such-key"), "no-such-key"),
        (dict(id=1, space="nope"), "no space 'nope'"),
        (dict(vector=tmp_path / "nan.npy"), "NaN"),
        (dict(vector=np.ones((2, 16))), r"expected \(16,\)"),
        (dict(vector=tmp_path / "missing.npy"), "does not exist"),
        (dict(id=1, k=0), "^k must be"),
        (dict(id=1, key="x"), "exactly one"),
        (dict(id=True), "^id must be an integer"),
    ]
    for kw, frag in cases:
        with pytest.raises(InputError, match=frag):
            neighbors(small_ds, **kw)
    with pytest.raises(InputError, match="out of range"):
        neighbors_many(small_ds, ids=[1, -1])


def test_cli_json_shapes(small_ds, cli, tmp_path):
    p = cli("neighbors", small_ds, "--id", "3", "-k", "4", "--json", check=True)
    doc = json.loads(p.stdout)
    assert len(doc["neighbors"]) == 4 and {"id", "distance"} <= set(doc["neighbors"][0])
    (tmp_path / "ids.txt").write_text("# queries\n3\n\n9\n")
    p = cli("neighbors", small_ds, "--ids-file", tmp_path / "ids.txt", "-k", "2", "--json",
            check=True)
    docs = json.loads(p.stdout)
    assert [d["query"]["id"] for d in docs] == [3, 9] and all(len(d["neighbors"]) == 2
                                                              for d in docs)
    assert docs[0]["neighbors"] == doc["neighbors"][:2]
    p = cli("neighbors", small_ds, "--id", "3", "-k", "2", check=True)
    assert "nearest neighbours of id 3" in p.stdout


def test_index_cli_builds_once(small_ds, cli):
    p = cli("index", small_ds, "--kind", "ivf", "--graph", "5", check=True)
    assert "recall@10" in p.stdout and "graph" in p.stdout
    p2 = cli("index", small_ds, "--kind", "ivf", "--json", check=True)
    assert json.loads(p2.stdout)["index"]["cached"] is True
    assert_clean_error(cli("index", small_ds, "--target-recall", "2"), "--target-recall")


def test_many_matches_one_at_a_time(small_ds):
    many = neighbors_many(small_ds, ids=[5, 6, 7], k=4)
    for r, qid in zip(many, (5, 6, 7)):
        assert r.neighbors == neighbors(small_ds, id=qid, k=4).neighbors


def test_cosine_lookup_with_zero_rows(tmp_path, rng):
    x = rng.standard_normal((300, 6)).astype(np.float32)
    x[9] = 0.0
    path = write(tmp_path / "c", x)
    r = neighbors(path, id=9, k=5, metric="cosine")
    assert any("all-zero" in n for n in r.notes)
    assert all(n["distance"] == pytest.approx(1.0) for n in r.neighbors)
    r2 = neighbors(path, id=1, k=5, metric="cosine")
    td, ti = _sk(x, 6, "cosine")
    assert [n["id"] for n in r2.neighbors] == [i for i in ti[1] if i != 1][:5]


# ------------------------------------------------------------------------------ kNN graph


def test_exact_graph_matches_sklearn_and_is_reused(small_ds):
    g = knn_graph(small_ds, k=15)
    x = Dataset.open(small_ds).space().vectors
    td, ti = _sk(x, 16)
    assert g.indices.shape == (2000, 15) and g.indices.dtype == np.int64
    assert g.distances.dtype == np.float32
    assert (g.indices != np.arange(2000)[:, None]).all()
    np.testing.assert_allclose(g.distances, td[:, 1:], rtol=1e-4, atol=1e-4)
    assert g.record["recall"] == 1.0 and g.record["method"] == "exact"
    again = knn_graph(small_ds, k=15)
    assert again.name == g.name
    np.testing.assert_array_equal(again.indices, g.indices)
    smaller = knn_graph(small_ds, k=5)  # served from the k=15 graph
    assert smaller.name == g.name and smaller.indices.shape == (2000, 5)
    np.testing.assert_array_equal(smaller.indices, g.indices[:, :5])


def test_ivf_graph_recall_measured_against_exact(tmp_path, rng):
    centres = rng.normal(0, 4, (30, 10))
    x = (centres[rng.integers(0, 30, 5000)] + rng.standard_normal((5000, 10))).astype(np.float32)
    path = write(tmp_path / "g", x)
    g = knn_graph(path, k=10, method="ivf", target_recall=0.9)
    assert g.record["method"] == "ivf" and g.record["recall"] >= 0.9
    assert (g.indices >= 0).all() and (g.indices != np.arange(5000)[:, None]).all()
    td, _ = _sk(x, 11)
    true_recall = (g.distances <= td[:, -1:] + 1e-4).mean()
    assert true_recall >= 0.88


def test_graph_edge_cases(tmp_path, rng):
    x = rng.standard_normal((6, 1)).astype(np.float32)
    x[2] = x[1]
    path = write(tmp_path / "e", x)
    g = knn_graph(path, k=5)  # k = N - 1: everything else
    assert all(sorted(row) == sorted(set(range(6)) - {i}) for i, row in enumerate(g.indices))
    for bad in (0, 6, 2.5):
        with pytest.raises(InputError, match="k must be"):
            knn_graph(path, k=bad)
    z = rng.standard_normal((40, 3)).astype(np.float32)
    z[0] = 0
    gz = knn_graph(write(tmp_path / "z", z), k=4, metric="cosine")
    assert np.isfinite(gz.distances).all() and gz.record["zero_vectors"] == 1


def test_repeated_calls_reuse_the_loaded_index_and_see_a_rebuilt_dataset(tmp_path, rng):
    from bigembed.search import index as ix

    ix.clear_cache()
    x = rng.standard_normal((200, 4)).astype(np.float32)
    path = write(tmp_path / "r", x)
    first = neighbors(path, id=0, k=3)
    cached = list(ix._CACHE.values())
    for i in range(5):
        neighbors(path, id=i, k=3)
    assert list(ix._CACHE.values()) == cached and len(cached) == 1
    # The same path rewritten with other vectors: the next call sees the new dataset.
    y = x[::-1].copy()
    with DatasetWriter(path, overwrite=True) as dw:
        with dw.space("a", dim=4, total_rows=200) as sw:
            sw.write(y)
    again = neighbors(path, id=199, k=3)
    assert [n["id"] for n in again.neighbors] == [199 - n["id"] for n in first.neighbors]


def test_meta_rows_match_pandas(small_ds):
    from bigembed.search.lookup import meta_rows

    ds = Dataset.open(small_ds)
    rows = meta_rows(ds, [7, 3])
    want = ds.meta.iloc[[7, 3]].to_dict("records")
    assert [r["id"] for r in rows] == [7, 3]
    for r, w in zip(rows, want):
        assert r["key"] == w["key"] and r["label"] == w["label"]
        assert r["confidence"] == pytest.approx(float(w["confidence"]))
        assert isinstance(r["correct"], bool)
