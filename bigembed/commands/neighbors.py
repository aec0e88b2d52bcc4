"""bigembed neighbors DATASET (--id I | --key K | --vector F.npy | --ids-file F) [-k 10]"""

from __future__ import annotations


def register(sub) -> None:
    from ..search.backends import SEARCH

    p = sub.add_parser("neighbors", help="nearest neighbours of an instance or a vector",
                       description="The k nearest instances in the high-dimensional space "
                       "(the instance itself excluded), with distances and metadata. Uses the "
                       "stored index of the space, building one when there is none. The table "
                       "fits the terminal's width; --json gives every value in full.")
    p.add_argument("dataset")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--id", type=int, help="query by row id")
    q.add_argument("--key", help="query by the key column of the metadata")
    q.add_argument("--vector", metavar="FILE.npy", help="query by a vector of shape (d,)")
    q.add_argument("--ids-file", metavar="FILE",
                   help="many ids: .npy, a JSON list, or text with one id a line")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--space")
    p.add_argument("--metric", choices=["l2", "cosine", "ip"], default=None,
                   help="use (or build) an index with this metric (default: the stored one, "
                   "else l2)")
    p.add_argument("--backend", default="auto", choices=SEARCH.choices(), help=SEARCH.help())
    p.add_argument("--include-self", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _print(r) -> None:
    from ._common import table, terminal_width

    q = r.query
    what = "the query vector" if q.get("vector") else (
        f"id {q['id']}" + (f" (key {q['key']})" if q.get("key") is not None else ""))
    print(f"{len(r.neighbors)} nearest neighbours of {what} in space {r.space!r} "
          f"({r.metric}):")
    for n in r.notes:
        print(f"note: {n}")
    cols = [c for c in (r.neighbors[0] if r.neighbors else {}) if c not in ("id", "distance")]
    rows = [[n["id"], f"{n['distance']:.4g}"] + [n.get(c) for c in cols] for n in r.neighbors]
    # Cells are cut to the terminal's width (a text column can hold whole documents);
    # --json keeps everything.
    print(table(rows, ["id", "distance"] + cols, width=terminal_width()))


def run(args) -> int:
    from ..search.lookup import neighbors, neighbors_many, read_ids_file
    from ._common import emit_json

    if args.ids_file is not None:
        ids = read_ids_file(args.ids_file)
        rs = neighbors_many(args.dataset, ids=ids, space=args.space, k=args.k,
                            include_self=args.include_self, metric=args.metric,
                            backend=args.backend)
        if args.json:
            emit_json([r.to_json() for r in rs])
            return 0
        for i, r in enumerate(rs):
            if i:
                print()
            _print(r)
        return 0
    r = neighbors(args.dataset, space=args.space, id=args.id, key=args.key, vector=args.vector,
                  k=args.k, include_self=args.include_self, metric=args.metric,
                  backend=args.backend)
    if args.json:
        emit_json(r.to_json())
        return 0
    _print(r)
    return 0
