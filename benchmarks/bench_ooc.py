"""The map out of core at a billion points: build, open, frames, hover, tap, selection, filter.

    python -m benchmarks.bench_view --sizes 1000000000 [--workdir DIR] [--out ...]

(``bench_view`` hands sizes from ``--ooc-from`` (default 200M) up to this module.) A layout-only
dataset of N points (``bigembed synth --layout-only``: 40 blobs + 1% background, a label) is
written to ``--workdir``; its map artifacts (:mod:`bigembed.view.store`: Z-order, pyramid, the
label colouring) are built in a child process whose peak RSS is the build's memory; then, in
this process, the map is opened (:class:`~bigembed.view.frames.FrameRenderer`) and measured:
the first frame after opening (pages partly cold), then every view (full extent, zooms 4x ..
4096x at several positions) by density and by label, once to bring its pages in and again
timed (p95 "once the pages are cached"); hover (``pick`` under the cursor), tap (2-D
neighbours), box-selection statistics (the selected rows' label counts) and a label filter
(frames of many points from the pyramid's per-cell label counts, p95 per zoom, with no mask;
the mask over N points, built on first use by the exact views of few points, timed apart), and
``bigembed serve`` of the map: start-up, a page, its first frame. Datashader cannot hold a
billion points on this machine, so its figures come from ``bench_view`` at the sizes it can
run.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("bench_ooc")

W = H = 800
ZOOMS = [1, 4, 16, 64, 256, 1024, 4096]

_BUILD = r'''
import json, sys, time
from bigembed.view import store
from bigembed.view.frames import FrameRenderer
t0 = time.perf_counter()
b = store.build_map(sys.argv[1], "synth", memory=int(sys.argv[2]), progress=True)
t1 = time.perf_counter()
r = FrameRenderer(sys.argv[1], "synth")
c = r.colouring("label")
t2 = time.perf_counter()
print(json.dumps({"map_s": t1 - t0, "label_colouring_s": t2 - t1, "windows": b.windows,
                  "timings": b.timings, "map_bytes": r.store.bytes_on_disk()}))
'''


def _p95(ts):
    return float(np.percentile(ts, 95)) if len(ts) else None


def _time_views(r, views, **kw):
    """Each view rendered once (its pages brought in), then 3 times timed: (seconds per zoom,
    the first renders' seconds, all timed seconds, the modes per zoom)."""
    per, cold, allt, modes = {}, [], [], {}
    for z, xr, yr in views:
        cold.append(r.render(x_range=xr, y_range=yr, width=W, height=H, **kw).seconds)
        for _ in range(3):
            f = r.render(x_range=xr, y_range=yr, width=W, height=H, **kw)
            per.setdefault(str(z), []).append(f.seconds)
            allt.append(f.seconds)
        modes.setdefault(str(z), set()).add(f"{f.mode}:{f.points}")
    return per, cold, allt, modes


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def bench_serve(path: Path, timeout: float = 900.0) -> dict:
    """``bigembed serve`` of the built map: seconds until it says it is serving (its warm-up:
    a few frames, a selection, the filter values), then a page (a session's document) and the
    page's first frame (the whole layout by label), as a browser fetches them."""
    import urllib.request

    from ._serve import served

    out: dict = {}
    with served(path, timeout) as (base, start_s):
        out["start_s"] = start_s

        def get(url):
            with urllib.request.urlopen(base + url, timeout=300) as resp:
                return resp.read()

        out["page_s"], page = _timed(lambda: get("/"))
        from bigembed.dataset.reader import Dataset
        from bigembed.view.frames import FrameRenderer

        (x0, x1), (y0, y1) = FrameRenderer(Dataset.open(path), "synth").default_range()
        q = f"/frame.png?layout=synth&color=label&w={W}&h={H}&x0={x0!r}&x1={x1!r}&y0={y0!r}&y1={y1!r}"
        out["first_frame_s"], png = _timed(lambda: get(q))
        out["page_bytes"], out["frame_bytes"] = len(page), len(png)
        log.info("serve: serving after %.1fs; page %.2fs; first frame %.1f ms", out["start_s"],
                 out["page_s"], 1e3 * out["first_frame_s"])
    return out


def bench_out_of_core(n: int, *, workdir: Path, positions: int = 3, memory: int = 6 << 30,
                      keep: bool = False, seed: int = 0) -> dict:
    from bigembed.dataset.reader import Dataset
    from bigembed.ingest.synth import synth_layout
    from bigembed.view.frames import FrameRenderer

    path = Path(workdir) / f"layout-{n}"
    out: dict = {"n": n, "memory_cap_bytes": memory, "dataset": str(path)}
    if not (path / "manifest.json").is_file():
        secs, _ = _timed(lambda: synth_layout(path, n=n, overwrite=True, progress=True))
        out["synth_s"] = secs
        log.info("n=%d: layout-only dataset written in %.1fs", n, secs)
    ds = Dataset.open(path)
    lay_bytes = (path / ds.manifest["layouts"]["synth"]["file"]).stat().st_size
    meta_bytes = (path / ds.manifest["meta"]["file"]).stat().st_size
    maps = path / "cache" / "map"
    shutil.rmtree(maps, ignore_errors=True)  # a fresh build every run

    env = dict(os.environ, BIGEMBED_NO_PROGRESS=os.environ.get("BIGEMBED_NO_PROGRESS", "0"))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _BUILD, str(path), str(memory)], env=env,
                       capture_output=True, text=True)
    build_wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"build failed: {p.stderr[-3000:]}")
    built = json.loads(p.stdout.strip().splitlines()[-1])
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out["build"] = dict(built, seconds=built["map_s"] + built["label_colouring_s"],
                        wall_s=build_wall, peak_rss_bytes=peak_kb * 1024)
    log.info("n=%d: artifacts built in %.1fs (map %.1fs + label %.1fs), peak RSS %.2f GB", n,
             out["build"]["seconds"], built["map_s"], built["label_colouring_s"],
             peak_kb / 2**20)
    out["disk_bytes"] = {"map_and_colouring": built["map_bytes"], "layout_input": lay_bytes,
                         "meta": meta_bytes,
                         "per_billion_points_map": built["map_bytes"] * 1e9 / n}

    t_open, r = _timed(lambda: FrameRenderer(Dataset.open(path), "synth"))
    out["open_s"] = t_open
    t_lab, _ = _timed(lambda: r.colouring("label"))
    out["open_label_colouring_s"] = t_lab
    log.info("n=%d: opened in %.2fs (+ label colouring %.2fs)", n, t_open, t_lab)
    first = r.render(width=W, height=H)
    out["first_frame_s"] = first.seconds
    first_l = r.render(width=W, height=H, color_by="label")
    out["first_frame_label_s"] = first_l.seconds
    log.info("first frame %.1f ms (label %.1f ms)", 1e3 * first.seconds, 1e3 * first_l.seconds)
    # a later page or kernel: the map opened again, its whole-layout frame read from frames/
    t_again, again = _timed(lambda: FrameRenderer(Dataset.open(path), "synth").render(
        width=W, height=H, color_by="label"))
    out["reopened_first_frame_label_s"] = t_again
    out["reopened_first_frame_kept"] = again.png == first_l.png
    log.info("reopened + first frame by label (kept): %.1f ms", 1e3 * t_again)

    rng = np.random.default_rng(seed)
    (x0, x1), (y0, y1) = r.default_range()
    ids = rng.integers(0, n, positions * len(ZOOMS))
    xy = r.xy(ids)
    views = [(1, (x0, x1), (y0, y1))]
    i = 0
    for z in ZOOMS[1:]:
        hw, hh = (x1 - x0) / z / 2, (y1 - y0) / z / 2
        for _ in range(positions):
            cx, cy = map(float, xy[i])
            i += 1
            views.append((z, (cx - hw, cx + hw), (cy - hh, cy + hh)))
    frames = {}
    for color in (None, "label"):
        # rendered every time (cache=False: the full view is not read from frames/)
        per, cold, allt, modes = _time_views(r, views, color_by=color, cache=False)
        name = color or "density"
        frames[name] = {"p95_all_views_s": _p95(allt), "max_s": float(max(allt)),
                        "p95_first_render_of_each_view_s": _p95(cold),
                        "p95_per_zoom_s": {z: _p95(v) for z, v in per.items()},
                        "modes": {z: sorted(v)[:3] for z, v in modes.items()}}
        log.info("frames by %s: p95 %.1f ms (max %.1f), first render of a view p95 %.1f ms", name,
                 1e3 * frames[name]["p95_all_views_s"], 1e3 * frames[name]["max_s"],
                 1e3 * frames[name]["p95_first_render_of_each_view_s"])
    out["frames"] = frames

    # hover: pick under the cursor, 8 px radius, at points of the views
    hov, tap = [], []
    for z, xr, yr in views:
        px = (xr[1] - xr[0]) / W * 8
        for _ in range(5):
            j = int(rng.integers(0, n))
            x, y = map(float, r.xy([j])[0])
            hov.append(_timed(lambda: r.pick(x, y, px))[0])
            tap.append(_timed(lambda: r.neighbors_2d(j, 15))[0])
    out["hover_p95_s"], out["tap_2d_neighbours_p95_s"] = _p95(hov), _p95(tap)
    log.info("hover p95 %.2f ms; tap 2-D neighbours p95 %.2f ms", 1e3 * out["hover_p95_s"],
             1e3 * out["tap_2d_neighbours_p95_s"])

    # box selection statistics: the rows in a box and their label counts (the panel's work)
    lab = r.colouring("label")
    sel = {}
    for target in (10_000, 1_000_000, 10_000_000):
        z = float(np.sqrt(n / target))
        c = xy[0]
        hw, hh = (x1 - x0) / z / 2, (y1 - y0) / z / 2
        box = ((c[0] - hw, c[0] + hw), (c[1] - hh, c[1] + hh))

        def stats():
            pos = r.index.box(*box)
            counts = np.bincount(np.asarray(lab.values)[pos], minlength=len(lab.categories))
            return len(pos), counts

        secs, (cnt, counts) = _timed(stats)
        sel[str(target)] = {"rows": int(cnt), "seconds": secs}
        log.info("box selection of %d rows + label counts: %.1f ms", cnt, 1e3 * secs)
    out["box_selection"] = sel

    # a label filter: frames with many points in view (coloured by density or by the label)
    # are drawn from the pyramid's per-cell label counts, without the filter mask of the n
    # points; views with few points in view are exact and need the mask (built on first use
    # over the n points, then cached), measured on its own first
    where = {"label": ["3", "7"]}
    f_first = r.render(width=W, height=H, where=where)
    out_f: dict = {"where": where, "full_view_first_s": f_first.seconds,
                   "full_view_mode": f_first.mode,
                   "mask_built_by_pyramid_frames": bool(r._filters)}
    # the views an unfiltered frame draws from the pyramid (the same test picks a filtered
    # frame's mode); the others are exact, measured after the mask below
    pyr_views = [(z, xr, yr) for z, xr, yr in views
                 if r.render(x_range=xr, y_range=yr, width=W, height=H).mode == "pyramid"]
    filt = {}
    for color in (None, "label"):
        per, _, allt, modes = _time_views(r, pyr_views, color_by=color, where=where)
        name = color or "density"
        filt[name] = {"p95_pyramid_views_s": _p95(allt),
                      "max_s": float(max(allt)) if allt else None,
                      "p95_per_zoom_s": {z: _p95(v) for z, v in per.items()},
                      "modes": {z: sorted(v)[:3] for z, v in modes.items()}}
        log.info("filtered frames by %s from the pyramid: p95 %.1f ms over %d views (zooms %s)",
                 name, 1e3 * (filt[name]["p95_pyramid_views_s"] or 0), len(allt) // 3,
                 sorted(per, key=int))
    out_f["pyramid_frames"] = filt
    out_f["mask_built_by_pyramid_frames"] = bool(r._filters)
    t_mask, _ = _timed(lambda: r.filter_mask(where))
    out_f["mask_build_s"] = t_mask
    # the views with few points in view: exact frames of the matching points (mask cached)
    ex, exm = {}, {}
    for z, xr, yr in views:
        f = r.render(x_range=xr, y_range=yr, width=W, height=H, where=where)
        if f.mode == "exact":
            ex.setdefault(str(z), []).append(f.seconds)
            exm.setdefault(str(z), set()).add(f"{f.mode}:{f.points}")
    out_f["exact_frames"] = {"p95_s": _p95([t for v in ex.values() for t in v]),
                             "per_zoom_s": ex,
                             "modes": {z: sorted(v)[:3] for z, v in exm.items()}}
    out["filter"] = out_f
    try:
        out["serve"] = bench_serve(path)
    except Exception as e:  # the figures above stand without it
        log.error("bigembed serve of the map failed: %s", e)
        out["serve"] = {"error": str(e)[-2000:]}
    log.info("filter: full view %.1f ms (%s, mask built: %s); mask over %d points %.2fs, "
             "needed only by the exact views (zooms %s), p95 %.1f ms once built",
             1e3 * f_first.seconds, f_first.mode, out_f["mask_built_by_pyramid_frames"], n,
             t_mask, sorted(ex, key=int), 1e3 * (out_f["exact_frames"]["p95_s"] or 0))
    if not keep:
        shutil.rmtree(path, ignore_errors=True)
    return out
