"""bigembed demo [--out DIR]"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the built-in demo end to end",
                       description="Extract a digits CNN's activations, lay them out, index, "
                       "render and look up neighbours, then serve the explorer.")
    p.add_argument("--out", default="demo-data", help="directory for the demo (default: demo-data)")
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-serve", action="store_true",
                   help="stop after building (do not start the explorer)")
    p.add_argument("--port", type=int, default=5006)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..demo import run_demo

    result = run_demo(args.out, n=args.n, seed=args.seed, say=print)
    if args.no_serve:
        return 0
    from ..server.app import serve

    def ready(url):
        print(f"explorer at {url}  (open it in a browser; Ctrl-C to stop)", flush=True)

    try:
        serve(result["dataset"], port=args.port, on_ready=ready)
    except KeyboardInterrupt:
        pass
    return 0
