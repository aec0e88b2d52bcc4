"""bigembed render DATASET --out view.png [--color-by COLUMN]"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("render", help="rasterize a layout to a PNG with Datashader")
    p.add_argument("dataset")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--color-by", help="metadata or layout column (default: density)")
    p.add_argument("--layout", help="layout name (default: newest)")
    p.add_argument("--space")
    p.add_argument("--method")
    p.add_argument("--width", type=int, default=800)
    p.add_argument("--height", type=int, default=800)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..render import render

    out = render(args.dataset, out=args.out, layout=args.layout, space=args.space,
                 method=args.method, color_by=args.color_by, width=args.width,
                 height=args.height)
    print(f"wrote {out}")
    return 0
