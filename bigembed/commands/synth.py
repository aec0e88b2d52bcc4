"""bigembed synth OUT --n N --dim D [--clusters C] [--error-rate R] [--seed S]"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("synth", help="write a synthetic labelled mixture dataset",
                       description="Write a synthetic labelled Gaussian mixture (label, "
                       "prediction wrong at --error-rate, confidence, loss), streamed to shards.")
    p.add_argument("out", help="dataset directory to create")
    p.add_argument("--n", type=int, required=True, help="number of instances")
    p.add_argument("--dim", type=int, required=True, help="vector dimension")
    p.add_argument("--clusters", type=int, default=10)
    p.add_argument("--error-rate", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--space", default="default", help="name of the space (default: default)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..ingest.synth import synth
    from ._common import say

    r = synth(args.out, n=args.n, dim=args.dim, clusters=args.clusters,
              error_rate=args.error_rate, seed=args.seed, space=args.space, dtype=args.dtype,
              overwrite=args.overwrite)
    say(f"wrote {r.path}: {r.rows} rows x {r.dim} dims, {r.clusters} clusters, "
        f"error rate {r.error_rate:g} in {r.seconds:.1f}s")
    return 0
