"""Groups: contrast of units, clustering a million-point layout, the side panel's charts.

    python -m benchmarks.bench_groups [--rows 1000000] [--dim 768] [--group 100000]
        [--cluster-rows 1000000] [--panel-rows 2000000] [--sklearn-budget 60]
        [--skip contrast|cluster|panel] [--out benchmarks/results/groups.json]

Contrast: ``bigembed.contrast`` of a ``--group``-row selection over a ``--rows`` x ``--dim``
float16 space on disk, cold (the first call reads every row once for the totals) and warm (a
second group of the same space), with wall time, CPU time and peak growth of anonymous memory
(the memory-mapped shards are file pages, not counted; total RSS growth is reported too);
beside it the plain numpy way (load the space cast to float32, then means and variances),
timed and measured in the same process, and the largest difference of their effects.

Clustering: ``bigembed.cluster`` of a planted layout (Gaussian blobs of varied size and spread
plus 2% uniform noise), adjusted Rand index against the planted blobs on the non-noise points;
scikit-learn's ``HDBSCAN`` on the same layout's coordinates (same min_cluster_size and
min_samples) on growing random subsets until one run passes ``--sklearn-budget`` seconds (its
minimum spanning tree is Prim's over all pairs, so 1M points are out of reach), with bigembed
on the same subsets: time, ARI against the planted blobs and against scikit-learn's labels;
scikit-learn's time at the full size is extrapolated from the measured power law.

Panel: ``group_stats`` plus the chart data of the page (:func:`bigembed.server.groups_view.
panel_data`) for a 1M-row selection of a ``--panel-rows`` dataset, cold (the first group of
the dataset, which prepares its codes and bins once) and warm (what a selection then costs).
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bigembed.bench.harness import results_doc, write_results

log = logging.getLogger("bench_groups")


# -- measuring ---------------------------------------------------------------------------------

def _rss(kind: str) -> int:
    """Bytes of ``kind`` (RssAnon, VmRSS) of this process, from /proc."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(kind + ":"):
                return int(line.split()[1]) * 1024
    return 0


class Peak:
    """Samples RssAnon and VmRSS every 5 ms while a block runs: peak growth over the start."""

    def __enter__(self):
        import gc

        gc.collect()
        self.base_anon, self.base_rss = _rss("RssAnon"), _rss("VmRSS")
        self.peak_anon, self.peak_rss = self.base_anon, self.base_rss
        self._stop = threading.Event()

        def run():
            while not self._stop.is_set():
                self.peak_anon = max(self.peak_anon, _rss("RssAnon"))
                self.peak_rss = max(self.peak_rss, _rss("VmRSS"))
                self._stop.wait(0.005)

        self._t = threading.Thread(target=run, daemon=True)
        self._t.start()
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.cpu_seconds = time.process_time() - self.c0
        self._stop.set()
        self._t.join()
        self.peak_anon = max(self.peak_anon, _rss("RssAnon"))
        self.peak_rss = max(self.peak_rss, _rss("VmRSS"))

    def doc(self) -> dict:
        return {"seconds": round(self.seconds, 3), "cpu_seconds": round(self.cpu_seconds, 3),
                "anon_growth_mb": round((self.peak_anon - self.base_anon) / 2**20, 1),
                "rss_growth_mb": round((self.peak_rss - self.base_rss) / 2**20, 1)}


def _drop_page_cache(path: Path) -> bool:
    """Ask the kernel to drop a file tree's cached pages (POSIX_FADV_DONTNEED); best effort."""
    ok = True
    for p in path.rglob("*.arrow"):
        try:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        except (OSError, AttributeError):
            ok = False
    return ok


# -- contrast ----------------------------------------------------------------------------------

def bench_contrast(tmp: Path, rows: int, dim: int, group: int) -> dict:
    from bigembed import DatasetWriter, contrast
    from bigembed.dataset.reader import Dataset

    path = tmp / "contrast"
    rng = np.random.default_rng(0)
    shift = np.zeros(dim, np.float32)
    shift[[3, 17]] = (1.0, -1.0)
    ids = np.sort(rng.choice(rows, group, replace=False))
    t0 = time.perf_counter()
    block = 65536
    with DatasetWriter(path) as dw:
        with dw.space("h", dim=dim, dtype="float16", total_rows=rows) as sw:
            for s in range(0, rows, block):
                e = min(rows, s + block)
                x = np.random.default_rng([1, s]).standard_normal((e - s, dim), np.float32)
                sel = ids[(ids >= s) & (ids < e)] - s
                x[sel] += shift
                sw.write(x.astype(np.float16))
    log.info("wrote %d x %d float16 in %.0fs", rows, dim, time.perf_counter() - t0)
    out: dict = {"rows": rows, "dim": dim, "dtype": "float16", "group": group}
    ds = Dataset.open(path)
    ds.space("h").ensure_verified()  # checksums once (a reader's one-time cost, not timed)
    contrast(ds, ids[:10], space="h", top=5, progress=False)  # numba JIT (cached on disk)
    import bigembed.analysis.units as C

    C._TOTALS.clear()
    cache_dropped = _drop_page_cache(path)
    with Peak() as cold:
        df = contrast(ds, ids, space="h", top=20, progress=False)
    other = np.sort(rng.choice(rows, group, replace=False))
    with Peak() as warm:
        contrast(ds, other, space="h", top=20, progress=False)
    out["bigembed"] = {"cold": cold.doc(), "warm": warm.doc(), "page_cache_dropped":
                       cache_dropped, "top_dims": df["dim"][:2].tolist()}
    # the plain numpy way: load (cast to float32), means, variances, the same effect
    v = ds.space("h").vectors
    with Peak() as plain:
        X = v.astype(np.float32)
        g = X[ids]
        n_in, n_out = len(ids), rows - len(ids)
        s_all = X.sum(0, dtype=np.float64)
        q_all = np.einsum("ij,ij->j", X, X, dtype=np.float64)
        s_in = g.sum(0, dtype=np.float64)
        q_in = np.einsum("ij,ij->j", g, g, dtype=np.float64)
        m_in, m_out = s_in / n_in, (s_all - s_in) / n_out
        ss = (q_in - n_in * m_in ** 2) + (q_all - q_in - n_out * m_out ** 2)
        eff = (m_in - m_out) / np.sqrt(ss / (rows - 2))
        del X, g
    full = contrast(ds, ids, space="h", top=None, progress=False).sort_values("dim")
    out["numpy"] = plain.doc()
    out["max_abs_effect_difference"] = float(np.abs(full["effect"].to_numpy() - eff).max())
    out["targets"] = {"cold_seconds_le_3": cold.seconds <= 3.0,
                      "anon_growth_mb_le_300": (cold.peak_anon - cold.base_anon) / 2**20 <= 300}
    out["speedup_cold_vs_numpy"] = round(plain.seconds / cold.seconds, 2)
    out["speedup_warm_vs_numpy"] = round(plain.seconds / warm.seconds, 2)
    return out


# -- clustering --------------------------------------------------------------------------------

def planted_layout(n: int, seed: int = 0, blobs: int = 25, noise: float = 0.02):
    rng = np.random.default_rng(seed)
    centres = np.stack(np.meshgrid(np.arange(5), np.arange(5)), -1).reshape(-1, 2)[:blobs]
    centres = centres * 20.0 + rng.uniform(-3, 3, (blobs, 2))
    w = rng.dirichlet(np.full(blobs, 4.0))
    m = int(n * noise)
    truth = rng.choice(blobs, n - m, p=w)
    spread = rng.uniform(0.8, 2.0, blobs)
    xy = centres[truth] + rng.normal(0, 1, (n - m, 2)) * spread[truth, None]
    lo, hi = centres.min(0) - 10, centres.max(0) + 10
    xy = np.vstack([xy, rng.uniform(lo, hi, (m, 2))])
    truth = np.r_[truth, -np.ones(m, int)]
    perm = rng.permutation(n)
    return xy[perm].astype(np.float32), truth[perm]


def bench_cluster(tmp: Path, rows: int, sklearn_budget: float) -> dict:
    from sklearn.cluster import HDBSCAN
    from sklearn.metrics import adjusted_rand_score

    from bigembed import DatasetWriter, cluster
    from bigembed.analysis.clusters import (
        GRAPH_K,
        MIN_SAMPLES,
        _hdbscan_on_graph,
        _layout_knn,
        default_min_size,
    )
    from bigembed.dataset.layouts import save_layout
    from bigembed.dataset.reader import Dataset

    xy, truth = planted_layout(rows)
    path = tmp / "cluster"
    with DatasetWriter(path) as dw:
        with dw.space("v", dim=2, total_rows=rows) as sw:
            sw.write(xy)
    save_layout(Dataset.open(path), "planted", xy, {"space": "v", "method": "planted"})
    core = truth >= 0
    with Peak() as p:
        r = cluster(path, layout="planted", progress=False)
    out: dict = {"rows": rows, "min_size": r.min_size, "min_samples": r.min_samples,
                 "bigembed": dict(p.doc(), clusters=r.n_clusters, noise_share=round(
                     r.noise / rows, 4), planted_blobs=int(truth.max()) + 1,
                     ari_vs_planted=round(adjusted_rand_score(truth[core], r.labels[core]), 4)),
                 "target_seconds_le_60": p.seconds <= 60}
    # scikit-learn's HDBSCAN on random subsets of the same layout, growing until too slow
    rng = np.random.default_rng(1)
    subsets = []
    m = 5000
    while m <= rows:
        take = np.sort(rng.choice(rows, m, replace=False))
        pts, tr = xy[take].astype(np.float64), truth[take]
        ms = default_min_size(m)
        t0 = time.perf_counter()
        ref = HDBSCAN(min_cluster_size=ms, min_samples=MIN_SAMPLES, copy=True).fit(pts).labels_
        t_sk = time.perf_counter() - t0
        t0 = time.perf_counter()
        d, i = _layout_knn(pts, GRAPH_K)
        ours = _hdbscan_on_graph(d, i, lambda ids: pts[ids], ms, min(MIN_SAMPLES, ms))
        t_ours = time.perf_counter() - t0
        c = tr >= 0
        subsets.append({"rows": m, "min_size": ms, "sklearn_seconds": round(t_sk, 3),
                        "bigembed_seconds": round(t_ours, 3),
                        "sklearn_ari_vs_planted": round(adjusted_rand_score(tr[c], ref[c]), 4),
                        "bigembed_ari_vs_planted": round(adjusted_rand_score(tr[c], ours[c]), 4),
                        "bigembed_ari_vs_sklearn": round(adjusted_rand_score(ref, ours), 4)})
        log.info("subset %s", subsets[-1])
        if t_sk > sklearn_budget:
            break
        m *= 2
    out["sklearn_subsets"] = subsets
    if len(subsets) >= 2:
        a, b = subsets[-2], subsets[-1]
        expo = np.log(b["sklearn_seconds"] / a["sklearn_seconds"]) / np.log(b["rows"] / a["rows"])
        out["sklearn_extrapolated_seconds_at_rows"] = round(
            b["sklearn_seconds"] * (rows / b["rows"]) ** expo, 1)
        out["sklearn_fitted_exponent"] = round(float(expo), 2)
    return out


# -- the panel -----------------------------------------------------------------------------------

def bench_panel(tmp: Path, rows: int, group: int) -> dict:
    import pyarrow as pa
    from bigembed.server.groups_view import panel_data

    from bigembed import DatasetWriter, group_stats
    from bigembed.dataset.reader import Dataset

    rng = np.random.default_rng(2)
    label = rng.integers(0, 10, rows).astype(np.int32)
    wrong = rng.random(rows) < 0.1
    pred = np.where(wrong, (label + rng.integers(1, 10, rows)) % 10, label).astype(np.int32)
    loss = rng.gamma(2, 0.3, rows).astype(np.float32)
    path = tmp / "panel"
    with DatasetWriter(path) as dw:
        with dw.space("v", dim=2, total_rows=rows) as sw:
            sw.write(rng.normal(size=(rows, 2)).astype(np.float32))
        dw.set_meta(pa.table({"label": label, "prediction": pred, "loss": loss,
                              "confidence": np.exp(-loss), "correct": ~wrong}))
    ds = Dataset.open(path)
    ds.meta  # read once, as the server holds it
    ids = np.sort(rng.choice(rows, group, replace=False))
    with Peak() as cold:
        panel_data(group_stats(ds, ids))
    times = []
    for _ in range(5):
        ids = np.sort(rng.choice(rows, group, replace=False))
        t0 = time.perf_counter()
        panel_data(group_stats(ds, ids))
        times.append(time.perf_counter() - t0)
    return {"rows": rows, "group": group, "cold": cold.doc(),
            "warm_seconds": [round(t, 4) for t in times],
            "warm_median_seconds": round(float(np.median(times)), 4),
            "target_warm_le_0_3_s": float(np.median(times)) <= 0.3}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--group", type=int, default=100_000)
    p.add_argument("--cluster-rows", type=int, default=1_000_000)
    p.add_argument("--panel-rows", type=int, default=2_000_000)
    p.add_argument("--panel-group", type=int, default=1_000_000)
    p.add_argument("--sklearn-budget", type=float, default=60.0)
    p.add_argument("--skip", choices=["contrast", "cluster", "panel"], action="append",
                   default=[])
    p.add_argument("--tmp", default=None, help="directory for the datasets (default: a temp dir)")
    p.add_argument("--out", default="benchmarks/results/groups.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("BIGEMBED_NO_PROGRESS", "1")
    results: dict = {}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        if "panel" not in args.skip:
            results["panel"] = bench_panel(tmp, args.panel_rows, args.panel_group)
            log.info("panel: %s", results["panel"])
        if "contrast" not in args.skip:
            results["contrast"] = bench_contrast(tmp, args.rows, args.dim, args.group)
            log.info("contrast: %s", results["contrast"])
        if "cluster" not in args.skip:
            results["cluster"] = bench_cluster(tmp, args.cluster_rows, args.sklearn_budget)
            log.info("cluster: %s", results["cluster"])
    results["load_average_at_end"] = os.getloadavg()
    results["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    doc = results_doc("groups", results, params=vars(args))
    print(write_results(args.out, doc))


if __name__ == "__main__":
    main()
