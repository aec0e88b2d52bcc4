"""bigembed gc DATASET [--dry-run] [--json]"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("gc", help="remove orphans: files killed writers left behind",
                       description="Remove what the manifest does not list: temporaries of "
                       "killed writers, unlisted space directories, shards, layouts, indexes, "
                       "graphs and metadata files. Files a running command is still writing "
                       "are kept. Runs under the dataset's writer lock (every writer also "
                       "collects orphans when it starts).")
    p.add_argument("dataset")
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..dataset.gc import collect_garbage
    from ..dataset.reader import Dataset
    from ._common import emit_json, human_bytes

    Dataset.open(args.dataset, verify="none")  # not a dataset: the one-line error
    r = collect_garbage(args.dataset, dry_run=args.dry_run)
    if args.json:
        emit_json(r.to_json())
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for o in r.removed:
        print(f"{verb} {o.path} ({human_bytes(o.bytes)}): {o.reason}")
    for o in r.live:
        print(f"kept {o.path}: {o.reason}")
    print(f"gc {args.dataset}: {verb} {len(r.removed)} orphans, {human_bytes(r.bytes)}")
    return 0
