"""bigembed compare DATASET --a SPACE --b SPACE [-k 15] [--top 20] [--id N] [--json]
bigembed compare DATASET --spaces conv1,conv2,fc1 [-k 15] [--json]"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "compare", help="compare spaces point by point (layers, checkpoints, models)",
        description="Two spaces (--a, --b): per point, the overlap of its k nearest neighbours "
        "in A and in B, neighbours gained and lost, label agreement, and the points that move "
        "most. An ordered list (--spaces): per point, the share of its neighbours that carry "
        "its label in each space and the depth from which they agree with its prediction. "
        "Results are stored in the dataset and reused.")
    p.add_argument("dataset")
    p.add_argument("--a", metavar="SPACE", help="the first space")
    p.add_argument("--b", metavar="SPACE", help="the second space")
    p.add_argument("--spaces", metavar="S1,S2,...", help="an ordered list of spaces (trajectory)")
    p.add_argument("-k", type=int, default=15, help="neighbours per point (default 15)")
    p.add_argument("--metric", default="l2", choices=["l2", "cosine"])
    p.add_argument("--top", type=int, default=20, help="movers to list (default 20)")
    p.add_argument("--id", type=int, default=None,
                   help="also list the neighbours point ID gains and loses from A to B")
    p.add_argument("--force", action="store_true", help="recompute even if stored")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _print_pair(r, top: int) -> None:
    from ._common import table

    e = r.error_estimate
    state = "stored" if r.cached else f"computed in {r.seconds:.1f}s"
    check = (f"graphs vs exact on {e['sample']} rows: mean abs error {e['mean_abs']:.4f}"
             if e.get("sample") else "exact kNN graphs")
    print(f"{r.a} -> {r.b}: {r.n} points, k={r.k}, mean overlap {r.mean_overlap:.3f} "
          f"({check}); {state} as {r.artifact}")
    q = r.summary["overlap"]["quantiles"]
    print("overlap quantiles: " + ", ".join(f"{k} {v:.2f}" for k, v in q.items()))
    for key, title in (("by_label", "by label"), ("by_correct_in_a", f"by correctness in {r.a}"),
                       ("by_correct_in_b", f"by correctness in {r.b}"),
                       ("prediction_flips", "prediction flips"),
                       ("agreement", "neighbour majority matches prediction")):
        part = r.summary.get(key)
        if part:
            print(f"{title}: " + ", ".join(f"{k} {_fmt(v['mean'])} (n={v['n']})"
                                           for k, v in part.items()))
    movers = r.movers(top)
    if movers:
        cols = [c for c in movers[0] if c not in ("id", "overlap")][:6]
        print(f"{len(movers)} points that move most:")
        print(table([[m["id"], f"{m['overlap']:.3f}"] + [m.get(c) for c in cols]
                     for m in movers], ["id", "overlap"] + cols))


def run(args) -> int:
    from ..compare import compare, trajectory
    from ..errors import InputError
    from ._common import emit_json

    if args.spaces is not None:
        if args.a is not None or args.b is not None:
            raise InputError("give either --a and --b, or --spaces, not both")
        spaces = [s.strip() for s in args.spaces.split(",") if s.strip()]
        t = trajectory(args.dataset, spaces=spaces, k=args.k, metric=args.metric,
                       force=args.force)
        if args.json:
            emit_json(t.to_json())
            return 0
        j = t.to_json()
        print(f"trajectory over {', '.join(t.spaces)} (k={t.k}, target {t.target}): "
              f"{'stored' if t.cached else f'computed in {t.seconds:.1f}s'} as {t.artifact}")
        print("mean label agreement per space: " + ", ".join(
            f"{s} {v:.3f}" for s, v in zip(t.spaces, j["mean_agreement"])))
        names = {"-1": "never"} | {str(i): s for i, s in enumerate(t.spaces)}
        print("depth (first space from which neighbours agree with the prediction): " +
              ", ".join(f"{names[d]} {c}" for d, c in j["depth_counts"].items()))
        return 0
    if args.a is None or args.b is None:
        raise InputError("give --a SPACE and --b SPACE (or --spaces S1,S2,...)")
    r = compare(args.dataset, a=args.a, b=args.b, k=args.k, metric=args.metric,
                force=args.force)
    if args.json:
        out = r.to_json(args.top)
        if args.id is not None:
            out["point"] = r.point(args.id)
        emit_json(out)
        return 0
    _print_pair(r, args.top)
    if args.id is not None:
        pt = r.point(args.id)
        print(f"id {pt['id']}: overlap {pt['overlap']:.3f}; gains {pt['gained']}; "
              f"loses {pt['lost']}")
    return 0
