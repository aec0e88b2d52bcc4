"""Density clusters of a map (or of a space's kNN graph), with names: :func:`cluster`.

HDBSCAN (scikit-learn's estimator, ``metric="precomputed"``) runs on the sparse mutual-
reachability graph of the points' k nearest neighbours rather than on all pairs: for a 2-D
layout the neighbours come from a k-d tree, for a space from its stored kNN graph
(:func:`bigembed.search.knn_graph`). scikit-learn's own HDBSCAN on coordinates builds its
minimum spanning tree with Prim's algorithm over all pairs, O(N^2), which takes hours at a
million points; on the kNN graph the whole run is tens of seconds, and the benchmark
(``benchmarks/bench_groups.py``) measures both on the same layout. Components of the kNN
graph that do not touch are joined by their representatives' true distances, so HDBSCAN sees
one connected graph.

The labels (int32, -1 for noise) are stored as the ``cluster`` column of a content-keyed
``clusters`` artifact; its manifest record keeps the cluster table (id, size, name, label mix,
error rate, mean loss, mean confidence, centre on the map), so a server reads names back
without recomputing.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import xxhash

from ..dataset.reader import open_cached
from ..dataset.tables import read_table_artifact, write_table_artifact
from ..errors import InputError, check_positive_int
from .names import (
    TEXTS_PER_CLUSTER,
    ctfidf_terms,
    human_count,
    place_word,
    text_column,
    unique_names,
)

log = logging.getLogger(__name__)

CLUSTER_FORMAT = 1
#: neighbours per point in the graph HDBSCAN runs on (at least ``min_samples``)
GRAPH_K = 15
MIN_SAMPLES = 10
#: components of the kNN graph joined through all-pairs distances up to this many
DENSE_JOIN = 2000
TABLE_COLUMNS = ["cluster", "size", "name", "label_mix", "error_rate", "mean_loss",
                 "mean_confidence", "x", "y"]


def default_min_size(n: int) -> int:
    """Smallest cluster by default: 0.5% of the points, at least 5, at most 5,000."""
    return int(min(max(5, n // 200), 5000))


@dataclass
class ClusterResult:
    """Clusters of a dataset's points.

    ``labels``: int32 array of shape (N,), -1 for noise; ``table``: pandas DataFrame, one row
    per cluster (``cluster``, ``size``, ``name``, ``label_mix``, ``error_rate``, ``mean_loss``,
    ``mean_confidence``, ``x``, ``y``: its centre on ``layout``, NaN without a layout);
    ``layout``/``space``: what was clustered (``space`` alone: its kNN graph).
    """

    labels: np.ndarray
    table: object
    artifact: str
    layout: str | None
    space: str | None
    min_size: int
    min_samples: int
    noise: int
    cached: bool
    seconds: float

    @property
    def n_clusters(self) -> int:
        return int(len(self.table))

    def to_json(self) -> dict:
        return {"artifact": self.artifact, "layout": self.layout, "space": self.space,
                "min_size": self.min_size, "min_samples": self.min_samples,
                "n_clusters": self.n_clusters, "noise": self.noise, "cached": self.cached,
                "seconds": round(self.seconds, 3), "clusters": _records(self.table)}


def _records(table) -> list[dict]:
    out = []
    for r in table.to_dict("records"):
        out.append({k: (None if isinstance(v, float) and not np.isfinite(v) else
                        (int(v) if isinstance(v, (np.integer,)) else
                         (float(v) if isinstance(v, np.floating) else v)))
                    for k, v in r.items()})
    return out


def _table_from_records(records: list[dict]):
    import pandas as pd

    df = pd.DataFrame.from_records(records, columns=TABLE_COLUMNS)
    for c in ("error_rate", "mean_loss", "mean_confidence", "x", "y"):
        df[c] = df[c].astype(np.float64)
    for c in ("cluster", "size"):
        df[c] = df[c].astype(np.int64)
    return df


# -- the graph --------------------------------------------------------------------------------

def _layout_knn(xy: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy.spatial import cKDTree

    from ..search.exact import drop_self

    n = len(xy)
    kk = min(k, n - 1)
    d, i = cKDTree(xy).query(xy, k=kk + 1, workers=-1)
    d, i = drop_self(d, i, np.arange(n), kk)
    return d.astype(np.float64), i.astype(np.int64)


def _join_components(M, points_of, core):
    """Edges (a, b, mutual-reachability distance) that join the connected components of the
    mutual kNN graph ``M`` through one representative each: the minimum spanning tree of the
    representatives' true distances (over all pairs up to :data:`DENSE_JOIN` components, else
    over their own kNN graph, whose leftover components are chained). ``points_of(ids)``
    returns their coordinates or vectors, shape (m, d); ``core``: core distances (N,)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

    ncomp, comp = connected_components(M, directed=False)
    if ncomp == 1:
        return None, 1
    reps = np.unique(comp, return_index=True)[1]  # first member of each component
    P = np.ascontiguousarray(points_of(reps), np.float32)
    if ncomp <= DENSE_JOIN:
        P64 = P.astype(np.float64)
        Dm = np.sqrt(np.maximum(((P64[:, None, :] - P64[None, :, :]) ** 2).sum(-1), 0.0))
        Dm = np.maximum(Dm, 1e-12)
        np.fill_diagonal(Dm, 0.0)
        T = minimum_spanning_tree(Dm).tocoo()
        a, b, w = T.row, T.col, T.data
    else:
        from ..search.exact import drop_self, exact_knn

        kk = min(8, ncomp - 1)
        d2, ii = exact_knn(P, P, kk + 1, "l2")
        d2, ii = drop_self(d2, ii, np.arange(ncomp), kk)
        w = np.maximum(np.sqrt(np.maximum(d2.ravel(), 0.0)), 1e-12)
        R = csr_matrix((w, (np.repeat(np.arange(ncomp), kk), ii.ravel())),
                       shape=(ncomp, ncomp))
        T = minimum_spanning_tree(R.maximum(R.T)).tocoo()
        a, b, w = list(T.row), list(T.col), list(T.data)
        nc2, c2 = connected_components(T, directed=False)
        if nc2 > 1:  # chain what the representatives' kNN graph left apart
            first = np.unique(c2, return_index=True)[1]
            for u, v in zip(first[:-1], first[1:]):
                a.append(u)
                b.append(v)
                w.append(max(float(np.sqrt(((P[u] - P[v]) ** 2).sum())), 1e-12))
        a, b, w = np.asarray(a), np.asarray(b), np.asarray(w, np.float64)
    a, b = reps[a], reps[b]
    return (a, b, np.maximum(np.maximum(core[a], core[b]), w)), ncomp


def _hdbscan_on_graph(dist, ind, points_of, min_size, min_samples):
    """HDBSCAN labels (int32 (N,)) from the kNN graph ``ind``/``dist`` (N, k), nearest first,
    self excluded.

    Core distances are the kNN distances to the (min_samples - 1)-th other point (the
    min_samples-th counting the point itself, as scikit-learn counts); each kNN edge weighs its
    mutual-reachability distance. The minimum spanning tree of that graph, plus edges joining
    the components of the *mutual* kNN graph (a far outlier's one-way edges into two clusters
    must not stand in for the clusters' own, shorter, missing connection), goes to
    scikit-learn's HDBSCAN as a precomputed sparse graph with ``min_samples=1``: on a tree of
    mutual-reachability weights its mutual reachability is the weights themselves, so its
    condensed tree and cluster selection are those of the graph.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree

    n, k = ind.shape
    core = dist[:, min_samples - 2] if min_samples >= 2 else np.zeros(n)
    a = np.repeat(np.arange(n, dtype=np.int64), k)
    b = ind.ravel().astype(np.int64)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = lo * n + hi
    order = np.argsort(key)
    key = key[order]
    first = np.r_[True, key[1:] != key[:-1]]
    # an edge listed from both ends is a mutual-neighbour edge
    mutual = np.r_[~first[1:], False][first]
    e = order[first]
    ea, eb = lo[e], hi[e]
    w = np.maximum(np.maximum(core[ea], core[eb]), dist.ravel()[e])
    del a, b, lo, hi, key, order, first
    Mg = csr_matrix((np.ones(int(mutual.sum())), (ea[mutual], eb[mutual])), shape=(n, n))
    joins, ncomp = _join_components(Mg, points_of, core)
    del Mg
    if joins is not None:
        ja, jb, jw = joins
        ea, eb, w = np.r_[ea, np.minimum(ja, jb)], np.r_[eb, np.maximum(ja, jb)], np.r_[w, jw]
        log.info("cluster: the mutual kNN graph has %d components; joined by their "
                 "representatives", ncomp)
    # explicit zeros (coincident points) would read as missing edges; duplicates of a join
    # and a kNN edge keep the smaller weight
    G = csr_matrix((np.maximum(w, 1e-12), (ea, eb)), shape=(n, n))
    if joins is not None:
        G.sum_duplicates()  # (only joins can repeat a kNN edge: rare, and summed is larger)
    T = minimum_spanning_tree(G).tocoo()
    del G
    return _labels_from_tree(T.row, T.col, T.data, n, min_size)


def _labels_from_tree(a, b, w, n: int, min_size: int, *, public: bool = False) -> np.ndarray:
    """HDBSCAN's labels from a spanning tree (edges a-b of weight w, mutual-reachability
    distances): scikit-learn's single-linkage and cluster-selection code. Its estimator
    (``public=True``, or when its internals moved) gives the same labels with seconds of
    per-row overhead at a million points, so its internal functions are called directly."""
    import warnings

    if not public:
        try:
            from sklearn.cluster._hdbscan._linkage import MST_edge_dtype
            from sklearn.cluster._hdbscan._tree import tree_to_labels
            from sklearn.cluster._hdbscan.hdbscan import _process_mst
        except ImportError:  # pragma: no cover - another scikit-learn layout
            public = True
    if not public:
        mst = np.empty(len(a), dtype=MST_edge_dtype)
        mst["current_node"], mst["next_node"], mst["distance"] = a, b, w
        labels, _ = tree_to_labels(_process_mst(mst), min_size, "eom", False, 0.0, None)
        return np.asarray(labels).astype(np.int32)
    from scipy.sparse import csr_matrix
    from sklearn.cluster import HDBSCAN

    tree = csr_matrix((np.r_[w, w], (np.r_[a, b], np.r_[b, a])), shape=(n, n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        est = HDBSCAN(metric="precomputed", min_cluster_size=min_size, min_samples=1,
                      copy=False).fit(tree)
    return est.labels_.astype(np.int32)


# -- the table --------------------------------------------------------------------------------

def _cluster_table(meta, labels: np.ndarray, xy: np.ndarray | None, bounds):
    import pandas as pd

    ok = labels >= 0
    nc = int(labels.max()) + 1 if ok.any() else 0
    lab = labels[ok]
    size = np.bincount(lab, minlength=nc)

    def mean_of(v):
        v = np.asarray(v, np.float64)[ok]
        fin = np.isfinite(v)
        s = np.bincount(lab[fin], weights=v[fin], minlength=nc)
        c = np.bincount(lab[fin], minlength=nc)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(c > 0, s / np.maximum(c, 1), np.nan)

    nan = np.full(nc, np.nan)
    err = 1.0 - mean_of(meta["correct"].to_numpy()) if "correct" in meta.columns else nan
    loss = mean_of(meta["loss"].to_numpy()) if "loss" in meta.columns and \
        meta["loss"].dtype.kind in "fiu" else nan
    conf = mean_of(meta["confidence"].to_numpy()) if "confidence" in meta.columns and \
        meta["confidence"].dtype.kind in "fiu" else nan
    if xy is not None and nc:
        frame = pd.DataFrame({"c": lab, "x": xy[ok, 0], "y": xy[ok, 1]})
        med = frame.groupby("c").median()
        cx = med["x"].reindex(range(nc)).to_numpy(np.float64)
        cy = med["y"].reindex(range(nc)).to_numpy(np.float64)
    else:
        cx = cy = nan
    places = [place_word(cx[i], cy[i], bounds) if bounds is not None else ""
              for i in range(nc)]
    mix = [""] * nc
    names = [""] * nc
    if "label" in meta.columns and nc:
        codes, uniq = pd.factorize(meta["label"], use_na_sentinel=True)
        codes = codes[ok]
        good = codes >= 0
        ct = pd.crosstab(lab[good], codes[good]) if good.any() else None
        for i in range(nc):
            if ct is None or i not in ct.index:
                continue
            row = ct.loc[i]
            row = row[row > 0].sort_values(ascending=False, kind="stable")
            tot = size[i]
            parts = [(str(uniq[j]), c / tot) for j, c in row.head(3).items()]
            mix[i] = ", ".join(f"{n}: {s:.0%}" for n, s in parts)
            if parts:
                names[i] = f"{parts[0][0]} ({parts[0][1]:.0%})"
    tcol = text_column(meta)
    if tcol is not None and nc:
        rng = np.random.default_rng(0)
        texts = meta[tcol].astype(str).to_numpy()
        per = []
        ids_ok = np.flatnonzero(ok)
        order = np.argsort(lab, kind="stable")
        bounds_ = np.r_[0, np.cumsum(size)]
        for i in range(nc):
            members = ids_ok[order[bounds_[i]:bounds_[i + 1]]]
            if len(members) > TEXTS_PER_CLUSTER:
                members = np.sort(rng.choice(members, TEXTS_PER_CLUSTER, replace=False))
            per.append(texts[members].tolist())
        terms = ctfidf_terms(per)
        names = [", ".join(t) if t else names[i] for i, t in enumerate(terms)]
    names = [nm or f"{human_count(int(size[i]))} points" + (f", {places[i]}" if places[i]
                                                             else "")
             for i, nm in enumerate(names)]
    names = unique_names(names, places)
    return pd.DataFrame({"cluster": np.arange(nc, dtype=np.int64), "size": size.astype(np.int64),
                         "name": names, "label_mix": mix, "error_rate": err,
                         "mean_loss": loss, "mean_confidence": conf, "x": cx, "y": cy},
                        columns=TABLE_COLUMNS)


# -- the stage --------------------------------------------------------------------------------

def _key(source: str, parts: dict) -> str:
    h = xxhash.xxh3_64(json.dumps(dict(parts, format=CLUSTER_FORMAT), sort_keys=True,
                                  default=str).encode()).hexdigest()[:12]
    return f"{source}.hdbscan.{h}"


def _source(ds, layout, space):
    """(layout name or None, space name or None) to cluster."""
    from ..dataset.layouts import find_layouts

    if layout is not None and space is not None:
        raise InputError("give layout or space, not both: a layout clusters the map, a space "
                         "its kNN graph")
    if layout is not None:
        if not isinstance(layout, str) or layout not in ds.manifest.get("layouts", {}):
            raise InputError(f"layout must be one of {sorted(ds.manifest.get('layouts', {}))}, "
                             f"got {layout!r}")
        return layout, ds.manifest["layouts"][layout].get("space")
    if space is not None:
        if not isinstance(space, str):
            raise InputError(f"space must be a space name, got {space!r}")
        ds.space(space)  # the clear error for a missing or incomplete space
        return None, space
    names = find_layouts(ds)
    if names:
        return names[0], ds.manifest["layouts"][names[0]].get("space")
    return None, ds.space(None).name


def cluster(ds, layout: str | None = None, space: str | None = None,
            min_size: int | None = None, *, min_samples: int | None = None,
            force: bool = False, progress: bool | None = None) -> ClusterResult:
    """Density clusters (HDBSCAN) of a layout's points or of a space's kNN graph, named.

    ``layout``: a stored layout's name; ``space``: a space's name (its kNN graph, built and
    stored when missing); neither: the newest layout, else the only space. ``min_size``: the
    smallest cluster (default :func:`default_min_size`); ``min_samples``: HDBSCAN's density
    smoothing (default ``min(10, min_size)``). Stored as a ``clusters`` artifact and reused
    unless ``force``. Returns a :class:`ClusterResult`.
    """
    from ..dataset.layouts import find_layouts, load_layout

    t0 = time.perf_counter()
    ds = open_cached(ds)
    lay_name, sp_name = _source(ds, layout, space)
    n = ds.rows
    if n < 3:
        raise InputError(f"dataset {ds.path} has {n} rows; clustering needs at least 3")
    min_size = default_min_size(n) if min_size is None else check_positive_int(
        "min_size", min_size, minimum=2)
    if min_size > n:
        raise InputError(f"min_size must be at most the number of rows ({n}), got {min_size}")
    min_samples = min(MIN_SAMPLES, min_size) if min_samples is None else check_positive_int(
        "min_samples", min_samples)
    k = min(max(GRAPH_K, min_samples), n - 1)
    min_samples = min(min_samples, k)
    meta_rec = ds.manifest.get("meta") or {}
    if lay_name is not None:
        src = {"layout": ds.manifest["layouts"][lay_name].get("xxh3_64")}
    else:
        src = {"space": ds.space(sp_name).fingerprint}
    name = _key(lay_name or sp_name, dict(src, min_size=min_size, min_samples=min_samples,
                                          k=k, meta=meta_rec.get("xxh3_64")))
    rec = ds.artifacts("clusters").get(name)
    if rec is not None and not force and (ds.path / rec["file"]).is_file():
        return _result(ds, name, rec, cached=True, seconds=time.perf_counter() - t0)

    ds.prepare_write("clusters")  # a read-only dataset fails now, not after the work
    if lay_name is not None:
        lay = load_layout(ds, name=lay_name)
        xy = lay.xy
        log.info("cluster: %d points of layout %s (k=%d, min_size=%d)", n, lay_name, k,
                 min_size)
        dist, ind = _layout_knn(xy, k)
        points_of = lambda ids: xy[ids]  # noqa: E731
    else:
        from ..search.graph import knn_graph

        g = knn_graph(ds, space=sp_name, k=k, progress=progress)
        dist, ind = g.distances.astype(np.float64), g.indices.astype(np.int64)
        vec = ds.space(sp_name).vectors
        points_of = lambda ids: vec[ids]  # noqa: E731
        lays = find_layouts(ds, space=sp_name)
        xy = load_layout(ds, name=lays[0]).xy if lays else None
        lay_for_table = lays[0] if lays else None
    labels = _hdbscan_on_graph(dist, ind, points_of, min_size, min_samples)
    bounds = None
    if xy is not None:
        bounds = ((float(xy[:, 0].min()), float(xy[:, 0].max())),
                  (float(xy[:, 1].min()), float(xy[:, 1].max())))
    table = _cluster_table(ds.meta, labels, xy, bounds)
    noise = int((labels < 0).sum())
    record = {"layout": lay_name, "space": sp_name,
              "table_layout": lay_name if lay_name is not None else lay_for_table,
              "method": "hdbscan-knn", "min_size": min_size, "min_samples": min_samples,
              "k": k, "n_clusters": int(len(table)), "noise": noise,
              "seconds": round(time.perf_counter() - t0, 3), "table": _records(table)}
    write_table_artifact(ds, "clusters", name, pa.table({"cluster": labels}),
                         dict(record, rows=n, columns=["cluster"]))
    log.info("cluster: %d clusters, %d noise points (%.1fs) -> %s", len(table), noise,
             time.perf_counter() - t0, name)
    return ClusterResult(labels, table, name, lay_name, sp_name, min_size, min_samples, noise,
                         False, time.perf_counter() - t0)


def _result(ds, name: str, rec: dict, *, cached: bool, seconds: float) -> ClusterResult:
    table = read_table_artifact(ds, "clusters", name, rec)
    labels = table.column("cluster").to_numpy().astype(np.int32)
    return ClusterResult(labels, _table_from_records(rec.get("table", [])), name,
                         rec.get("layout"), rec.get("space"), int(rec["min_size"]),
                         int(rec["min_samples"]), int(rec.get("noise", 0)), cached, seconds)


def load_clusters(ds, *, layout: str | None = None, space: str | None = None):
    """The newest stored clusters of ``layout`` (its own, else its space's kNN graph's) or of
    ``space``; None when there are none."""
    ds = open_cached(ds)
    space_of = None
    if layout is not None:
        space_of = (ds.manifest.get("layouts", {}).get(layout) or {}).get("space")
    best = []
    for nm, rec in ds.artifacts("clusters").items():
        if layout is not None and rec.get("layout") == layout:
            rank = 2
        elif rec.get("layout") is None and rec.get("space") in (space, space_of) and \
                rec.get("space") is not None:
            rank = 1
        else:
            continue
        best.append((rank, rec.get("created", ""), nm))
    if not best:
        return None
    _, _, nm = max(best)
    return _result(ds, nm, ds.artifacts("clusters")[nm], cached=True, seconds=0.0)
