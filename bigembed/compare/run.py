"""Compare spaces of one dataset on their vectors: two spaces (:func:`compare`) or an ordered list
(:func:`trajectory`: the layers of a network, the checkpoints of a run).

Every space of a dataset shares the row ids, so a point's neighbourhood can be followed from
space to space. Neighbours come from each space's kNN graph (:func:`bigembed.search.knn_graph`:
stored and reused, exact for small N, IVF tuned to a target recall above), and the error this
adds to the overlap is measured against exact search on a seeded sample and reported.
Results are content-keyed ``comparisons`` artifacts (per-point columns + a JSON record), so
repeating a comparison reads it back.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import xxhash

from ..dataset.reader import open_cached
from ..dataset.tables import read_table_artifact, write_table_artifact
from ..errors import InputError, check_choice, check_positive_int
from ..search.exact import exact_neighbors, sample_ids
from ..search.graph import knn_graph
from .overlap import (
    gained_lost,
    neighbour_agreement,
    neighbour_majority,
    neighbour_overlap,
)

log = logging.getLogger(__name__)

COMPARE_FORMAT = 1
METRICS = ("l2", "cosine")
#: rows on which the graph-based overlap is checked against exact search
ERROR_SAMPLE = 500
#: recall@k the approximate kNN graphs of a comparison are tuned to: at the neighbour stage's
#: default 0.95, the overlap of two 1M x 128 spaces was off by 0.029 (mean absolute); the
#: overlap's error is about the sum of the two graphs' misses, so 0.99 keeps it under 0.02
GRAPH_RECALL = 0.99
#: the mean absolute error of the overlap the comparison is meant to stay under
MAX_ERROR = 0.02
#: agreement codes: does the majority label of a point's neighbours match its prediction?
AGREEMENT = ("neither", "only_a", "only_b", "both")


# -- metadata per space -----------------------------------------------------------------------

def _column_for(meta, space: str, base: str) -> str | None:
    """``base@tag`` for a checkpoint space ``name@tag`` when the metadata has it, else ``base``
    when it exists, else None."""
    if "@" in space:
        col = f"{base}@{space.split('@', 1)[1]}"
        if col in meta:
            return col
    return base if base in meta else None


def _codes(meta, columns) -> tuple[dict, int]:
    """One integer code table over the values of ``columns`` (label and predictions share it):
    ``{column: int64 codes (N,), -1 where missing}``, number of codes."""
    import pandas as pd

    cols = [c for c in dict.fromkeys(columns) if c is not None]
    if not cols:
        return {}, 0
    stacked = pd.concat([meta[c] for c in cols], ignore_index=True)
    codes, uniques = pd.factorize(stacked, use_na_sentinel=True)
    n = len(meta)
    return {c: codes[i * n:(i + 1) * n].astype(np.int64) for i, c in enumerate(cols)}, len(uniques)


def _correct(meta, space: str) -> np.ndarray | None:
    col = _column_for(meta, space, "correct")
    if col is None:
        return None
    return meta[col].to_numpy().astype(bool)


def _group_means(values, v: np.ndarray, limit: int = 200) -> dict:
    """``{str(value): {"n", "mean"}}`` of ``v`` (N,) per value of ``values`` (N,) (the
    ``limit`` most common values; NaN in ``v`` ignored), in one pass."""
    import pandas as pd

    codes, uniques = pd.factorize(pd.Series(values), use_na_sentinel=True)
    ok = (codes >= 0) & np.isfinite(v)
    n = np.bincount(codes[ok], minlength=len(uniques))
    tot = np.bincount(codes[ok], weights=v[ok], minlength=len(uniques))
    keep = sorted(np.argsort(-n, kind="stable")[:limit], key=lambda i: str(uniques[i]))
    return {str(uniques[i]): {"n": int(n[i]),
                              "mean": round(float(tot[i] / n[i]), 4) if n[i] else None}
            for i in keep}


def _stats(v: np.ndarray) -> dict:
    v = v[np.isfinite(v)]
    if not len(v):
        return {"n": 0, "mean": None}
    return {"n": int(len(v)), "mean": round(float(v.mean()), 4)}


# -- two spaces -------------------------------------------------------------------------------

@dataclass
class CompareResult:
    """Space ``a`` against space ``b`` over the same N instances.

    ``overlap``: float32 (N,), the share of a point's k neighbours in A also among its k in B;
    ``agreement``: int8 (N,) codes into :data:`AGREEMENT` (-1 where the point has no label or
    prediction), or None; ``summary``: distributions by label, correctness, prediction flips
    and agreement; ``error_estimate``: mean absolute difference of the graph-based overlap from
    exact search on a sample.
    """

    a: str
    b: str
    k: int
    n: int
    overlap: np.ndarray
    mean_overlap: float
    error_estimate: dict
    summary: dict
    artifact: str
    cached: bool
    seconds: float
    agreement: np.ndarray | None = None
    graphs: tuple = ()
    _ia: np.ndarray | None = field(default=None, repr=False)
    _ib: np.ndarray | None = field(default=None, repr=False)
    _ds: object = field(default=None, repr=False)

    def _check_id(self, id) -> int:
        if isinstance(id, bool) or not isinstance(id, (int, np.integer)) or not 0 <= id < self.n:
            raise InputError(f"id must be an integer in 0..{self.n - 1}, got {id!r}")
        return int(id)

    def gained(self, id: int) -> list[int]:
        """The neighbours B adds for point ``id`` (in B's order)."""
        i = self._check_id(id)
        return gained_lost(self._ia[i], self._ib[i])[0]

    def lost(self, id: int) -> list[int]:
        """The neighbours A had that B loses for point ``id`` (in A's order)."""
        i = self._check_id(id)
        return gained_lost(self._ia[i], self._ib[i])[1]

    def neighbours(self, id: int) -> tuple[list[int], list[int]]:
        """Point ``id``'s k neighbours in A and in B (nearest first), as the overlap saw them."""
        i = self._check_id(id)
        return ([int(j) for j in self._ia[i] if j >= 0], [int(j) for j in self._ib[i] if j >= 0])

    def point(self, id: int) -> dict:
        """``{"id", "overlap", "gained", "lost", ...meta}`` for one point (``/api/compare``)."""
        from ..search.lookup import meta_rows

        i = self._check_id(id)
        g, lo = gained_lost(self._ia[i], self._ib[i])
        out = {"a": self.a, "b": self.b, "k": self.k, "id": i,
               "overlap": round(float(self.overlap[i]), 4), "gained": g, "lost": lo}
        if self._ds is not None:
            out["meta"] = meta_rows(self._ds, [i])[0]
        return out

    def movers(self, top: int = 20) -> list[dict]:
        """The ``top`` points with the least overlap (ties: lower id first), with metadata."""
        from ..search.lookup import meta_rows

        top = check_positive_int("top", top)
        ids = np.lexsort((np.arange(self.n), self.overlap))[:top]
        rows = meta_rows(self._ds, ids) if self._ds is not None else [{} for _ in ids]
        out = []
        for i, m in zip(ids, rows):
            item = {"id": int(i), "overlap": round(float(self.overlap[i]), 4)}
            item.update({k: v for k, v in m.items() if k != "id"})
            out.append(item)
        return out

    def to_json(self, top: int = 20) -> dict:
        return {"a": self.a, "b": self.b, "k": self.k, "n": self.n,
                "mean_overlap": self.mean_overlap, "error_estimate": self.error_estimate,
                "artifact": self.artifact, "summary": self.summary,
                "movers": self.movers(top)}


def _check_k(k, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n - 1:
        raise InputError(f"k must be an integer in 1..{n - 1} (N - 1), got {k!r}")
    return int(k)


def _spaces(ds, names) -> list:
    out = []
    for name in names:
        if name not in ds.spaces:
            raise InputError(f"dataset {ds.path} has no space {name!r}; it has "
                             f"{sorted(ds.spaces)}")
        out.append(ds.space(name))
    return out


def _key(kind: str, parts: dict) -> str:
    h = xxhash.xxh3_64(json.dumps(dict(parts, format=COMPARE_FORMAT), sort_keys=True,
                                  default=str).encode()).hexdigest()[:12]
    return f"{kind}.{h}"


def _meta_stamp(ds) -> str | None:
    rec = ds.manifest.get("meta") or {}
    return rec.get("xxh3_64")


def _read_artifact(ds, name: str, rec: dict) -> dict:
    table = read_table_artifact(ds, "comparison", name, rec)
    return {c: table.column(c).to_numpy() for c in table.column_names}


def _write_artifact(ds, name: str, columns: dict, record: dict) -> None:
    write_table_artifact(ds, "comparisons", name, pa.table(columns),
                         dict(record, rows=ds.rows, columns=list(columns)))


def _exact_rows(g, k: int):
    """``(rows, exact neighbours (s, k))`` known for graph ``g`` without a search: every row
    of an exact graph (None, meaning all), or the sample an approximate graph was checked on
    when it was built; False when it has neither (a graph stored by an older version)."""
    if g.record.get("method") == "exact":
        return None
    es = g.record.get("exact_sample")
    if not es:
        return False
    return np.asarray(es["rows"], np.int64), np.asarray(es["indices"], np.int64)[:, :k]


def _error_estimate(spa, spb, ga, gb, k: int, metric: str, sample, seed: int) -> dict:
    """Graph-based overlap against exact search on a sample of rows.

    Exact graphs need no check (their overlap is the exact one). For approximate graphs the
    exact neighbours of the rows each graph's recall was measured on at build time are reused,
    so the check costs no search; ``sample`` (an int) asks for a fresh exact search on that
    many seeded rows instead (about a second per 100 rows at 1M x 128 on 2 cores)."""
    ia, ib = ga.indices, gb.indices
    ka, kb = _exact_rows(ga, k), _exact_rows(gb, k)
    if sample is None and ka is None and kb is None:
        return {"mean_abs": 0.0, "max_abs": 0.0, "sample": 0,
                "how": "both graphs are exact: nothing to estimate"}
    stored = [e for e in (ka, kb) if e not in (None, False)]
    if sample is None and False not in (ka, kb) and stored and all(
            np.array_equal(stored[0][0], e[0]) for e in stored):
        rows = stored[0][0]
        ea = ia[rows] if ka is None else ka[1]
        eb = ib[rows] if kb is None else kb[1]
        how = "exact neighbours stored with the graphs"
    else:
        rows = sample_ids(spa.rows, ERROR_SAMPLE if sample is None else sample, seed)
        ea = ia[rows] if ka is None else exact_neighbors(spa.vectors, rows, k, metric)
        eb = ib[rows] if kb is None else exact_neighbors(spb.vectors, rows, k, metric)
        how = "exact search on a seeded sample"
    exact = neighbour_overlap(ea, eb)
    approx = neighbour_overlap(ia[rows], ib[rows])
    return {"mean_abs": round(float(np.abs(exact - approx).mean()), 4),
            "max_abs": round(float(np.abs(exact - approx).max()), 4),
            "sample": int(len(rows)), "exact_mean_overlap": round(float(exact.mean()), 4),
            "how": how}


def _summary(meta, a: str, b: str, overlap: np.ndarray, agreement) -> dict:
    q = np.quantile(overlap, [0.1, 0.25, 0.5, 0.75, 0.9]) if len(overlap) else []
    hist, edges = np.histogram(overlap, bins=10, range=(0.0, 1.0))
    out: dict = {"overlap": {"mean": round(float(overlap.mean()), 4),
                             "quantiles": {p: round(float(v), 4)
                                           for p, v in zip(("p10", "p25", "p50", "p75", "p90"), q)},
                             "histogram": {"edges": [round(float(e), 2) for e in edges],
                                           "counts": hist.tolist()}}}
    if meta is None:
        return out
    if "label" in meta:
        out["by_label"] = _group_means(meta["label"], overlap)
    ca, cb = _correct(meta, a), _correct(meta, b)
    for name, c in (("by_correct_in_a", ca), ("by_correct_in_b", cb)):
        if c is not None:
            out[name] = {"right": _stats(overlap[c]), "wrong": _stats(overlap[~c])}
    if ca is not None and cb is not None and _column_for(meta, a, "correct") != \
            _column_for(meta, b, "correct"):
        flips = {}
        for fa, fb, nm in ((True, True, "right->right"), (True, False, "right->wrong"),
                           (False, True, "wrong->right"), (False, False, "wrong->wrong")):
            flips[nm] = _stats(overlap[(ca == fa) & (cb == fb)])
        out["prediction_flips"] = flips
    if agreement is not None:
        out["agreement"] = {nm: _stats(overlap[agreement == code])
                            for code, nm in enumerate(AGREEMENT)}
    return out


def compare(ds, *, a: str, b: str, k: int = 15, metric: str = "l2", force: bool = False,
            sample: int | None = None, seed: int = 0, graph_method: str = "auto",
            backend: str = "auto", progress: bool | None = None) -> CompareResult:
    """Compare space ``a`` with space ``b`` point by point; store and return the result.

    Per point: ``overlap`` of its k nearest neighbours in A and in B, and (with labels or
    predictions in the metadata) whether the majority label of its neighbours matches its
    prediction in A, in B, both or neither. Predictions of a checkpoint space ``fc1@tag`` are
    read from ``prediction@tag`` when the metadata has it, else from ``prediction``.
    ``graph_method``: how the kNN graphs are made when none is stored (see
    :func:`bigembed.search.knn_graph`: ``auto``, ``exact`` or ``ivf``).
    """
    t0 = time.perf_counter()
    ds = open_cached(ds)
    check_choice("metric", metric, METRICS)
    if sample is not None:
        sample = check_positive_int("sample", sample)
    if a == b:
        log.info("compare: %r with itself: overlap is 1 everywhere", a)
    spa, spb = _spaces(ds, [a, b])
    n = ds.rows
    k = _check_k(k, n)
    ga, gb = (knn_graph(ds, space=s, k=k, metric=metric, method=graph_method, backend=backend,
                        target_recall=GRAPH_RECALL,
                        progress=progress) for s in (a, b))
    ds = open_cached(ds.path)
    meta = ds.meta
    name = _key(f"{a}~{b}.k{k}", {"a": spa.fingerprint, "b": spb.fingerprint, "k": k,
                                  "metric": metric, "graphs": [ga.name, gb.name],
                                  "meta": _meta_stamp(ds), "sample": sample, "seed": seed})
    rec = ds.artifacts("comparisons").get(name)
    common = dict(a=a, b=b, k=k, n=n, graphs=(ga.name, gb.name), _ia=ga.indices,
                  _ib=gb.indices, _ds=ds)
    if rec is not None and not force and (ds.path / rec["file"]).is_file():
        cols = _read_artifact(ds, name, rec)
        agr = cols.get("agreement")
        return CompareResult(overlap=cols["overlap"], mean_overlap=rec["mean_overlap"],
                             error_estimate=rec["error_estimate"], summary=rec["summary"],
                             artifact=name, cached=True, seconds=time.perf_counter() - t0,
                             agreement=None if agr is None else agr, **common)

    ds.prepare_write("comparisons")  # a read-only dataset fails now, not after the work
    overlap = neighbour_overlap(ga.indices, gb.indices)
    err = _error_estimate(spa, spb, ga, gb, k, metric, sample, seed)
    pa_col, pb_col = _column_for(meta, a, "prediction"), _column_for(meta, b, "prediction")
    target_a = pa_col or ("label" if "label" in meta else None)
    target_b = pb_col or ("label" if "label" in meta else None)
    agreement = None
    columns = {"overlap": overlap}
    if "label" in meta and target_a and target_b:
        codes, m = _codes(meta, ["label", target_a, target_b])
        lab = codes["label"]
        ok_a = neighbour_majority(ga.indices, lab, m) == codes[target_a]
        ok_b = neighbour_majority(gb.indices, lab, m) == codes[target_b]
        agreement = (ok_a.astype(np.int8) + 2 * ok_b.astype(np.int8)).astype(np.int8)
        agreement[(codes[target_a] < 0) | (codes[target_b] < 0)] = -1
        columns["agreement"] = agreement
    summary = _summary(meta, a, b, overlap, agreement)
    mean = round(float(overlap.mean()), 4)
    record = {"a": a, "b": b, "k": k, "metric": metric, "graphs": [ga.name, gb.name],
              "mean_overlap": mean, "error_estimate": err, "summary": summary,
              "seconds": round(time.perf_counter() - t0, 3)}
    _write_artifact(ds, name, columns, record)
    if err["mean_abs"] > MAX_ERROR:
        log.warning("compare %s vs %s: the graphs' overlap differs from exact search's by %.3f "
                    "on average (over %.2f); rebuild the graphs with a higher recall "
                    "(bigembed index --graph %d --target-recall 0.995)", a, b, err["mean_abs"],
                    MAX_ERROR, k)
    log.info("compare %s vs %s (k=%d): mean overlap %.3f (error vs exact %.4f on %d rows) "
             "-> %s", a, b, k, mean, err["mean_abs"], err["sample"], name)
    return CompareResult(overlap=overlap, mean_overlap=mean, error_estimate=err,
                         summary=summary, artifact=name, cached=False,
                         seconds=time.perf_counter() - t0, agreement=agreement, **common)


# -- many spaces in order ---------------------------------------------------------------------

@dataclass
class TrajectoryResult:
    """A point's neighbourhood over an ordered list of spaces.

    ``agreement``: float32 (N, S), the share of its k neighbours in each space that carry its
    label; ``depth``: int32 (N,), the first space index from which the majority label of its
    neighbours equals its final prediction (or label) and stays so, -1 if never;
    ``curves``: per label, the mean agreement in each space.
    """

    spaces: list
    k: int
    agreement: np.ndarray
    depth: np.ndarray
    curves: dict
    target: str
    artifact: str
    cached: bool
    seconds: float

    def to_json(self) -> dict:
        s = len(self.spaces)
        return {"spaces": self.spaces, "k": self.k, "n": int(len(self.depth)),
                "target": self.target, "artifact": self.artifact,
                "mean_agreement": [round(float(v), 4) for v in np.nanmean(self.agreement, 0)],
                "depth_counts": {str(d): int((self.depth == d).sum()) for d in range(-1, s)},
                "curves": self.curves}


def depth_of(ok: np.ndarray) -> np.ndarray:
    """From ``ok`` (N, S) bool, the first column from which every later column is True:
    int32 (N,), -1 where the last column is False."""
    n, s = ok.shape
    trailing = np.cumprod(ok[:, ::-1], axis=1).sum(1)
    return np.where(trailing > 0, s - trailing, -1).astype(np.int32)


def trajectory(ds, *, spaces, k: int = 15, metric: str = "l2", force: bool = False,
               backend: str = "auto", progress: bool | None = None) -> TrajectoryResult:
    """Follow every point through ``spaces`` (in order); store and return the result."""
    t0 = time.perf_counter()
    ds = open_cached(ds)
    check_choice("metric", metric, METRICS)
    spaces = list(spaces)
    if len(spaces) < 2:
        raise InputError(f"spaces must name at least two spaces in order, got {spaces!r}")
    if len(set(spaces)) != len(spaces):
        raise InputError(f"spaces names a space more than once: {spaces!r}")
    sps = _spaces(ds, spaces)
    k = _check_k(k, ds.rows)
    meta = ds.meta
    if "label" not in meta:
        raise InputError(f"a trajectory needs a label column in {ds.path}/meta.parquet; it has "
                         f"{list(meta.columns)}")
    target = _column_for(meta, spaces[-1], "prediction") or "label"
    graphs = [knn_graph(ds, space=s, k=k, metric=metric, backend=backend,
                        target_recall=GRAPH_RECALL, progress=progress)
              for s in spaces]
    ds = open_cached(ds.path)
    name = _key(f"trajectory.k{k}", {"spaces": [sp.fingerprint for sp in sps],
                                     "names": spaces, "k": k, "metric": metric,
                                     "graphs": [g.name for g in graphs],
                                     "meta": _meta_stamp(ds), "target": target})
    rec = ds.artifacts("comparisons").get(name)
    if rec is not None and not force and (ds.path / rec["file"]).is_file():
        cols = _read_artifact(ds, name, rec)
        agr = np.stack([cols[f"agreement@{s}"] for s in spaces], 1)
        return TrajectoryResult(spaces, k, agr, cols["depth"], rec["curves"], target, name,
                                True, time.perf_counter() - t0)
    ds.prepare_write("comparisons")
    codes, m = _codes(meta, ["label", target])
    lab = codes["label"]
    agr = np.stack([neighbour_agreement(g.indices, lab) for g in graphs], 1)
    ok = np.stack([neighbour_majority(g.indices, lab, m) == codes[target] for g in graphs], 1)
    ok &= (codes[target] >= 0)[:, None]
    depth = depth_of(ok)
    per_space = [_group_means(meta["label"], agr[:, j]) for j in range(len(spaces))]
    curves = {lab: [ps[lab]["mean"] for ps in per_space] for lab in per_space[0]}
    columns = {f"agreement@{s}": agr[:, j] for j, s in enumerate(spaces)}
    columns["depth"] = depth
    record = {"kind": "trajectory", "spaces": spaces, "k": k, "metric": metric,
              "graphs": [g.name for g in graphs], "target": target, "curves": curves,
              "seconds": round(time.perf_counter() - t0, 3)}
    _write_artifact(ds, name, columns, record)
    log.info("trajectory over %s (k=%d): depth counts %s -> %s", spaces, k,
             np.bincount(depth + 1, minlength=len(spaces) + 1).tolist(), name)
    return TrajectoryResult(spaces, k, agr, depth, curves, target, name, False,
                            time.perf_counter() - t0)
