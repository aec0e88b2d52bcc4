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
    p.add_argument("--layout", metavar="X,Y",
                   help="two columns of the input table or of --meta holding a 2-D layout "
                   "made elsewhere: stored as a layout of the space (method imported) with "
                   "its quality, for render and serve")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..ingest.run import ingest
    from ._common import human_bytes, human_rate, say

    r = ingest(args.inputs, out=args.out, space=args.space, meta=args.meta, key=args.key,
               column=args.column, array=args.array, dtype=args.dtype,
               drop_invalid=args.drop_invalid, overwrite=args.overwrite,
               allow_duplicate_keys=args.allow_duplicate_keys, layout=args.layout)
    say(f"wrote space {r.space!r} of {r.path}: {r.rows} rows x {r.dim} ({r.dtype}), "
        f"{r.shards} shards, {human_bytes(r.bytes)} in {r.seconds:.1f}s "
        f"({human_rate(r.bytes, r.seconds)})")
    if r.layout is not None:
        q = (r.layout.quality or {}).get("knn_preservation")
        say(f"layout {r.layout.name}: imported from columns {args.layout}"
            f"{f', kNN preservation {q:.3f}' if q is not None else ''}")
    if r.dropped:
        say(f"dropped {r.dropped} rows holding NaN/Inf (first input rows: {r.dropped_rows})")
    return 0
