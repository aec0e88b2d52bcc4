"""The arithmetic of docs/scaling.md, from the per-worker rates in a bench_cluster result.

    python -m benchmarks.scaling_table [--results benchmarks/results/cluster.json]
        [--workers 1,8,64] [--dim 768]

Prints the markdown tables of docs/scaling.md: for 100M and 1B rows of ``--dim``-wide float32
vectors on W workers, the time of each stage (from the measured per-worker rates, scaled by
the work per row), the memory per worker, the bytes over the network and on disk. Every
formula is written next to its figure in docs/scaling.md; this script only evaluates them.
"""

from __future__ import annotations

import argparse
import json
import math

SIZES = (100_000_000, 1_000_000_000)
K = 15            # graph neighbours
META_B = 50       # metadata bytes per row (id, label, prediction, confidence, loss, key)
LAYOUT_B = 12     # x, y, knn_preservation float32


def gb(b: float) -> str:
    return f"{b / 1e9:,.1f} GB" if b < 1e12 else f"{b / 1e12:,.2f} TB"


def dur(s: float) -> str:
    if s < 120:
        return f"{s:,.0f} s"
    if s < 7200:
        return f"{s / 60:,.0f} min"
    if s < 3 * 86400:
        return f"{s / 3600:,.1f} h"
    return f"{s / 86400:,.1f} days"


def nlist(n: int) -> int:
    return int(max(1, min(round(math.sqrt(n)), n // 39, 65536)))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default="benchmarks/results/cluster.json")
    ap.add_argument("--workers", default="1,8,64")
    ap.add_argument("--dim", type=int, default=768)
    args = ap.parse_args(argv)
    doc = json.load(open(args.results))
    res, p = doc["results"], doc["params"]
    n0, d0 = p["rows"], p["graph_dim"]
    W = [int(w) for w in args.workers.split(",")]
    d = args.dim
    row_b = 4 * d

    ex1 = res["extract"]["local:1"]["rows_per_s"]
    ex_over = res["extract"].get("overhead_local1_vs_none")
    ex2 = res["extract"].get("local:2", {}).get("rows_per_s")
    # The graph: rows/s of one worker at (n0, d0); per row it scans nprobe/nlist of N rows.
    g = res["graph"]["local:1"]
    f0 = g["params"]["nprobe"] / g["params"]["nlist"]
    macs_per_s = g["rows_per_s"] * n0 * f0 * d0  # scanned MACs per second per worker
    out = []
    out.append(f"Measured (bench_cluster, {n0:,} rows): extraction {ex1:,.0f} rows/s on one "
               f"worker (local:1; overhead against no cluster {ex_over:+.1%}"
               + (f"; local:2 {ex2:,.0f} rows/s" if ex2 else "") + f"); kNN graph {g['rows_per_s']:,.0f} "
               f"rows/s on one worker at nlist {g['params']['nlist']}, nprobe "
               f"{g['params']['nprobe']} (scanned fraction f = {f0:.4f}), i.e. "
               f"{macs_per_s / 1e9:,.2f} GMAC/s of distance computations.\n")
    for n in SIZES:
        nl = nlist(n)
        out.append(f"\n### {n // 1_000_000:,}M rows x {d} (float32)\n")
        out.append("| | formula | " + " | ".join(f"W = {w}" for w in W) + " |")
        out.append("|---|---|" + "---|" * len(W))
        vec = n * row_b
        # extraction: N / (W x the model's rows/s per worker) + the per-row cost of the
        # cluster measured (1/r_local1 - 1/r_none seconds per row, spread over the workers)
        ex0 = res["extract"]["none"]["rows_per_s"]
        extra = max(0.0, 1 / ex1 - 1 / ex0)
        out.append(f"| extract, the bench MLP at the measured {ex1:,.0f} rows/s per worker | "
                   f"N / (W x r) | " + " | ".join(dur(n / (w * ex1)) for w in W) + " |")
        for name, r in (("ViT-B/16 bf16 at an assumed 3,000 images/s per GPU worker", 3000.0),):
            out.append(f"| extract, {name} | N / (W x r) + N x {extra * 1e6:.1f} us / W "
                       f"(cluster cost per row, measured) | "
                       + " | ".join(dur(n / (w * r) + n * extra / w) for w in W) + " |")
        verify = vec / 1e9  # seconds at 1 GB/s
        out.append(f"| extract/ingest: client verifies every shard | N x {row_b} B / 1 GB/s "
                   f"(does not shrink with W) | " + " | ".join(dur(verify) for _ in W) + " |")
        f = f0
        scan = n * n * f * d
        out.append(f"| kNN graph k={K}, IVF-Flat, nlist {nl:,}, same scanned fraction f | "
                   f"N^2 x f x d / (W x {macs_per_s / 1e9:.2f} GMAC/s) | "
                   + " | ".join(dur(scan / (w * macs_per_s)) for w in W) + " |")
        f2 = 16 / nl
        scan2 = n * n * f2 * d
        out.append(f"| same, nprobe 16 of {nl:,} lists (f = {f2:.5f}) | same | "
                   + " | ".join(dur(scan2 / (w * macs_per_s)) for w in W) + " |")
        out.append(f"| same, CPU workers at an assumed 200 GMAC/s (a 16-core AVX2 node; "
                   f"this 2-core machine gave {macs_per_s / 1e9:.2f}) | "
                   f"N^2 x f x d / (W x 2e11) | "
                   + " | ".join(dur(scan2 / (w * 2e11)) for w in W) + " |")
        out.append(f"| kNN graph on GPU workers (FAISS GPU, ~10 TMAC/s each), nprobe 16 | "
                   f"N^2 x f x d / (W x 1e13) | "
                   + " | ".join(dur(scan2 / (w * 1e13)) for w in W) + " |")
        out.append(f"| memory per worker: graph (IVF-Flat index = all vectors) | N x {row_b} B"
                   f" + ids 8 B | " + " | ".join(gb(vec + 8 * n) for _ in W) + " |")
        out.append(f"| memory on the client: graph (indices + distances) | N x k x 12 B | "
                   + " | ".join(gb(n * K * 12) for _ in W) + " |")
        out.append(f"| memory per worker: extract | model + 3 chunks of 256 MB (one in the "
                   f"model, up to 2 being written) | "
                   + " | ".join("model + 0.75 GB" for _ in W) + " |")
        out.append(f"| network: extract (shards written by workers + read back by the client) "
                   f"| 2 x N x {row_b} B | " + " | ".join(gb(2 * vec) for _ in W) + " |")
        out.append(f"| network: graph (index read by every worker, blocks written + read + "
                   f"artifact written) | W x N x {row_b} B + 3 x N x k x 12 B | "
                   + " | ".join(gb(w * vec + 3 * n * K * 12) for w in W) + " |")
        out.append(f"| disk: vectors (float32 / float16) | N x d x 4 (2) B | "
                   + " | ".join(f"{gb(vec)} / {gb(vec / 2)}" for _ in W) + " |")
        out.append(f"| disk: metadata, graph k={K}, layout, IVF-Flat index | N x ({META_B} + "
                   f"{K * 12} + {LAYOUT_B} + {row_b} + 8) B | "
                   + " | ".join(gb(n * (META_B + K * 12 + LAYOUT_B + row_b + 8))
                                for _ in W) + " |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
