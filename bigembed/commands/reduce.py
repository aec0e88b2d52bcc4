"""bigembed reduce DATASET --method pca [--space S] [--seed N]"""

from __future__ import annotations


def register(sub) -> None:
    from ..reduce import METHODS

    p = sub.add_parser("reduce", help="lay a space out in 2-D",
                       description="Compute a 2-D layout of a space and store it in the "
                       "dataset (content-keyed: repeating the command reuses it).")
    p.add_argument("dataset")
    p.add_argument("--method", default="pca", choices=list(METHODS))
    p.add_argument("--space")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="recompute even if stored")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..reduce import reduce

    r = reduce(args.dataset, method=args.method, space=args.space, seed=args.seed,
               force=args.force)
    state = "up to date" if r.cached else f"computed in {r.seconds:.1f}s ({r.backend})"
    print(f"layout {r.name}: {r.rows} points, {state}")
    return 0
