"""Groups: error distributions (group_stats), unit contrast (contrast) and named clusters
(cluster), against plain numpy and scikit-learn on small planted data."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from conftest import assert_clean_error

import bigembed
from bigembed.errors import BigembedError, InputError

N, D = 3000, 32
PLANTED = (3, 17)
CENTRES = np.array([[0, 0], [12, 0], [0, 12], [12, 12], [6, 24]], float)
WORDS = ["apple orchard harvest", "rocket launch orbit", "violin concerto orchestra",
         "glacier ice polar", "volcano lava eruption"]


def _write(path, spaces: dict, meta: dict | None):
    from bigembed.dataset.writer import DatasetWriter

    with DatasetWriter(path, mode="create") as dw:
        for name, (x, dtype) in spaces.items():
            with dw.space(name, dim=x.shape[1], dtype=dtype) as sw:
                sw.write(x)
        if meta is not None:
            dw.set_meta(pa.table(meta))
    return path


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """N rows: a float32 and a float16 space where dims 3 and 17 are shifted for one planted
    group, labels/predictions/confidence/loss, a text column, and a planted 2-D layout of five
    blobs plus far outliers."""
    from bigembed.dataset.layouts import save_layout
    from bigembed.dataset.reader import Dataset

    rng = np.random.default_rng(7)
    x = rng.normal(0.0, 1.0, (N, D)).astype(np.float32)
    x += rng.normal(0.0, 2.0, D).astype(np.float32)  # non-zero means
    group = np.sort(rng.choice(N, 400, replace=False))
    x[group, PLANTED[0]] += 2.5
    x[group, PLANTED[1]] -= 2.0
    n_out = 30
    truth = rng.integers(0, 5, N - n_out)
    xy = CENTRES[truth] + rng.normal(0.0, 0.9, (N - n_out, 2))
    ang = np.linspace(0, 2 * np.pi, n_out, endpoint=False)
    xy = np.vstack([xy, np.c_[6 + 200 * np.cos(ang), 12 + 200 * np.sin(ang)]])
    truth = np.r_[truth, -np.ones(n_out, int)]
    label = np.where(truth >= 0, truth, rng.integers(0, 5, N))
    wrong = rng.random(N) < 0.15
    pred = np.where(wrong, (label + rng.integers(1, 5, N)) % 5, label)
    loss = rng.gamma(2.0, 0.3, N).astype(np.float32) + wrong * 1.5
    conf = np.clip(1 - loss / 4, 0.01, 1).astype(np.float32)
    text = [f"{WORDS[t]} {rng.choice(['the', 'a', 'common', 'thing'])} {i}"
            for i, t in enumerate(label)]
    path = tmp_path_factory.mktemp("groups") / "ds"
    _write(path, {"f32": (x, "float32"), "f16": (x, "float16")},
           {"label": label.astype(np.int32), "prediction": pred.astype(np.int32),
            "confidence": conf, "loss": loss, "correct": label == pred, "text": text})
    save_layout(Dataset.open(path), "planted", xy.astype(np.float32),
                {"space": "f32", "method": "planted"})
    return dict(path=path, x=x, group=group, truth=truth, label=label, pred=pred, loss=loss,
                conf=conf)


def _numpy_contrast(x, group):
    x = np.asarray(x, np.float64)
    m = np.zeros(len(x), bool)
    m[group] = True
    a, b = x[m], x[~m]
    pooled = np.sqrt(((len(a) - 1) * a.var(0, ddof=1) + (len(b) - 1) * b.var(0, ddof=1))
                     / (len(x) - 2))
    return a.mean(0), b.mean(0), (a.mean(0) - b.mean(0)) / pooled


# -- contrast ---------------------------------------------------------------------------------

def test_contrast_ranks_planted_dims_and_equals_numpy(planted):
    df = bigembed.contrast(planted["path"], planted["group"], space="f32", top=None)
    assert list(df.columns) == ["dim", "effect", "mean_in", "mean_out"]
    assert len(df) == D
    assert set(df["dim"][:2]) == set(PLANTED)
    assert np.all(np.diff(np.abs(df["effect"].to_numpy())) <= 1e-12)  # sorted by |effect|
    m_in, m_out, eff = _numpy_contrast(planted["x"], planted["group"])
    d = df["dim"].to_numpy()
    np.testing.assert_allclose(df["mean_in"], m_in[d], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(df["mean_out"], m_out[d], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(df["effect"], eff[d], rtol=1e-5, atol=1e-5)
    assert df.attrs["n_in"] == len(planted["group"]) and df.attrs["space"] == "f32"
    # the top rows only, and a boolean mask names the same group
    mask = np.zeros(N, bool)
    mask[planted["group"]] = True
    top = bigembed.contrast(planted["path"], mask, space="f32", top=5)
    assert len(top) == 5 and top["dim"].tolist() == df["dim"][:5].tolist()


def test_contrast_float16_agrees_with_float32_and_numpy(planted):
    f16 = bigembed.contrast(planted["path"], planted["group"], space="f16", top=None)
    f32 = bigembed.contrast(planted["path"], planted["group"], space="f32", top=None)
    assert set(f16["dim"][:2]) == set(PLANTED)
    a = f16.sort_values("dim")
    b = f32.sort_values("dim")
    np.testing.assert_allclose(a["mean_in"], b["mean_in"], atol=5e-3)
    np.testing.assert_allclose(a["effect"], b["effect"], atol=5e-3)
    # exact against numpy on the same float16 values
    m_in, m_out, eff = _numpy_contrast(planted["x"].astype(np.float16), planted["group"])
    np.testing.assert_allclose(a["mean_in"], m_in, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a["effect"], eff, rtol=1e-5, atol=1e-5)
    # a large group is read through its (smaller) complement: same numbers
    rest = np.setdiff1d(np.arange(N), planted["group"])
    flip = bigembed.contrast(planted["path"], rest, space="f16", top=None).sort_values("dim")
    np.testing.assert_allclose(flip["effect"], -a["effect"].to_numpy(), rtol=1e-6, atol=1e-9)


def test_contrast_errors(planted):
    p = planted["path"]
    for ids, frag in (([], "empty"), ([0, N], f"0..{N - 1}"), ([-1, 3], f"0..{N - 1}"),
                      (np.ones(N + 1, bool), "one entry per row"),
                      (np.arange(N), "nothing to contrast"), ([[1, 2]], "one-dimensional"),
                      ([0.5], "integer row ids")):
        with pytest.raises(InputError, match=frag):
            bigembed.contrast(p, ids, space="f32")
    with pytest.raises(InputError, match="rows, the dataset has"):
        bigembed.contrast(p, [1, 2], space=np.zeros((N - 1, 4), np.float32))
    with pytest.raises(BigembedError, match="f64"):
        bigembed.contrast(p, [1, 2], space="f64")
    with pytest.raises(InputError, match="top"):
        bigembed.contrast(p, [1, 2], space="f32", top=0)


# -- group statistics -------------------------------------------------------------------------

def test_group_stats_confusion_histograms_worst(planted):
    from sklearn.metrics import confusion_matrix

    g = planted["group"]
    st = bigembed.group_stats(planted["path"], g, worst=10)
    labels = [int(c) for c in st.classes]
    np.testing.assert_array_equal(
        st.confusion, confusion_matrix(planted["label"][g], planted["pred"][g], labels=labels))
    np.testing.assert_array_equal(
        st.confusion_all, confusion_matrix(planted["label"], planted["pred"], labels=labels))
    assert st.count == len(g) and st.total == N
    assert st.error_rate == pytest.approx(np.mean(planted["label"][g] != planted["pred"][g]))
    for col in ("confidence", "loss"):
        h = st.histograms[col]
        v = planted["conf" if col == "confidence" else "loss"]
        assert h.group.sum() == len(g) and h.rest.sum() == N - len(g)
        # the same bins as numpy's histogram (past the last edge counted in the last bin)
        ref, _ = np.histogram(np.clip(v[g], h.edges[0], h.edges[-1]), bins=h.edges)
        assert np.abs(ref - h.group).sum() <= 2  # bin-edge rounding at most
    worst = g[np.argsort(-planted["loss"][g], kind="stable")[:10]]
    assert st.worst_by == "loss"
    np.testing.assert_array_equal(np.sort(planted["loss"][st.worst])[::-1],
                                  planted["loss"][worst])
    assert np.all(np.diff(planted["loss"][st.worst]) <= 0)
    j = st.to_json()
    assert json.loads(json.dumps(j))["confusion"] == st.confusion.tolist()
    with pytest.raises(InputError, match="empty"):
        bigembed.group_stats(planted["path"], np.zeros(N, bool))


def test_group_stats_text_labels(tmp_path):
    """String labels and a prediction no label has: the class order of scikit-learn."""
    from sklearn.metrics import confusion_matrix

    lab = np.array(["cat", "dog", "cat", "emu", "dog", "cat"] * 5, object)
    pred = np.array(["cat", "cat", "fox", "emu", "dog", "dog"] * 5, object)
    path = _write(tmp_path / "t", {"v": (np.zeros((30, 2), np.float32), "float32")},
                  {"label": lab.tolist(), "prediction": pred.tolist()})
    st = bigembed.group_stats(path, np.arange(0, 30, 2))
    assert list(st.classes) == ["cat", "dog", "emu", "fox"]
    np.testing.assert_array_equal(st.confusion, confusion_matrix(
        lab[::2], pred[::2], labels=list(st.classes)))
    assert st.histograms == {} and st.worst_by is None


# -- clusters ---------------------------------------------------------------------------------

def test_cluster_recovers_planted_blobs_names_and_stores(planted):
    from sklearn.metrics import adjusted_rand_score

    from bigembed.analysis import load_clusters

    r = bigembed.cluster(planted["path"], layout="planted", min_size=50)
    truth = planted["truth"]
    core = truth >= 0
    assert adjusted_rand_score(truth[core], r.labels[core]) >= 0.9
    assert np.all(r.labels[~core] == -1)  # the far outliers are noise
    assert r.labels.dtype == np.int32 and r.labels.shape == (N,)
    t = r.table
    assert list(t.columns) == ["cluster", "size", "name", "label_mix", "error_rate",
                               "mean_loss", "mean_confidence", "x", "y"]
    assert len(t) == 5 and t["size"].sum() == (r.labels >= 0).sum()
    # a text column names clusters by their most distinctive terms (class-based TF-IDF)
    for row in t.itertuples():
        members = r.labels == row.cluster
        words = WORDS[np.bincount(planted["label"][members]).argmax()].split()
        assert set(row.name.split(", ")) <= set(words), row.name
        err = np.mean(planted["label"][members] != planted["pred"][members])
        assert row.error_rate == pytest.approx(err)
        assert row.mean_loss == pytest.approx(planted["loss"][members].mean(), rel=1e-5)
    # stored: read back the same, and listed for the layout
    again = bigembed.cluster(planted["path"], layout="planted", min_size=50)
    assert again.cached and np.array_equal(again.labels, r.labels)
    assert again.table["name"].tolist() == t["name"].tolist()
    got = load_clusters(planted["path"], layout="planted")
    assert got.artifact == r.artifact and np.array_equal(got.labels, r.labels)
    from bigembed.dataset.reader import Dataset

    assert Dataset.open(planted["path"]).verify() == []


def test_cluster_tree_labels_match_sklearn_estimator(planted):
    """The internal fast path of scikit-learn's cluster selection gives the labels of its
    public estimator on the same spanning tree; on the planted layout both agree with
    scikit-learn's HDBSCAN on the coordinates."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree
    from sklearn.cluster import HDBSCAN
    from sklearn.metrics import adjusted_rand_score

    from bigembed.analysis.clusters import _labels_from_tree, _layout_knn
    from bigembed.dataset.layouts import load_layout

    # two touching blobs (one connected kNN graph); plain distances as weights: no ties
    # (mutual-reachability weights tie often, and the paths may order equal weights apart)
    rng = np.random.default_rng(5)
    pts = np.r_[rng.normal(0, 1, (1000, 2)), rng.normal((4, 0), 1, (1000, 2))]
    d, i = _layout_knn(pts, 15)
    a = np.repeat(np.arange(2000), 15)
    T = minimum_spanning_tree(csr_matrix((d.ravel(), (a, i.ravel())),
                                         shape=(2000, 2000))).tocoo()
    assert T.nnz == 1999  # one tree
    fast = _labels_from_tree(T.row, T.col, T.data, 2000, 50)
    public = _labels_from_tree(T.row, T.col, T.data, 2000, 50, public=True)
    assert fast.max() >= 1  # two clusters at least
    np.testing.assert_array_equal(fast < 0, public < 0)
    assert adjusted_rand_score(fast, public) == 1.0  # the same partition (ids may differ)
    xy = load_layout(bigembed.open_dataset(planted["path"]), name="planted").xy
    ours = bigembed.cluster(planted["path"], layout="planted", min_size=50).labels
    ref = HDBSCAN(min_cluster_size=50, min_samples=10, copy=True).fit(xy).labels_
    assert adjusted_rand_score(ref, ours) >= 0.95


def test_cluster_names_from_labels_and_fallback(tmp_path):
    """Without a text column: the dominant label and its share; without labels or text: size
    and place."""
    from bigembed.dataset.layouts import save_layout
    from bigembed.dataset.reader import Dataset

    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, 900)
    xy = CENTRES[:3][truth] + rng.normal(0, 0.7, (900, 2))
    v = rng.normal(0, 1, (900, 4)).astype(np.float32)
    with_labels = _write(tmp_path / "a", {"v": (v, "float32")}, {"label": truth * 10})
    bare = _write(tmp_path / "b", {"v": (v, "float32")}, None)
    for p in (with_labels, bare):
        save_layout(Dataset.open(p), "map", xy.astype(np.float32), {"space": "v",
                                                                    "method": "x"})
    named = bigembed.cluster(with_labels, min_size=40).table
    assert sorted(named["name"]) == ["0 (100%)", "10 (100%)", "20 (100%)"]
    plain = bigembed.cluster(bare, min_size=40)
    assert len(plain.table) == 3
    assert all("points" in n for n in plain.table["name"]), plain.table["name"].tolist()
    assert plain.table["error_rate"].isna().all()
    assert "bottom left" in " ".join(plain.table["name"])  # the blob at (0, 0)


def test_cluster_space_knn_graph(tmp_path):
    """--space clusters the space's kNN graph: the synthetic mixture's clusters come back,
    named by their labels; the kNN graph is stored and the labels are a column."""
    from sklearn.metrics import adjusted_rand_score

    from bigembed.ingest.synth import synth

    synth(tmp_path / "s", n=2000, dim=16, clusters=5, error_rate=0.1, seed=3)
    r = bigembed.cluster(tmp_path / "s", space="default", min_size=100)
    assert r.layout is None and r.space == "default"
    assert r.table["size"].sum() + r.noise == 2000
    label = bigembed.open_dataset(tmp_path / "s").meta["label"].to_numpy()
    core = r.labels >= 0
    assert core.mean() > 0.8
    assert adjusted_rand_score(label[core], r.labels[core]) >= 0.9
    assert all(n.endswith("(100%)") or "%" in n for n in r.table["name"])
    assert r.table["x"].isna().all()  # no layout of the space: no centre on a map


def test_cluster_errors(planted, tmp_path, cli):
    p = planted["path"]
    with pytest.raises(InputError, match="not both"):
        bigembed.cluster(p, layout="planted", space="f32")
    with pytest.raises(InputError, match="layout must be one of"):
        bigembed.cluster(p, layout="nope")
    with pytest.raises(InputError, match="min_size"):
        bigembed.cluster(p, min_size=N + 1)
    r = cli("cluster", p, "--layout", "planted", "--min-size", "1")
    assert_clean_error(r, "--min-size must be an integer >= 2")
    assert r.returncode == 2


def test_cli_cluster_json_and_table(planted, cli):
    r = cli("cluster", planted["path"], "--layout", "planted", "--min-size", "50", "--json",
            check=True)
    out = json.loads(r.stdout)
    assert out["n_clusters"] == 5 and out["layout"] == "planted" and out["cached"]
    assert {c["name"] for c in out["clusters"]}
    r = cli("cluster", planted["path"], "--layout", "planted", "--min-size", "50", check=True)
    lines = r.stdout.splitlines()
    assert lines[0].startswith("5 clusters of layout planted")
    errs = [float(line.split("%")[0].split()[-1]) for line in lines[3:]]
    assert errs == sorted(errs, reverse=True)  # highest error rate first
