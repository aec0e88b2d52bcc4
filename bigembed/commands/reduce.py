"""bigembed reduce DATASET --method umap|tsne|pca [--space S] [--backend B]
[--pca-dims 50] [--seed N] [--metric l2|cosine] [--n-neighbors 15] [--perplexity 30] ..."""

from __future__ import annotations


def register(sub) -> None:
    from ..reduce.backends import LAYOUTS
    from ..reduce.run import METHODS, METRICS

    p = sub.add_parser("reduce", help="lay a space out in 2-D",
                       description="Compute a 2-D layout of a space (UMAP, t-SNE or PCA) and "
                       "store it in the dataset with its quality (kNN preservation per point, "
                       "trustworthiness, continuity). Content-keyed: repeating the command "
                       "reuses it.")
    p.add_argument("dataset")
    p.add_argument("--method", default="pca", choices=list(METHODS))
    p.add_argument("--space")
    p.add_argument("--backend", default="auto", choices=LAYOUTS.choices(), help=LAYOUTS.help())
    p.add_argument("--pca-dims", type=int, default=50,
                   help="PCA wider vectors to this many dims for the layout input (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--metric", default="l2", choices=list(METRICS),
                   help="high-dimensional distance of the kNN graph (default l2)")
    p.add_argument("--n-neighbors", type=int, default=15, help="UMAP neighbours (default 15)")
    p.add_argument("--min-dist", type=float, default=0.1, help="UMAP min_dist (default 0.1)")
    p.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity (default 30)")
    p.add_argument("--n-epochs", type=int, default=None,
                   help="UMAP epochs / t-SNE iterations after early exaggeration")
    p.add_argument("--fit-rows", type=int, default=None,
                   help="fit on a sample of this many rows and place the rest by their "
                   "neighbours (default: the backend's limit)")
    p.add_argument("--no-quality", action="store_true",
                   help="skip kNN preservation / trustworthiness / continuity")
    p.add_argument("--align-to", metavar="LAYOUT", default=None,
                   help="start from this stored layout's coordinates and align the result to "
                   "it (Procrustes), so points move only where their neighbourhoods change; "
                   "the per-point displacement is stored as a column")
    p.add_argument("--force", action="store_true", help="recompute even if stored")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..reduce.run import reduce
    from ._common import say

    r = reduce(args.dataset, method=args.method, space=args.space, backend=args.backend,
               pca_dims=args.pca_dims, seed=args.seed, force=args.force, metric=args.metric,
               n_neighbors=args.n_neighbors, min_dist=args.min_dist,
               perplexity=args.perplexity, n_epochs=args.n_epochs, fit_rows=args.fit_rows,
               quality=not args.no_quality, align_to=args.align_to)
    state = "up to date" if r.cached else f"computed in {r.seconds:.1f}s ({r.backend})"
    say(f"layout {r.name}: {r.rows} points, {state}")
    if r.quality:
        q = r.quality
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        say(f"quality (k={q.get('k')}): knn_preservation {fmt(q.get('knn_preservation'))}, "
            f"trustworthiness {fmt(q.get('trustworthiness'))}, "
            f"continuity {fmt(q.get('continuity'))}")
    return 0
