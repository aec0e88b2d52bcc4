"""bigembed serve DATASET [--port 5006] [--address 127.0.0.1] [--allow-origin O] [--secret S]
[--media-root DIR] [--session-lifetime SECONDS] [--compare A,B [--compare-path S1,S2,...]]"""

from __future__ import annotations

import os
import sys


def register(sub) -> None:
    from ..view.raster import RASTER

    p = sub.add_parser("serve", help="serve the zoomable map of a dataset in the browser",
                       description="Serve a Bokeh view of a dataset's layouts: rendered on the "
                       "server (Datashader), with hover, tap (true neighbours), selection, "
                       "search, and /api/neighbors?id=&k= (JSON). Binds 127.0.0.1 by default.")
    p.add_argument("dataset")
    p.add_argument("--port", type=int, default=5006)
    p.add_argument("--address", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; others need --allow-origin)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="exact origin (host:port or http://host:port) allowed to open "
                   "sessions; repeat for more")
    p.add_argument("--secret", default=os.environ.get("BIGEMBED_SECRET"),
                   help="turn on signed sessions with this secret (>= 32 characters; or set "
                   "BIGEMBED_SECRET)")
    p.add_argument("--backend", default="auto", choices=RASTER.choices(),
                   help="frame binning: " + RASTER.help())
    p.add_argument("--media-root", default=None, metavar="DIR",
                   help="directory the image column's paths are read from (default: the "
                   "dataset directory); no file outside it is opened")
    p.add_argument("--session-lifetime", type=float, default=60.0, metavar="SECONDS",
                   help="discard a session no browser holds after this long (default 60)")
    p.add_argument("--compare", default=None, metavar="A,B",
                   help="open on two spaces side by side (linked maps, colour by change, "
                   "movers); any page URL can ask for one with ?cmp=A,B")
    p.add_argument("--compare-path", default=None, metavar="S1,S2,...",
                   help="the ordered spaces the comparison's slider walks through (default: "
                   "every space with a layout, in the dataset's order)")
    p.add_argument("--show", action="store_true", help="open a browser tab")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..server.app import is_loopback, serve

    def ready(url):
        if not is_loopback(args.address):
            print(f"warning: serving on {args.address}, reachable beyond this machine; "
                  f"allowed origins: {', '.join(args.allow_origin)}", file=sys.stderr)
        print(f"bigembed serve: serving {args.dataset} at {url}  (Ctrl-C to stop)", flush=True)

    try:
        serve(args.dataset, port=args.port, address=args.address,
              allow_origin=tuple(args.allow_origin), secret=args.secret, show=args.show,
              backend=args.backend, on_ready=ready, media_root=args.media_root,
              session_lifetime_s=args.session_lifetime, compare=args.compare,
              compare_path=args.compare_path)
    except KeyboardInterrupt:
        return 0
    return 0
