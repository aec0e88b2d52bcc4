"""bigembed bench [--sizes 1e4,1e5,1e6] [--dim 128] [--stages ...] [--compare]
[--device auto|cpu|cuda] [--budget 15m] [--out DIR]"""

from __future__ import annotations

import sys


def register(sub) -> None:
    from ..bench import STAGES

    p = sub.add_parser(
        "bench", help="scalability benchmarks of every stage, peers side by side",
        description="Run each stage on synthetic data at each size: warm (first run timed "
        "apart), repeated (median and spread), with peak host and GPU memory. --compare runs "
        "the plain libraries (FAISS, pynndescent, umap-learn, openTSNE, Datashader) on the "
        "same data in the same run. Writes OUT/NAME.json after every measurement (Ctrl-C "
        "keeps what was measured), prints a table and writes OUT/NAME.html.")
    p.add_argument("--sizes", default="1e4,3e4,1e5,3e5,1e6",
                   help="row counts, comma-separated (default: 1e4,3e4,1e5,3e5,1e6; sizes "
                   "the budget cannot fit are skipped)")
    p.add_argument("--dim", type=int, default=128, help="vector dimension (default 128)")
    p.add_argument("--stages", default=",".join(STAGES),
                   help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--compare", action="store_true",
                   help="also run what a user would otherwise call, on the same data")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--budget", default="13m",
                   help="time budget (900, 90s, 15m, 1.5h; 'none' for no limit): sizes the "
                   "fitted scaling predicts would overrun it are skipped (default 13m)")
    p.add_argument("--out", default="bench-results", help="output directory")
    p.add_argument("--name", default="bench", help="file name stem of the JSON/HTML")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per measurement")
    p.add_argument("--warmup", type=int, default=1, help="warm-up runs, timed apart")
    p.add_argument("-k", type=int, default=15, help="neighbours for knn-graph and quality")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reduce-method", default="pca", help="method of the reduce stage")
    p.add_argument("--peer-max-n", action="append", default=[], metavar="PEER=N",
                   help="largest N a slow peer is run at (e.g. umap-learn=100000)")
    p.add_argument("--no-html", action="store_true", help="skip the HTML report")
    p.add_argument("--html-resources", default="inline", choices=["inline", "cdn"],
                   help="inline Bokeh JS (standalone file, default) or load it from the CDN")
    p.add_argument("--json", action="store_true", help="print the JSON document, not a table")
    p.set_defaults(func=run)


def _peer_caps(items) -> dict:
    from ..errors import InputError

    caps = {}
    for it in items:
        name, sep, val = it.partition("=")
        try:
            caps[name.strip()] = int(float(val))
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise InputError(f"--peer-max-n must look like PEER=N (e.g. umap-learn=100000), "
                             f"got {it!r}")
    return caps


def run(args) -> int:
    from ..bench import run_bench
    from ..bench.report import text_report
    from ._common import emit_json, say

    budget = None if str(args.budget).lower() in ("none", "0", "off", "") else args.budget
    r = run_bench(sizes=args.sizes, dim=args.dim, stages=args.stages, compare=args.compare,
                  device=args.device, budget=budget, out=args.out, name=args.name,
                  repeat=args.repeat, warmup=args.warmup, k=args.k, seed=args.seed,
                  reduce_method=args.reduce_method, peer_max_n=_peer_caps(args.peer_max_n),
                  html=not args.no_html, html_resources=args.html_resources)
    if args.json:
        emit_json(r.doc)
    else:
        print(text_report(r.doc))
        say(f"wrote {r.json_path}" + (f" and {r.html_path}" if r.html_path else ""))
    if r.interrupted:
        print("bigembed bench: interrupted; results so far are kept", file=sys.stderr)
        return 130
    return 0
