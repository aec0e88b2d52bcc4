"""bigembed render DATASET --out view.png [--color-by COLUMN]"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("render", help="render a layout to a PNG: the map's frame of the whole "
                                      "layout (the explorer's renderer)")
    p.add_argument("dataset")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--color-by", help="metadata or layout column (default: density)")
    p.add_argument("--layout", help="layout name (default: newest)")
    p.add_argument("--space")
    p.add_argument("--method")
    p.add_argument("--width", type=int, default=800)
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--background", default="white",
                   help="colour under the frame (name or #rrggbb; 'none': keep transparency)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..view.render import render
    from ._common import say

    bg = None if str(args.background).lower() in ("none", "transparent") else args.background
    r = render(args.dataset, out=args.out, layout=args.layout, space=args.space,
               method=args.method, color_by=args.color_by, width=args.width,
               height=args.height, background=bg)
    leg = r.legend
    if leg["kind"] == "categorical":
        what = ", ".join(f"{it['name']}={it['color']}" for it in leg["items"][:12])
        what += " …" if len(leg["items"]) > 12 else ""
    elif leg["kind"] == "mean":
        what = f"{leg['cmap']} over {leg['span'][0]:.4g}..{leg['span'][1]:.4g}"
    else:
        what = f"{leg['cmap']}, histogram-equalised"
    say(f"wrote {r.path} ({r.layout}, colour by {r.color_by}: {what})")
    return 0
