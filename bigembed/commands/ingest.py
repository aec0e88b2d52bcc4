"""bigembed ingest INPUT... --out DATASET [--space NAME] [--meta FILE] [--key COLUMN]"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "ingest", help="import vectors from .npy/.npz/.parquet/.arrow/.feather/.csv",
        description="Import vectors (files concatenated in order) as one space of a dataset. "
        "Creates DATASET, or adds the space to an existing one. Table files: a list column "
        "holds the vectors, else every numeric column except key/metadata columns.")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--out", required=True, metavar="DATASET")
    p.add_argument("--space", default="default", help="space name (default: default)")
    p.add_argument("--meta", metavar="FILE", help="metadata table (.parquet/.arrow/.csv)")
    p.add_argument("--key", metavar="COLUMN",
                   help="key column: joins --meta by it when the input has it too")
    p.add_argument("--column", help="vector column (list), or comma-separated numeric columns")
    p.add_argument("--array", help="array name inside an .npz")
    p.add_argument("--dtype", choices=["float32", "float16"], help="storage dtype")
    p.add_argument("--drop-invalid", action="store_true",
                   help="leave out rows holding NaN/Inf (recorded in the manifest)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing space")
    p.add_argument("--allow-duplicate-keys", action="store_true",
                   help="keep keys that occur more than once (a lookup by such a key uses its "
                   "first instance and says so)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..ingest.run import ingest
    from ._common import human_bytes

    r = ingest(args.inputs, out=args.out, space=args.space, meta=args.meta, key=args.key,
               column=args.column, array=args.array, dtype=args.dtype,
               drop_invalid=args.drop_invalid, overwrite=args.overwrite,
               allow_duplicate_keys=args.allow_duplicate_keys)
    gbps = r.bytes / max(r.seconds, 1e-9) / 1e9
    print(f"wrote space {r.space!r} of {r.path}: {r.rows} rows x {r.dim} ({r.dtype}), "
          f"{r.shards} shards, {human_bytes(r.bytes)} in {r.seconds:.1f}s ({gbps:.2f} GB/s)")
    if r.dropped:
        print(f"dropped {r.dropped} rows holding NaN/Inf (first input rows: {r.dropped_rows})")
    return 0
