"""The cost of running on a Dask cluster: ``local:1`` against no cluster, ``local:2`` against
``local:1``, for extraction and the kNN graph, in the same run on the same data.

    python -m benchmarks.bench_cluster [--rows 1000000] [--graph-dim 16] [--out ...]

Extraction: a 64 -> 256 -> 128 MLP over ``--rows`` synthetic map-style rows (made from the row
index, so every worker builds the same data without reading any), capturing the 128-wide layer
(float32, 512 MB at 1M rows) in 64k-row chunks. The kNN graph: k=10 over ``--rows`` x
``--graph-dim`` synthetic vectors, IVF tuned to recall 0.9 (what ``auto`` picks at this size);
the index is trained, filled and tuned on the client in every configuration, the row blocks
are searched where the configuration says.

Each configuration is warmed up first (a small extraction and graph, so workers have imported
torch and FAISS), the cluster is started before timing (its start-up is reported on its own),
and every figure is the median of ``--repeat`` runs. On a cluster, ``worker_s`` is the
workers' time with the model in their task slots and ``write_s`` the time writing shards,
which overlaps the next chunks' model (without a cluster: the background writer's time). The per-worker rates are what
``docs/scaling.md`` extrapolates from. LocalCluster workers get one task slot each and share
the machine's cores as their BLAS/OpenMP threads (2 cores: local:1 gets 2 threads, local:2 one
each), so ``local:2`` against ``local:1`` shows the cost of splitting, not a gain of cores.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("bench_cluster")

DATA_MODULE = textwrap.dedent('''
    """Model and data of bench_cluster, importable on every worker."""
    import numpy as np
    import torch
    import torch.nn as nn


    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.inp = nn.Linear(64, 256)
            self.act = nn.ReLU()
            self.hidden = nn.Linear(256, 128)
            self.head = nn.Linear(128, 10)

        def forward(self, x):
            return self.head(torch.relu(self.hidden(self.act(self.inp(x)))))


    def mlp():
        return MLP()


    _BASE = np.random.default_rng(0).standard_normal((4099, 64)).astype(np.float32)


    class Rows(torch.utils.data.Dataset):
        """Row i: a fixed random vector picked and scaled by i (no storage, same everywhere)."""

        def __init__(self, n):
            self.n = int(n)
            self.fingerprint = f"bench-cluster-rows-{n}"

        def __len__(self):
            return self.n

        @staticmethod
        def collate(batch):  # __getitems__ already makes the batch
            return batch

        def __getitems__(self, ids):
            ids = np.asarray(ids)
            x = _BASE[ids % len(_BASE)] * (1.0 + ids[:, None] / self.n)
            return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(ids % 10)

        def __getitem__(self, i):
            x, y = self.__getitems__([i])
            return x[0], y[0]


    def rows(n=1000000):
        return Rows(n)
''')


def _extract(out: Path, n: int):
    from bigembed.extract.run import extract

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    r = extract(model="bc_data:mlp", data=f"bc_data:rows_{n}", out=out, layers="hidden",
                batch_size=1024, shard_rows=65536, progress=False)
    secs = time.perf_counter() - t0
    return secs, r


def _graph(path: Path):
    from bigembed.search.graph import knn_graph

    t0 = time.perf_counter()
    g = knn_graph(path, k=10, method="ivf", target_recall=0.9, force=True, progress=False)
    return time.perf_counter() - t0, g


def _configs(spec: str):
    return [None if s == "none" else s for s in spec.split(",")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--graph-dim", type=int, default=16)
    ap.add_argument("--configs", default="none,local:1,local:2")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--skip", choices=["extract", "graph"], action="append", default=[])
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default="benchmarks/results/cluster.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("distributed", "tornado", "faiss", "bigembed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import bigembed
    from bigembed.bench.harness import results_doc, write_results
    from bigembed.distributed.cluster import connect
    from bigembed.ingest.synth import synth

    work = Path(tempfile.mkdtemp(prefix="bench-cluster-", dir=args.workdir))
    mod = DATA_MODULE + "".join(f"\n\ndef rows_{n}():\n    return Rows({n})\n"
                                for n in (args.rows, 8192))
    (work / "bc_data.py").write_text(mod)
    sys.path.insert(0, str(work))  # workers start after this: they inherit the path
    cmd = "python -m benchmarks.bench_cluster " + " ".join(
        argv if argv is not None else sys.argv[1:])
    results: dict = {"extract": {}, "graph": {}, "startup_s": {}}
    params = {**vars(args), "command": cmd.strip()}

    def save():
        return write_results(args.out, results_doc("cluster", results, params=params))

    gpath = work / "graph"
    if "graph" not in args.skip:
        t0 = time.perf_counter()
        synth(gpath, n=args.rows, dim=args.graph_dim, clusters=100, seed=0, progress=False)
        synth(work / "graph-warm", n=20000, dim=args.graph_dim, clusters=10, seed=0,
              progress=False)
        log.info("synthesised %d x %d in %.1fs", args.rows, args.graph_dim,
                 time.perf_counter() - t0)
    try:
        for spec in _configs(args.configs):
            name = spec or "none"
            client = local = None
            if spec is not None:
                t0 = time.perf_counter()
                client, local = connect(spec)
                results["startup_s"][name] = round(time.perf_counter() - t0, 2)
            ctx = bigembed.use_cluster(client) if client is not None else None
            try:
                if ctx is not None:
                    ctx.__enter__()
                if "extract" not in args.skip:
                    from bigembed.extract.run import extract

                    extract(model="bc_data:mlp", data="bc_data:rows_8192", out=work / "warm",
                            layers="hidden", batch_size=1024, shard_rows=2048, overwrite=True,
                            progress=False)  # warm-up: imports, model load on each worker
                    times = []
                    for _ in range(args.repeat):
                        secs, r = _extract(work / "ex", args.rows)
                        times.append(secs)
                    med = float(np.median(times))
                    results["extract"][name] = {
                        "seconds": round(med, 2), "runs": [round(t, 2) for t in times],
                        "rows_per_s": round(args.rows / med, 1), "shards": r.shards,
                        "bytes": r.bytes, "worker_s": r.timings.get("worker_s"),
                        "write_s": r.timings.get("write_s")}
                    log.info("extract %s: %d rows in %.1fs (%.0f rows/s)", name, args.rows,
                             med, args.rows / med)
                    shutil.rmtree(work / "ex", ignore_errors=True)
                    save()
                if "graph" not in args.skip:
                    _graph(work / "graph-warm")  # warm-up
                    times = []
                    for _ in range(args.repeat):
                        secs, g = _graph(gpath)
                        times.append(secs)
                    med = float(np.median(times))
                    results["graph"][name] = {
                        "seconds": round(med, 2), "runs": [round(t, 2) for t in times],
                        "rows_per_s": round(args.rows / med, 1),
                        "recall": g.record["recall"], "params": {
                            k: v for k, v in g.record["params"].items() if k != "tuning"}}
                    log.info("knn graph %s: %d rows in %.1fs, recall %.3f", name, args.rows,
                             med, g.record["recall"])
                    save()
            finally:
                if ctx is not None:
                    ctx.__exit__(None, None, None)
                if client is not None:
                    client.close()
                    local.close()
        for stage in ("extract", "graph"):
            r = results[stage]
            if "none" in r and "local:1" in r:
                r["overhead_local1_vs_none"] = round(
                    r["local:1"]["seconds"] / r["none"]["seconds"] - 1, 3)
            if "local:1" in r and "local:2" in r:
                r["ratio_local2_vs_local1"] = round(
                    r["local:2"]["seconds"] / r["local:1"]["seconds"], 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = save()
    log.info("wrote %s", path)
    return results


if __name__ == "__main__":
    main()
