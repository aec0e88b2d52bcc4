"""bigembed cluster DATASET [--layout L | --space S] [--min-size M] [--json]"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "cluster", help="density clusters of the map (or of a space), named from the metadata",
        description="HDBSCAN over the k-nearest-neighbour graph of a layout's points "
        "(--layout, default the newest) or of a space's vectors (--space). The cluster of "
        "each point (-1: noise) is stored in the dataset and shown by `bigembed serve`; the "
        "table lists each cluster's size, name (dominant label and its share, the most "
        "distinctive terms of a text column, or its size and place), label mix, error rate, "
        "mean loss and mean confidence, highest error rate first.")
    p.add_argument("dataset")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--layout", default=None, help="a stored layout (default: the newest)")
    g.add_argument("--space", default=None, help="cluster this space's kNN graph instead")
    p.add_argument("--min-size", dest="min_size", type=int, default=None,
                   help="smallest cluster (default: 0.5%% of the points, 5..5000)")
    p.add_argument("--min-samples", dest="min_samples", type=int, default=None,
                   help="HDBSCAN's min_samples (default: min(10, --min-size))")
    p.add_argument("--force", action="store_true", help="recompute even if stored")
    p.add_argument("--json", action="store_true", help="the result as JSON")
    p.set_defaults(func=run)


def _fmt(v, pct=False) -> str:
    import math

    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def run(args) -> int:
    from ..analysis import cluster
    from ._common import emit_json, say, table, terminal_width

    r = cluster(args.dataset, layout=args.layout, space=args.space, min_size=args.min_size,
                min_samples=args.min_samples, force=args.force)
    if args.json:
        emit_json(r.to_json())
        return 0
    what = f"layout {r.layout}" if r.layout else f"the kNN graph of space {r.space}"
    state = "stored" if r.cached else f"computed in {r.seconds:.1f}s"
    say(f"{r.n_clusters} clusters of {what} (min size {r.min_size}); {r.noise} noise points; "
        f"{state} as {r.artifact}")
    t = r.table.sort_values(["error_rate", "size"], ascending=[False, False],
                            na_position="last", kind="stable")
    rows = [[c.cluster, c.size, c.name, c.label_mix, _fmt(c.error_rate, True),
             _fmt(c.mean_loss), _fmt(c.mean_confidence)] for c in t.itertuples()]
    print(table(rows, ["id", "size", "name", "label mix", "errors", "loss", "confidence"],
                width=terminal_width()))
    return 0
