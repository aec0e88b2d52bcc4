"""bigembed info DATASET [--json] [--no-verify]"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("info", help="describe a dataset and validate it",
                       description="Rows, spaces, dims, dtypes, sizes, derived artifacts, "
                       "orphans left by killed writers (`bigembed gc` removes them), and a "
                       "validation report (every checksum recomputed unless --no-verify). "
                       "Exits 2 when validation fails.")
    p.add_argument("dataset")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-verify", action="store_true", help="skip checksums (structure only)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..dataset.format import ARTIFACT_KINDS
    from ..dataset.gc import find_orphans
    from ..dataset.reader import Dataset
    from ..errors import DatasetError
    from ._common import emit_json, human_bytes, table

    problems: list[str] = []
    if not (Path(args.dataset) / "manifest.json").is_file():
        Dataset.open(args.dataset)  # not a dataset at all: raises the one-line error
    try:
        ds = Dataset.open(args.dataset, verify="fast")
    except DatasetError as e:
        # Structure is broken: report it as the validation result (and fail).
        ds = None
        problems.append(str(e))
    if ds is not None and not args.no_verify:
        problems += ds.verify(progress=None)
    if ds is None:
        if args.json:
            emit_json({"path": args.dataset, "valid": False, "problems": problems})
        else:
            print(f"{args.dataset}: INVALID")
            for p in problems:
                print(f"  - {p}")
        return 2
    info = ds.info()
    orphans = find_orphans(ds.path, ds.manifest)
    info["orphans"] = [{"path": o.path, "bytes": o.bytes, "reason": o.reason}
                       for o in orphans if not o.live]
    info["being_written"] = [{"path": o.path, "bytes": o.bytes, "reason": o.reason}
                             for o in orphans if o.live]
    info["valid"] = not problems
    info["verified"] = "structure" if args.no_verify else "checksums"
    info["problems"] = problems
    if args.json:
        emit_json(info)
        return 0 if not problems else 2
    print(f"dataset {info['path']}: {info['rows']} rows, format v{info['format_version']}")
    rows = [(n, s["dim"], s["dtype"], s["rows"], s["shards"], human_bytes(s["bytes"]),
             s["status"] + (f", {s['dropped']['count']} dropped" if s.get("dropped") else ""))
            for n, s in info["spaces"].items()]
    print(table(rows, ["space", "dim", "dtype", "rows", "shards", "size", "status"]))
    if info.get("meta"):
        print(f"meta: {', '.join(info['meta'].get('columns', []))}")
    for kind in ARTIFACT_KINDS:
        items = info.get(kind) or {}
        if items:
            print(f"{kind}:")
            for name, rec in items.items():
                extra = ", ".join(f"{k}={v}" for k, v in rec.items()
                                  if k in ("backend", "kind", "metric", "k", "recall_at_10",
                                           "seconds", "quality", "a", "b", "spaces",
                                           "mean_overlap"))
                print(f"  {name}  ({human_bytes(rec.get('bytes', 0))}{', ' + extra if extra else ''})")
    if info["orphans"]:
        total = sum(o["bytes"] for o in info["orphans"])
        print(f"orphans: {len(info['orphans'])} ({human_bytes(total)}) left by killed writers; "
              f"`bigembed gc {args.dataset}` removes them")
        for o in info["orphans"]:
            print(f"  {o['path']}  ({human_bytes(o['bytes'])}, {o['reason']})")
    for o in info["being_written"]:
        print(f"being written: {o['path']} ({o['reason']})")
    print(f"validation ({info['verified']}): " + ("OK" if not problems else "FAILED"))
    for p in problems:
        print(f"  - {p}")
    return 0 if not problems else 2
