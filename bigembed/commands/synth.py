"""bigembed synth OUT --n N --dim D [--clusters C] [--error-rate R] [--seed S]
       bigembed synth OUT --n N --layout-only [--clusters C] [--seed S]"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("synth", help="write a synthetic labelled mixture dataset",
                       description="Write a synthetic labelled Gaussian mixture (label, "
                       "prediction wrong at --error-rate, confidence, loss), streamed to shards.")
    p.add_argument("out", help="dataset directory to create")
    p.add_argument("--n", type=int, required=True, help="number of instances")
    p.add_argument("--dim", type=int, help="vector dimension (not with --layout-only)")
    p.add_argument("--layout-only", action="store_true",
                   help="no vectors: a 2-D layout of --n points (blobs + 1%% background) with "
                   "a label, streamed (a billion points in bounded memory)")
    p.add_argument("--clusters", type=int, default=None,
                   help="clusters (default 10; blobs with --layout-only: 40)")
    p.add_argument("--error-rate", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--space", default="default", help="name of the space (default: default)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import InputError
    from ..ingest.synth import synth, synth_layout
    from ._common import say

    if args.layout_only:
        if args.dim is not None:
            raise InputError("--dim: a --layout-only dataset has no vectors; drop --dim")
        r = synth_layout(args.out, n=args.n, clusters=args.clusters or 40, seed=args.seed,
                         overwrite=args.overwrite)
        say(f"wrote {r.path}: {r.rows} points of a 2-D layout (no vectors), {r.clusters} "
            f"blobs in {r.seconds:.1f}s")
        return 0
    if args.dim is None:
        raise InputError("--dim is required (or --layout-only for a dataset without vectors)")
    r = synth(args.out, n=args.n, dim=args.dim, clusters=args.clusters or 10,
              error_rate=args.error_rate, seed=args.seed, space=args.space, dtype=args.dtype,
              overwrite=args.overwrite)
    say(f"wrote {r.path}: {r.rows} rows x {r.dim} dims, {r.clusters} clusters, "
        f"error rate {r.error_rate:g} in {r.seconds:.1f}s")
    return 0
