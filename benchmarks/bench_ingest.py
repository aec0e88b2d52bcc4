"""Ingest throughput, reopen time, and vector-column reads: bigembed vs plain pyarrow/numpy.

    python -m benchmarks.bench_ingest [--n 1000000] [--dim 768] [--out benchmarks/results/ingest.json]

Same data, same run: ``bigembed.ingest`` from .npy and from Parquet against the plain
conversion a user would write (pyarrow reading the input and writing one Arrow IPC file);
``Dataset.open(...).space().vectors`` against ``np.load(mmap_mode="r")``; reading all vectors
from Parquet against from the dataset's Arrow IPC shards. Files are fresh in the page cache
(this measures the software path, not the disk).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bigembed import Dataset
from bigembed.bench.harness import measure, results_doc, write_results
from bigembed.ingest.run import ingest

log = logging.getLogger("bench_ingest")


def make_inputs(work: Path, n: int, dim: int, seed: int = 0):
    npy = work / "vectors.npy"
    arr = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(n, dim))
    step = 65536
    for s in range(0, n, step):
        arr[s:s + step] = np.random.default_rng([seed, s]).standard_normal(
            (min(step, n - s), dim), dtype=np.float32)
    arr.flush()
    del arr
    pqf = work / "vectors.parquet"
    src = np.load(npy, mmap_mode="r")
    schema = pa.schema([("emb", pa.list_(pa.float32(), dim))])
    with pq.ParquetWriter(pqf, schema) as w:
        for s in range(0, n, step):
            block = np.ascontiguousarray(src[s:s + step]).reshape(-1)
            w.write_table(pa.table({"emb": pa.FixedSizeListArray.from_arrays(block, dim)},
                                   schema=schema))
    return npy, pqf


def plain_ipc_from_npy(npy: Path, out: Path, dim: int):
    src = np.load(npy, mmap_mode="r")
    schema = pa.schema([("emb", pa.list_(pa.float32(), dim))])
    with pa.OSFile(str(out), "wb") as f, pa.ipc.new_file(f, schema) as w:
        for s in range(0, len(src), 65536):
            block = np.ascontiguousarray(src[s:s + 65536]).reshape(-1)
            w.write_batch(pa.record_batch([pa.FixedSizeListArray.from_arrays(block, dim)],
                                          schema=schema))


def plain_ipc_from_parquet(pqf: Path, out: Path):
    pf = pq.ParquetFile(pqf)
    with pa.OSFile(str(out), "wb") as f, pa.ipc.new_file(f, pf.schema_arrow) as w:
        for b in pf.iter_batches(batch_size=65536):
            w.write_batch(b)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--out", default="benchmarks/results/ingest.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=args.workdir))
    try:
        npy, pqf = make_inputs(work, args.n, args.dim)
        gb = args.n * args.dim * 4 / 1e9
        res = {"n": args.n, "dim": args.dim, "gigabytes": gb}

        def fresh(p):
            shutil.rmtree(p, ignore_errors=True)
            if p.exists():
                p.unlink()

        for name, src in (("npy", npy), ("parquet", pqf)):
            ds_path = work / f"ds-{name}"
            t = measure(lambda: ingest([src], out=ds_path, progress=False),
                        setup=lambda: fresh(ds_path), repeat=args.repeat, warmup=0)
            plain_out = work / f"plain-{name}.arrow"
            plain = (lambda: plain_ipc_from_npy(npy, plain_out, args.dim)) if name == "npy" \
                else (lambda: plain_ipc_from_parquet(pqf, plain_out))
            tp = measure(plain, setup=lambda: fresh(plain_out), repeat=args.repeat, warmup=0)
            res[f"ingest_{name}"] = {
                "bigembed": t.to_json(), "plain_pyarrow": tp.to_json(),
                "bigembed_gb_per_s": gb / t.median, "plain_gb_per_s": gb / tp.median,
                "ratio_bigembed_over_plain_time": t.median / tp.median,
                "note": "bigembed also checksums every shard, page-aligns it and fsyncs",
            }
            log.info("ingest %s: %.2f GB/s (plain pyarrow %.2f GB/s)", name, gb / t.median,
                     gb / tp.median)
        ds_path = work / "ds-npy"
        t_open = measure(lambda: Dataset.open(ds_path).space().vectors.shape, repeat=20)
        t_np = measure(lambda: np.load(npy, mmap_mode="r").shape, repeat=20)
        res["reopen"] = {"bigembed_open_and_map": t_open.to_json(),
                         "numpy_load_mmap": t_np.to_json(),
                         "shards": len(Dataset.open(ds_path).space().record["shards"])}
        log.info("reopen %d x %d: %.2f ms (np.load mmap %.2f ms)", args.n, args.dim,
                 t_open.median * 1e3, t_np.median * 1e3)

        def read_parquet():
            t = pq.read_table(pqf, columns=["emb"])
            return t.column("emb").combine_chunks().flatten().to_numpy().reshape(-1, args.dim)

        def read_dataset():
            return np.array(Dataset.open(ds_path).space().vectors)

        t_pq = measure(read_parquet, repeat=args.repeat)
        t_ds = measure(read_dataset, repeat=args.repeat)
        res["read_all_vectors"] = {
            "parquet": t_pq.to_json(), "arrow_ipc_dataset": t_ds.to_json(),
            "parquet_gb_per_s": gb / t_pq.median, "dataset_gb_per_s": gb / t_ds.median,
            "ratio_parquet_over_dataset_time": t_pq.median / t_ds.median,
            "note": "both materialise an (N, dim) array in memory from warm page cache",
        }
        log.info("read all vectors: parquet %.2f GB/s, dataset %.2f GB/s", gb / t_pq.median,
                 gb / t_ds.median)
        path = write_results(args.out, results_doc("ingest", res, params=vars(args)))
        log.info("wrote %s", path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
