"""Nearest-neighbour lookup and kNN graphs: bigembed vs plain FAISS / pynndescent, same run.

    python -m benchmarks.bench_neighbors [--n 1000000] [--dim 128] [--graph-n 1000000]
        [--graph-dim 50] [--nnd-n 200000] [--out benchmarks/results/neighbors.json]

Lookup: a synthetic N x d dataset (``bigembed.ingest.synth``); ``build_index`` (auto: IVF tuned to
recall@10 >= 0.95) against exact ``faiss.IndexFlatL2`` on the same vectors. Reported per
single query: the raw index search, and the full ``neighbors()`` call (id -> ids, distances,
metadata, cached index), with recall@10 of ``neighbors()`` measured against the exact answer
of the same queries (self excluded, ties counted).

Graph: the k=15 graph of a synthetic N x 50 dataset with ``knn_graph`` (IVF tuned to recall
0.95), and pynndescent (what umap-learn uses) on the same vectors, both scored against exact
search on the same sampled rows. pynndescent may run on a prefix of the rows (``--nnd-n``)
when the full size does not fit the time; the JSON says exactly what was measured.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bigembed import Dataset, DatasetWriter
from bigembed.bench.harness import measure, results_doc, write_results
from bigembed.ingest.synth import synth
from bigembed.search.exact import drop_self, exact_knn, sample_ids
from bigembed.search.graph import knn_graph
from bigembed.search.index import build_index, clear_cache, load_index, single_thread
from bigembed.search.lookup import neighbors

log = logging.getLogger("bench_neighbors")


def _recall_vs_exact(found_ids: np.ndarray, x: np.ndarray, qids: np.ndarray, k: int) -> float:
    """Recall@k (self excluded, ties counted) of found neighbour ids of rows ``qids``."""
    td, ti = exact_knn(x[qids], x, k + 1, "l2")
    td, _ = drop_self(td, ti, qids, k)
    kth = td[:, -1:].astype(np.float64)
    fd = ((x[qids][:, None, :].astype(np.float64) - x[found_ids].astype(np.float64)) ** 2).sum(-1)
    return float(((fd <= kth * (1 + 1e-5) + 1e-6) & (found_ids >= 0)).mean())


def _cycle(fn, items):
    it = iter(list(items) * 1000)
    return lambda: fn(next(it))


def _pcts(times) -> dict:
    t = np.asarray(times) * 1e3
    return {"p50_ms": float(np.percentile(t, 50)), "p90_ms": float(np.percentile(t, 90)),
            "p99_ms": float(np.percentile(t, 99)), "mean_ms": float(t.mean())}


def bench_lookup(work: Path, n: int, dim: int, clusters: int, queries: int, kind: str) -> dict:
    import faiss

    path = work / "lookup"
    t0 = time.perf_counter()
    synth(path, n=n, dim=dim, clusters=clusters, seed=0, progress=False)
    log.info("lookup: synthesised %d x %d in %.1fs", n, dim, time.perf_counter() - t0)
    ds = Dataset.open(path)
    x = ds.space().vectors
    build = measure(lambda: build_index(ds, kind=kind, target_recall=0.95, force=True),
                    repeat=1, warmup=0)
    r = build_index(ds, kind=kind, target_recall=0.95)
    log.info("lookup: index %s (%s %s) built in %.1fs, tuned recall@10 %.3f",
             r.name, r.kind, r.search, build.median, r.recall_at_10)
    qids = sample_ids(n, queries, seed=99)

    # Cold: the first neighbors() call of a process reads the index from disk.
    clear_cache()
    t0 = time.perf_counter()
    neighbors(ds, id=int(qids[0]), k=10)
    cold_ms = (time.perf_counter() - t0) * 1e3

    loaded = load_index(ds, r.name)
    q1 = [np.ascontiguousarray(x[i:i + 1], np.float32) for i in qids]
    ann_raw = measure(_cycle(lambda q: loaded.search(q, 11), q1), repeat=len(qids), warmup=5)
    api = measure(_cycle(lambda i: neighbors(ds, id=int(i), k=10), qids), repeat=len(qids),
                  warmup=5)
    found = np.array([[it["id"] for it in neighbors(ds, id=int(i), k=10).neighbors]
                      for i in qids])
    api_recall = _recall_vs_exact(found, x, qids, 10)

    # The plain library a user would otherwise call: exact IndexFlatL2 over the same vectors.
    flat = faiss.IndexFlatL2(dim)
    t0 = time.perf_counter()
    flat.add(np.ascontiguousarray(x, np.float32))
    flat_build = time.perf_counter() - t0
    nflat = min(len(qids), 50)  # ~tens of ms each: fewer repeats
    flat_t = measure(_cycle(lambda q: flat.search(q, 11), q1[:nflat]), repeat=nflat, warmup=2)
    with single_thread():  # the same, on one thread as bigembed runs single queries
        flat_1t = measure(_cycle(lambda q: flat.search(q, 11), q1[:nflat]), repeat=nflat,
                          warmup=2)
    flat.reset()  # frees its copy of the vectors
    out = {
        "n": n, "dim": dim, "clusters": clusters, "queries": int(len(qids)), "k": 10,
        "index": {"name": r.name, "kind": r.kind, "params": r.params, "search": r.search,
                  "backend": r.backend, "tuned_recall_at_10": r.recall_at_10,
                  "build": build},
        "bigembed_index_search": {**_pcts(ann_raw.times), "timing": ann_raw},
        "bigembed_neighbors_call": {**_pcts(api.times), "recall_at_10": api_recall,
                                    "cold_first_call_ms": cold_ms, "timing": api},
        "faiss_indexflat_exact": {**_pcts(flat_t.times), "recall_at_10": 1.0,
                                  "build_s": flat_build, "timing": flat_t},
        "faiss_indexflat_exact_one_thread": {**_pcts(flat_1t.times), "recall_at_10": 1.0,
                                             "timing": flat_1t},
    }
    out["speedup_p50_index_vs_flat"] = out["faiss_indexflat_exact"]["p50_ms"] / \
        out["bigembed_index_search"]["p50_ms"]
    out["speedup_p50_index_vs_flat_one_thread"] = \
        out["faiss_indexflat_exact_one_thread"]["p50_ms"] / out["bigembed_index_search"]["p50_ms"]
    out["speedup_p50_neighbors_call_vs_flat"] = out["faiss_indexflat_exact"]["p50_ms"] / \
        out["bigembed_neighbors_call"]["p50_ms"]
    shutil.rmtree(path, ignore_errors=True)
    return out


def _prefix_dataset(src: np.ndarray, path: Path, rows: int) -> Path:
    with DatasetWriter(path) as dw:
        with dw.space("default", dim=src.shape[1], total_rows=rows) as sw:
            for s in range(0, rows, 65536):
                sw.write(src[s:min(rows, s + 65536)])
    return path


def bench_graph(work: Path, n: int, dim: int, clusters: int, nnd_n: int, k: int = 15) -> dict:
    from pynndescent import NNDescent

    path = work / "graph"
    synth(path, n=n, dim=dim, clusters=clusters, seed=1, progress=False)
    ds = Dataset.open(path)
    x = ds.space().vectors
    out = {"k": k, "dim": dim, "clusters": clusters}

    t = measure(lambda: knn_graph(ds, k=k, method="ivf", target_recall=0.95, force=True),
                repeat=1, warmup=0)
    g = knn_graph(ds, k=k, method="ivf", target_recall=0.95)
    qids = sample_ids(n, 500, seed=7)
    out["bigembed_knn_graph"] = {
        "n": n, "seconds": t.median, "method": g.record["method"], "params": g.record["params"],
        "recall_tuned_sample": g.record["recall"],
        "recall_at_15": _recall_vs_exact(g.indices[qids], x, qids, k), "timing": t}
    log.info("graph: bigembed %d rows in %.1fs, recall %.3f", n, t.median,
             out["bigembed_knn_graph"]["recall_at_15"])

    # pynndescent on the first nnd_n rows (warm its numba JIT on a small set first); and
    # bigembed on exactly the same rows when that is a prefix, for a like-for-like ratio.
    nnd_n = min(nnd_n, n)
    xs = np.ascontiguousarray(x[:nnd_n], np.float32)
    NNDescent(xs[:2000], n_neighbors=k + 1, random_state=0).neighbor_graph  # JIT warm-up
    holder = {}
    tn = measure(lambda: holder.update(
        g=NNDescent(xs, n_neighbors=k + 1, random_state=0).neighbor_graph), repeat=1, warmup=0)
    ni, _ = holder["g"]
    qs = sample_ids(nnd_n, 500, seed=7)
    _, nni = drop_self(np.zeros(ni[qs].shape, np.float32), ni[qs], qs, k)
    out["pynndescent"] = {"n": nnd_n, "seconds": tn.median, "n_neighbors": k + 1,
                          "recall_at_15": _recall_vs_exact(nni, xs, qs, k), "timing": tn}
    log.info("graph: pynndescent %d rows in %.1fs, recall %.3f", nnd_n, tn.median,
             out["pynndescent"]["recall_at_15"])
    if nnd_n < n:
        sub = _prefix_dataset(xs, work / "graph-prefix", nnd_n)
        ts = measure(lambda: knn_graph(sub, k=k, method="ivf", target_recall=0.95, force=True),
                     repeat=1, warmup=0)
        gs = knn_graph(sub, k=k, method="ivf", target_recall=0.95)
        out["bigembed_knn_graph_same_rows_as_pynndescent"] = {
            "n": nnd_n, "seconds": ts.median,
            "recall_at_15": _recall_vs_exact(gs.indices[qs], xs, qs, k), "timing": ts}
    same = out.get("bigembed_knn_graph_same_rows_as_pynndescent", out["bigembed_knn_graph"])
    out["speedup_vs_pynndescent_same_rows"] = out["pynndescent"]["seconds"] / same["seconds"]
    shutil.rmtree(path, ignore_errors=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="lookup rows")
    ap.add_argument("--dim", type=int, default=128, help="lookup dimension")
    ap.add_argument("--clusters", default="1000,10",
                    help="lookup data sets: synth clusters each (1000: many well-separated "
                    "classes; 10: large high-dimensional blobs, hard for any ANN index)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--kind", default="auto")
    ap.add_argument("--graph-n", type=int, default=1_000_000)
    ap.add_argument("--graph-dim", type=int, default=50)
    ap.add_argument("--graph-clusters", default="1000,10")
    ap.add_argument("--nnd-n", default="1000000,200000",
                    help="rows pynndescent runs on, per --graph-clusters entry")
    ap.add_argument("--skip", choices=["lookup", "graph"], action="append", default=[])
    ap.add_argument("--workdir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--out", default="benchmarks/results/neighbors.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = Path(tempfile.mkdtemp(prefix="bench-neighbors-", dir=args.workdir))
    results = {"lookup": {}, "graph": {}}
    cmd = "python -m benchmarks.bench_neighbors " + " ".join(argv if argv is not None else
                                                              __import__("sys").argv[1:])
    params = {**vars(args), "command": cmd.strip()}

    def save():  # after every section, so a long run that is cut short keeps what it measured
        return write_results(args.out, results_doc("neighbors", results, params=params))

    try:
        if "lookup" not in args.skip:
            for c in map(int, args.clusters.split(",")):
                results["lookup"][f"clusters_{c}"] = bench_lookup(
                    work, args.n, args.dim, c, args.queries, args.kind)
                save()
        if "graph" not in args.skip:
            for c, nn in zip(map(int, args.graph_clusters.split(",")),
                             map(int, args.nnd_n.split(","))):
                results["graph"][f"clusters_{c}"] = bench_graph(
                    work, args.graph_n, args.graph_dim, c, nn)
                save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = save()
    log.info("wrote %s", path)
    return results

if __name__ == "__main__":
    main()
