"""``bigembed render`` (the map's frame renderer) vs the plain Datashader code it replaced.

    python -m benchmarks.bench_render [--sizes 1000000 4000000] [--out benchmarks/results/render.json]

Same run, same dataset on disk, same 800 x 800 full view of the layout. ``bigembed`` is
:func:`bigembed.view.render.render` end to end, as the CLI calls it: open the dataset, load the
layout, render the frame (every point, ``mode="exact"``: no Z-order sort is needed), lay it
on white, write the PNG. ``mode auto`` is the same with the map's pyramid for the full view
(built on each call, as a one-off CLI run would). ``datashader`` is what a user would otherwise write (and what
``bigembed render`` did before): load the layout, a pandas dataframe, ``Canvas.points`` over
every point, ``tf.shade`` + ``tf.spread`` + ``tf.set_background``, write the PNG. Quality side
by side: the pixels each image draws on, and the overlap (IoU) of those pixel sets.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bigembed.bench.harness import measure, results_doc, write_results

from .bench_view import make_layout

log = logging.getLogger("bench_render")

W = H = 800


def make_dataset(path: Path, n: int) -> str:
    """A dataset of ``n`` rows (tiny vectors, labels) with a blob layout; returns its name."""
    from bigembed.dataset.layouts import save_layout
    from bigembed.dataset.reader import Dataset
    from bigembed.ingest.synth import synth

    synth(path, n=n, dim=2, clusters=10, seed=0, progress=False)
    x, y, _ = make_layout(n, seed=0)
    ds = Dataset.open(path)
    return save_layout(ds, "default.bench.0", np.stack([x, y], 1),
                       {"space": "default", "method": "bench", "params": {}})


def plain_datashader(path: Path, out: Path, color_by: str | None) -> None:
    """The previous ``bigembed render``: Datashader on the whole dataframe, white background."""
    import colorcet as cc
    import datashader as dsh
    import datashader.transfer_functions as tf
    import pandas as pd

    from bigembed.dataset.layouts import load_layout
    from bigembed.dataset.reader import Dataset

    ds = Dataset.open(path)
    lay = load_layout(ds)
    df = pd.DataFrame({"x": lay.x, "y": lay.y})
    pad = lambda v: (float(v.min()) - 0.02 * float(np.ptp(v)),  # noqa: E731
                     float(v.max()) + 0.02 * float(np.ptp(v)))
    cv = dsh.Canvas(plot_width=W, plot_height=H, x_range=pad(lay.x), y_range=pad(lay.y))
    if color_by is None:
        img = tf.shade(cv.points(df, "x", "y", agg=dsh.count()), cmap=cc.fire[40:], how="eq_hist")
    else:
        df[color_by] = ds.meta[color_by].astype(str).astype("category").to_numpy()
        df[color_by] = df[color_by].astype("category")
        keys = list(df[color_by].cat.categories)
        colors = {k: cc.b_glasbey_category10[i % 256] for i, k in enumerate(keys)}
        img = tf.shade(cv.points(df, "x", "y", agg=dsh.count_cat(color_by)), color_key=colors,
                       how="eq_hist")
    img = tf.set_background(tf.spread(img, px=1, how="over"), "white")
    img.to_pil().save(out, format="PNG")


def drawn(png: Path) -> np.ndarray:
    from PIL import Image

    a = np.asarray(Image.open(png).convert("RGB"))
    return (a != 255).any(-1)


def bench_size(n: int, work: Path, repeat: int) -> dict:
    from bigembed.view.render import render

    path = work / f"ds-{n}"
    t0 = time.perf_counter()
    name = make_dataset(path, n)
    log.info("n=%d: dataset made in %.1fs", n, time.perf_counter() - t0)
    out = {"n": n, "layout": name, "colourings": {}}
    for color in (None, "label"):
        cname = color or "density"
        a, b = work / "bigembed.png", work / "datashader.png"
        tb = measure(lambda: render(path, out=a, color_by=color, width=W, height=H),
                     repeat=repeat, warmup=1)
        tauto = measure(lambda: render(path, out=a, color_by=color, width=W, height=H,
                                       mode="auto"), repeat=repeat, warmup=1)
        td = measure(lambda: plain_datashader(path, b, color), repeat=repeat, warmup=1)
        ma, mb = drawn(a), drawn(b)
        res = {"bigembed_render": tb.to_json(), "bigembed_render_mode_auto": tauto.to_json(),
               "datashader_full_dataframe": td.to_json(),
               "speedup_datashader_over_bigembed": td.median / tb.median,
               "quality": {"bigembed_pixels_drawn": int(ma.sum()),
                           "datashader_pixels_drawn": int(mb.sum()),
                           "drawn_pixels_iou": float((ma & mb).sum() / max(1, (ma | mb).sum()))}}
        out["colourings"][cname] = res
        log.info("n=%d %s: bigembed render %.2fs (mode auto %.2fs), datashader %.2fs (%.2fx); "
                 "pixels drawn %d vs %d, IoU %.3f", n, cname, tb.median, tauto.median, td.median,
                 td.median / tb.median,
                 ma.sum(), mb.sum(), res["quality"]["drawn_pixels_iou"])
    shutil.rmtree(path, ignore_errors=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/render.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="bench-render-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        res = {"width": W, "height": H, "sizes": {str(n): bench_size(n, work, args.repeat)
                                                  for n in args.sizes}}
    path = write_results(args.out, results_doc("render", res, params=vars(args)))
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
