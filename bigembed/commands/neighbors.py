"""bigembed neighbors DATASET --id I [-k 10] [--space S] [--json]"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("neighbors", help="nearest neighbours of an instance",
                       description="The k nearest other instances in the high-dimensional "
                       "space, with distances (L2) and metadata.")
    p.add_argument("dataset")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--id", type=int)
    q.add_argument("--key")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--space")
    p.add_argument("--include-self", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..neighbors import neighbors
    from ._common import emit_json, table

    r = neighbors(args.dataset, space=args.space, id=args.id, key=args.key, k=args.k,
                  include_self=args.include_self)
    if args.json:
        emit_json(r.to_json())
        return 0
    q = r.query
    print(f"{len(r.neighbors)} nearest neighbours of id {q['id']}"
          f"{' (key ' + str(q['key']) + ')' if q.get('key') is not None else ''} "
          f"in space {r.space!r} ({r.metric}):")
    for n in r.notes:
        print(f"note: {n}")
    cols = [c for c in (r.neighbors[0] if r.neighbors else {}) if c not in ("id", "distance")]
    rows = [[n["id"], f"{n['distance']:.4g}"] + [n.get(c) for c in cols] for n in r.neighbors]
    print(table(rows, ["id", "distance"] + cols))
    return 0
