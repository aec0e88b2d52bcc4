"""The comparison page's server work: two maps' frames (coloured by change) with a selection
overlay, and the linked highlight of a selection, against Datashader on the full dataframes.

    python -m benchmarks.bench_compare_view [--n 10000000] [--selection 100000]
        [--out benchmarks/results/compare_view.json]

Two layouts of ``--n`` points (map A: 40 blobs + background, as ``bench_view``; map B: A with
every point jittered and 5% moved to another blob, as an aligned layout of another space),
each a :class:`~bigembed.view.frames.FrameRenderer` with a per-point neighbourhood overlap
registered as a change colouring (:meth:`add_column`, a mean per pixel). A box on A holding
``--selection`` rows is the selection. Per map and per view (the full extent and zooms 4x ..
4096x on data, several positions): the frame (overlap colouring) plus the overlay of the
selected rows (:func:`bigembed.view.overlay.overlay_mask` + its 1-bit PNG) — what the page asks the
server for after a pan or zoom; p95 over all views. The linked highlight is what the server
does between the box arriving from map A and map B's overlay being ready: the box query on
A's spatial index, the rows' places in B, the overlay PNG. The user's alternative,
measured in the same run on the same data: Datashader's ``Canvas.points`` over the whole
dataframe (mean of the overlap, shaded the same) for the frame, and over the selected rows'
dataframe for the overlay.
"""

from __future__ import annotations

import argparse
import io
import logging
import time

import numpy as np

from benchmarks.bench_view import W, ZOOMS, make_layout, p95
from bigembed.bench.harness import measure, results_doc, write_results

log = logging.getLogger("bench_compare_view")


def moved_layout(x, y, seed: int = 1):
    """B: A jittered by a little, 5% of the points moved onto other points' places."""
    rng = np.random.default_rng(seed)
    n = len(x)
    xb = x + rng.normal(0, 0.2, n).astype(np.float32)
    yb = y + rng.normal(0, 0.2, n).astype(np.float32)
    m = rng.choice(n, n // 20, replace=False)
    dst = rng.choice(n, len(m), replace=False)
    xb[m], yb[m] = x[dst], y[dst]
    overlap = np.clip(rng.beta(8, 2, n), 0, 1).astype(np.float32)
    overlap[m] = rng.uniform(0, 0.3, len(m)).astype(np.float32)
    return xb, yb, overlap


def box_with(x, y, cx, cy, rows: int):
    """A square box centred on (cx, cy) holding about ``rows`` points."""
    d = np.maximum(np.abs(x - cx), np.abs(y - cy))
    hw = float(np.partition(d, rows - 1)[rows - 1])
    return (cx - hw, cx + hw), (cy - hw, cy + hw)


def ds_mean_frame(df, x_range, y_range, cmap, span):
    import datashader as dsh
    import datashader.transfer_functions as tf

    cv = dsh.Canvas(plot_width=W, plot_height=W, x_range=x_range, y_range=y_range)
    agg = cv.points(df, "x", "y", agg=dsh.mean("v"))
    img = tf.dynspread(tf.shade(agg, cmap=cmap, how="linear", span=span), threshold=0.5,
                       max_px=2)
    buf = io.BytesIO()
    img.to_pil().save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def ds_overlay(df, x_range, y_range):
    import datashader as dsh
    import datashader.transfer_functions as tf

    cv = dsh.Canvas(plot_width=W, plot_height=W, x_range=x_range, y_range=y_range)
    img = tf.spread(tf.shade(cv.points(df, "x", "y"), cmap=["#00c8ff", "#00c8ff"]), px=1)
    buf = io.BytesIO()
    img.to_pil().save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def run(n: int, selection: int, positions: int, repeat: int, seed: int = 0) -> dict:
    import colorcet as cc
    import pandas as pd

    from bigembed.view.frames import FrameRenderer
    from bigembed.view.overlay import overlay_mask, overlay_png

    xa, ya, _ = make_layout(n, seed)
    xb, yb, overlap = moved_layout(xa, ya, seed + 1)
    t0 = time.perf_counter()
    maps = {"a": FrameRenderer.from_arrays(xa, ya), "b": FrameRenderer.from_arrays(xb, yb)}
    build = time.perf_counter() - t0
    for r in maps.values():
        r.add_column("change:overlap", overlap, span=(0.0, 1.0))
        r.warm_up(W, W, color_by="change:overlap")
    rng = np.random.default_rng(seed + 2)
    c = int(rng.integers(n))
    box = box_with(xa, ya, float(xa[c]), float(ya[c]), selection)
    ra = maps["a"]

    def select_ids():
        return np.sort(ra.index.ids[ra.index.box(*box)])

    ids = select_ids()
    log.info("n=%d: two renderers in %.1fs; selection of %d rows", n, build, len(ids))

    def overlay(r, ids, xr_, yr_):
        xy = r.xy(ids)
        mask, _ = overlay_mask(xy[:, 0], xy[:, 1], x_range=xr_, y_range=yr_, width=W, height=W)
        return overlay_png(mask)

    (fx0, fx1), (fy0, fy1) = ra.default_range()
    views = [(1, (fx0, fx1), (fy0, fy1))]
    centres = rng.choice(ids, size=positions * (len(ZOOMS) - 1))  # views over the selection
    i = 0
    for z in ZOOMS[1:]:
        hw, hh = (fx1 - fx0) / z / 2, (fy1 - fy0) / z / 2
        for _ in range(positions):
            cx, cy = float(xa[centres[i]]), float(ya[centres[i]])
            i += 1
            views.append((z, (cx - hw, cx + hw), (cy - hh, cy + hh)))
    out = {"n": n, "selection_rows": int(len(ids)), "build_two_renderers_s": build, "maps": {}}
    for side, r in maps.items():
        per, frame_t, over_t, dens_t = {}, [], [], []
        for z, xr_, yr_ in views:
            def frame():
                r.render(x_range=xr_, y_range=yr_, width=W, height=W, color_by="change:overlap")

            def over():
                overlay(r, ids, xr_, yr_)

            def density():  # the single map's frame of the same view, for reference
                r.render(x_range=xr_, y_range=yr_, width=W, height=W)

            frame()
            over()
            density()
            for _ in range(repeat):  # interleaved, so load spikes hit all three alike
                tf_, to_, td_ = (measure(f, repeat=1, warmup=0).times[0]
                                 for f in (frame, over, density))
                frame_t.append(tf_)
                over_t.append(to_)
                dens_t.append(td_)
                per.setdefault(z, []).append(tf_ + to_)
        times = [t for v in per.values() for t in v]
        out["maps"][side] = {"p95_frame_plus_overlay_s": p95(times),
                             "max_s": float(max(times)),
                             "p95_frame_change_colouring_s": p95(frame_t),
                             "p95_overlay_s": p95(over_t),
                             "p95_density_frame_same_views_s": p95(dens_t),
                             "p95_per_zoom_s": {str(z): p95(v) for z, v in per.items()}}
        log.info("map %s: frame + overlay p95 %.1f ms (max %.1f ms) over %d frames; frame alone "
                 "%.1f ms, overlay alone %.1f ms, density frame of the same views %.1f ms", side,
                 1e3 * p95(times), 1e3 * max(times), len(times), 1e3 * p95(frame_t),
                 1e3 * p95(over_t), 1e3 * p95(dens_t))
    rb = maps["b"]

    def linked():
        overlay(rb, select_ids(), (fx0, fx1), (fy0, fy1))

    t = measure(linked, repeat=max(5, repeat), warmup=1)
    out["linked_highlight"] = {**t.to_json(), "p95_s": p95(t.times)}
    log.info("linked highlight of %d rows: median %.1f ms, p95 %.1f ms", len(ids),
             1e3 * t.median, 1e3 * p95(t.times))
    # the user's alternative: Datashader over the whole dataframe, and over the selected rows
    df = pd.DataFrame({"x": xb, "y": yb, "v": overlap})
    sel_df = df.iloc[ids]
    cmap = cc.bmy
    deep = views[-1]
    alt = {}
    for label, (z, xr_, yr_) in (("full", views[0]), ("deep", deep)):
        ds_mean_frame(df, xr_, yr_, cmap, [0, 1])
        td = measure(lambda: (ds_mean_frame(df, xr_, yr_, cmap, [0, 1]),
                              ds_overlay(sel_df, xr_, yr_)), repeat=repeat, warmup=0)
        tb = measure(lambda: (rb.render(x_range=xr_, y_range=yr_, width=W, height=W,
                                        color_by="change:overlap"),
                              overlay(rb, ids, xr_, yr_)), repeat=repeat, warmup=0)
        alt[label] = {"zoom": z, "datashader_full_dataframe": td.to_json(),
                      "bigembed": tb.to_json(), "ratio_datashader_over_bigembed":
                      td.median / tb.median}
        log.info("%s view: datashader %.1f ms, bigembed %.1f ms (%.1fx)", label,
                 1e3 * td.median, 1e3 * tb.median, td.median / tb.median)
    tdl = measure(lambda: (df.iloc[np.flatnonzero((xa >= box[0][0]) & (xa <= box[0][1]) &
                                                  (ya >= box[1][0]) & (ya <= box[1][1]))],),
                  repeat=repeat, warmup=0)
    out["vs_datashader"] = alt
    out["linked_highlight_plain_select_s"] = tdl.to_json()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--selection", type=int, default=100_000)
    ap.add_argument("--positions", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/compare_view.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = run(args.n, args.selection, args.positions, args.repeat)
    path = write_results(args.out, results_doc("compare_view", res, params=vars(args)))
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
