"""Map frames, hover and tap: bigembed's renderer vs Datashader on the full dataframe.

    python -m benchmarks.bench_view [--sizes 1000000 10000000] [--out benchmarks/results/view.json]

Same run, same data, same ranges: a frame is aggregate + shade + PNG bytes at 800 x 800.
``bigembed`` is :class:`bigembed.view.frames.FrameRenderer` (Z-order index, exact points or
the aggregate pyramid, numba kernels binning the view's runs in place); the aggregation
kernel alone is also timed against the renderer's Datashader backend (Canvas.points on the
gathered points) on the same exact views; ``datashader`` is what a user would otherwise write: ``Canvas.points``
on the whole pandas dataframe, the same shading, PNG. Views: the full extent and zooms by
4x .. 4096x centred on random points (so they sit on data), several positions each; the p95
is over every frame of a zoom class. Hover is ``pick`` (nearest point under the cursor);
tap is pick + true neighbours (``bigembed.search`` via the server state) + 2-D neighbours,
on a synthetic dataset with vectors (``--tap-n`` x 32). The layouts of --sizes are built
directly as arrays (a mixture of 2-D blobs plus 1% background), as the issue allows.
"""

from __future__ import annotations

import argparse
import io
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from bigembed.bench.harness import measure, results_doc, write_results

log = logging.getLogger("bench_view")

W = H = 800
ZOOMS = [1, 4, 16, 64, 256, 1024, 4096]


def make_layout(n: int, seed: int = 0):
    """x, y float32 of shape (n,): 40 blobs of varied size and weight, 1% uniform background."""
    rng = np.random.default_rng(seed)
    k = 40
    centres = rng.uniform(-50, 50, (k, 2))
    scales = rng.uniform(0.3, 4.0, k)
    weights = rng.dirichlet(np.full(k, 2.0))
    nb = n // 100
    lab = rng.choice(k, size=n - nb, p=weights)
    xy = centres[lab] + rng.standard_normal((n - nb, 2)) * scales[lab, None]
    bg = rng.uniform(-60, 60, (nb, 2))
    xy = np.concatenate([xy, bg]).astype(np.float32)
    labels = np.concatenate([lab % 10, rng.integers(0, 10, nb)]).astype(np.int64)
    perm = rng.permutation(n)
    return xy[perm, 0].copy(), xy[perm, 1].copy(), labels[perm]


def datashader_frame(df, x_range, y_range, color, shade):
    import datashader as dsh

    cv = dsh.Canvas(plot_width=W, plot_height=H, x_range=x_range, y_range=y_range)
    agg = cv.points(df, "x", "y", agg=dsh.count() if color is None else dsh.count_cat(color))
    img = shade(agg, color)
    buf = io.BytesIO()
    img.to_pil().save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def p95(times):
    return float(np.percentile(np.asarray(times), 95))


def bench_size(n: int, *, positions: int, repeat: int, seed: int = 0) -> dict:
    import pandas as pd

    from bigembed.view.frames import FrameRenderer

    x, y, lab = make_layout(n, seed)
    t0 = time.perf_counter()
    fr = FrameRenderer.from_arrays(x, y, columns={"label": lab})
    build = time.perf_counter() - t0
    fr_ds = FrameRenderer.from_arrays(x, y, columns={"label": lab}, backend="datashader")
    log.info("n=%d: Z-order index built in %.2fs (backend %s)", n, build, fr.backend.name)
    df = pd.DataFrame({"x": x, "y": y, "label": pd.Categorical(lab.astype(str))})
    rng = np.random.default_rng(seed + 1)
    (fx0, fx1), (fy0, fy1) = fr.default_range()
    centres = rng.choice(n, size=positions * len(ZOOMS), replace=False)
    vlist = [(1, (fx0, fx1), (fy0, fy1))]
    i = 0
    for z in ZOOMS[1:]:
        hw, hh = (fx1 - fx0) / z / 2, (fy1 - fy0) / z / 2
        for _ in range(positions):
            cx, cy = float(x[centres[i]]), float(y[centres[i]])
            i += 1
            vlist.append((z, (cx - hw, cx + hw), (cy - hh, cy + hh)))
    out = {"n": n, "build_index_s": build, "backend": fr.backend.name, "frames": {}}
    for color in (None, "label"):
        cname = color or "density"
        # warm-up as the server does at start: numba JIT of every path and the pyramid levels
        t0 = time.perf_counter()
        fr.warm_up(W, H, color_by=color)
        for z, xr_, yr_ in vlist[:1] + vlist[-1:]:
            fr.render(x_range=xr_, y_range=yr_, width=W, height=H, color_by=color)
        warm_s = time.perf_counter() - t0
        per_zoom = {}
        for z, xr_, yr_ in vlist:
            modes = []

            def frame():
                f = fr.render(x_range=xr_, y_range=yr_, width=W, height=H, color_by=color)
                modes.append((f.mode, f.level, f.points))

            t = measure(frame, repeat=repeat, warmup=0)
            d = per_zoom.setdefault(z, {"times": [], "modes": set(), "points_aggregated": []})
            d["times"] += t.times
            d["modes"].add(modes[-1][0] if modes[-1][1] is None else f"pyramid-L{modes[-1][1]}")
            d["points_aggregated"].append(modes[-1][2])
        res = {}
        for z, d in per_zoom.items():
            res[str(z)] = {"p95_s": p95(d["times"]), "median_s": float(np.median(d["times"])),
                           "frames": len(d["times"]), "modes": sorted(d["modes"]),
                           "points_aggregated_max": int(max(d["points_aggregated"]))}
            log.info("n=%d %s zoom %5dx: p95 %.1f ms  median %.1f ms  %s  aggregated<=%d", n,
                     cname, z, 1e3 * res[str(z)]["p95_s"], 1e3 * res[str(z)]["median_s"],
                     res[str(z)]["modes"], res[str(z)]["points_aggregated_max"])
        all_times = [t for d in per_zoom.values() for t in d["times"]]
        # Datashader on the full dataframe, same shading: full extent and the deepest zoom.
        deep = [v for v in vlist if v[0] == ZOOMS[-1]][0]
        ds_res = {}
        for label, (z, xr_, yr_) in (("full", vlist[0]), ("deep", deep)):
            datashader_frame(df, xr_, yr_, color, fr.shade)
            t = measure(lambda: datashader_frame(df, xr_, yr_, color, fr.shade), repeat=repeat,
                        warmup=0)
            tb = measure(lambda: fr.render(x_range=xr_, y_range=yr_, width=W, height=H,
                                           color_by=color), repeat=repeat, warmup=0)
            ds_res[label] = {"zoom": z, "datashader_full_dataframe": t.to_json(),
                             "bigembed": tb.to_json(),
                             "speedup_datashader_over_bigembed": t.median / tb.median}
            log.info("n=%d %s %s: datashader %.1f ms, bigembed %.1f ms (%.1fx)", n, cname, label,
                     1e3 * t.median, 1e3 * tb.median, t.median / tb.median)
        # The aggregation kernel alone: the same exact aggregate of the same views by the
        # numba run kernel and by Datashader's Canvas.points on the gathered points.
        kern = {}
        mid = [v for v in vlist if v[0] == 16][0]
        for label, (z, xr_, yr_) in (("full", vlist[0]), ("zoom16", mid)):
            kw = dict(x_range=xr_, y_range=yr_, width=W, height=H, color_by=color, mode="exact")
            fr_ds.aggregate(**kw)
            t_nb = measure(lambda: fr.aggregate(**kw), repeat=repeat, warmup=1)
            t_ds = measure(lambda: fr_ds.aggregate(**kw), repeat=repeat, warmup=0)
            pts = fr.aggregate(**kw)[3]
            kern[label] = {"zoom": z, "points": pts, "numba_runs": t_nb.to_json(),
                           "datashader_gathered": t_ds.to_json(),
                           "speedup": t_ds.median / t_nb.median}
            log.info("n=%d %s exact aggregate %s (%d points): numba %.1f ms, datashader %.1f ms",
                     n, cname, label, pts, 1e3 * t_nb.median, 1e3 * t_ds.median)
        out["frames"][cname] = {"warm_up_s": warm_s, "per_zoom": res, "p95_all_views_s": p95(all_times),
                                "max_all_views_s": float(max(all_times)),
                                "vs_datashader": ds_res, "aggregate_kernel": kern}
    # hover: nearest point under the cursor within 8 px, at full extent and deep zoom
    hov = {}
    for label, (z, xr_, yr_) in (("full", vlist[0]), ("deep", vlist[-1])):
        radius = 8 * (xr_[1] - xr_[0]) / W
        qs = rng.uniform([xr_[0], yr_[0]], [xr_[1], yr_[1]], (200, 2))
        times = []
        for qx, qy in qs:
            t0 = time.perf_counter()
            fr.pick(qx, qy, radius)
            times.append(time.perf_counter() - t0)
        hov[label] = {"p95_s": p95(times), "median_s": float(np.median(times)), "queries": 200}
        log.info("n=%d hover %s: p95 %.2f ms", n, label, 1e3 * hov[label]["p95_s"])
    out["hover"] = hov
    times = []
    for c in rng.choice(n, 100, replace=False):
        t0 = time.perf_counter()
        fr.neighbors_2d(int(c), 10)
        times.append(time.perf_counter() - t0)
    out["neighbors_2d_k10"] = {"p95_s": p95(times), "median_s": float(np.median(times))}
    return out


def bench_tap(n: int, work: Path) -> dict:
    """A whole tap on a dataset with vectors: pick + true neighbours + 2-D neighbours."""
    from bigembed.ingest.synth import synth
    from bigembed.reduce.run import reduce
    from bigembed.server.state import Explorer

    path = work / "tap-ds"
    synth(path, n=n, dim=32, clusters=10, seed=0, progress=False)
    reduce(path, method="pca")
    ex = Explorer(path)
    fr = ex.renderer()
    rng = np.random.default_rng(3)
    index = ex.neighbors(id=0, k=10).get("index")  # warm-up (loads the index once)
    times = []
    (x0, x1), _ = fr.default_range()
    for c in rng.choice(n, 30, replace=False):
        px, py = fr.xy([int(c)])[0]
        t0 = time.perf_counter()
        i = fr.pick(float(px), float(py), 8 * (x1 - x0) / W)
        ex.neighbors(id=i, k=10)
        times.append(time.perf_counter() - t0)
    return {"n": n, "dim": 32, "k": 10, "p95_s": p95(times), "median_s": float(np.median(times)),
            "taps": len(times),
            "neighbors_impl": f"bigembed.search.neighbors via server.state.Explorer "
                              f"(index {index})"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--positions", type=int, default=4, help="view positions per zoom level")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tap-n", type=int, default=100_000)
    ap.add_argument("--out", default="benchmarks/results/view.json")
    ap.add_argument("--ooc-from", type=int, default=200_000_000,
                    help="sizes from this up are measured out of core (benchmarks.bench_ooc)")
    ap.add_argument("--workdir", default=None,
                    help="where the out-of-core dataset is written (default: a temporary dir)")
    ap.add_argument("--memory", type=int, default=6 << 30,
                    help="memory cap of the out-of-core build, bytes")
    ap.add_argument("--keep", action="store_true", help="keep the out-of-core dataset")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = {"width": W, "height": H, "zooms": ZOOMS, "sizes": {}}
    ooc = [n for n in args.sizes if n >= args.ooc_from]
    args.sizes = [n for n in args.sizes if n < args.ooc_from]
    for n in args.sizes:
        res["sizes"][str(n)] = bench_size(n, positions=args.positions, repeat=args.repeat)
    if ooc:
        from benchmarks.bench_ooc import bench_out_of_core

        res["out_of_core"] = {}
        for n in ooc:
            with tempfile.TemporaryDirectory(prefix="bench-ooc-", dir=args.workdir,
                                             ignore_cleanup_errors=True) as tmp:
                res["out_of_core"][str(n)] = bench_out_of_core(
                    n, workdir=Path(tmp), positions=args.positions, memory=args.memory,
                    keep=args.keep)
        if not args.sizes:
            path = write_results(args.out, results_doc("view", res, params=vars(args)))
            log.info("wrote %s", path)
            return
    if len(args.sizes) >= 2:
        a, b = (res["sizes"][str(n)] for n in (min(args.sizes), max(args.sizes)))
        res["p95_ratio_largest_over_smallest"] = {
            c: b["frames"][c]["p95_all_views_s"] / a["frames"][c]["p95_all_views_s"]
            for c in a["frames"]}
    with tempfile.TemporaryDirectory(prefix="bench-view-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        res["tap"] = bench_tap(args.tap_n, work)
        log.info("tap (n=%d): p95 %.1f ms", args.tap_n, 1e3 * res["tap"]["p95_s"])
    path = write_results(args.out, results_doc("view", res, params=vars(args)))
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
