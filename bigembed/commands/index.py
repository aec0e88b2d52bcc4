"""bigembed index DATASET [--space S] [--kind auto|flat|ivf|hnsw|ivfpq] [--metric l2|cosine|ip]"""

from __future__ import annotations


def register(sub) -> None:
    from ..search.backends import SEARCH

    p = sub.add_parser("index", help="build the FAISS index of a space (and its kNN graph)",
                       description="Build a FAISS index of a space, tuned to a target recall@10 "
                       "measured against exact search, and store it in the dataset. Repeating "
                       "the command reuses the stored index.")
    p.add_argument("dataset")
    p.add_argument("--space", help="space to index (default: the only one)")
    p.add_argument("--kind", default="auto", choices=["auto", "flat", "ivf", "hnsw", "ivfpq"],
                   help="auto: exact flat while fast enough, IVF above")
    p.add_argument("--metric", default="l2", choices=["l2", "cosine", "ip"])
    p.add_argument("--target-recall", type=float, default=None,
                   help="recall@10 to tune nprobe/efSearch to (approximate kinds; default 0.95)")
    p.add_argument("--backend", default="auto", choices=SEARCH.choices(), help=SEARCH.help())
    p.add_argument("--graph", type=int, metavar="K", default=None,
                   help="also compute and store the kNN graph with K neighbours")
    p.add_argument("--force", action="store_true", help="rebuild even if stored")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from dataclasses import asdict

    from ..search.graph import knn_graph
    from ..search.index import build_index
    from ._common import emit_json, say

    r = build_index(args.dataset, space=args.space, kind=args.kind, metric=args.metric,
                    target_recall=args.target_recall, backend=args.backend, force=args.force)
    out = {"index": asdict(r)}
    if args.graph is not None:
        extra = {} if args.target_recall is None else {"target_recall": args.target_recall}
        g = knn_graph(args.dataset, space=args.space, k=args.graph,
                      metric=args.metric, backend=args.backend, force=args.force, **extra)
        out["graph"] = {k: v for k, v in g.record.items() if k != "params"}
    if args.json:
        emit_json(out)
        return 0
    how = "found stored" if r.cached else f"built in {r.seconds:.1f}s"
    search = ", ".join(f"{k}={v}" for k, v in r.search.items())
    say(f"index {r.name}: {r.kind} ({r.metric}) over {r.rows} rows, {how}, "
        f"recall@10 {r.recall_at_10:.3f}{' at ' + search if search else ''} [{r.backend}]")
    if r.zero_vectors:
        say(f"note: {r.zero_vectors} all-zero vectors are at cosine distance 1 from everything")
    if args.graph is not None:
        g = out["graph"]
        say(f"graph {g['name']}: k={g['k']} {g['method']}, recall {g['recall']:.3f}, "
            f"{g['seconds']:.1f}s")
    return 0
