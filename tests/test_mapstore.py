"""The map out of core (bigembed.view.store): the on-disk Z-order, pyramid and colourings give
the same frames as the in-memory renderer, built in many small windows and chunks; a killed
build leaves nothing trusted; the build's memory follows its cap, not the data; a layout-only
dataset (no vectors) is served and says clearly what it cannot do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

N = 60_000


def _layout(n, seed=0):
    rng = np.random.default_rng(seed)
    k = 12
    centres = rng.uniform(-50, 50, (k, 2))
    blob = rng.integers(0, k, n)
    xy = centres[blob] + rng.standard_normal((n, 2)) * rng.uniform(0.3, 4.0, k)[blob, None]
    xy[: n // 50] = rng.uniform(-60, 60, (n // 50, 2))
    xy[7] = xy[8]  # duplicate points share a cell and an order
    return xy.astype(np.float32), blob


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A dataset with vectors, metadata (label, prediction, confidence, correct) and a layout
    (written in batches, then rewritten with a quality column as one); its in-memory renderer and one over the
    map built in ~60 windows of ~1,000 points, read in chunks of 3,000 rows."""
    from bigembed.dataset.layouts import add_layout_columns, write_layout_batches
    from bigembed.dataset.reader import Dataset
    from bigembed.ingest.synth import synth
    from bigembed.view import store
    from bigembed.view.frames import FrameRenderer

    path = tmp_path_factory.mktemp("mapstore") / "ds"
    synth(path, n=N, dim=4, clusters=7, error_rate=0.2, seed=1, progress=False)
    ds = Dataset.open(path)
    xy, blob = _layout(N)
    write_layout_batches(ds, "blobs", ((xy[a:a + 7000, 0], xy[a:a + 7000, 1])
                                       for a in range(0, N, 7000)),
                         {"space": "default", "method": "planted"})
    q = np.random.default_rng(2).random(N)
    q[::97] = np.nan
    add_layout_columns(Dataset.open(path), "blobs", {"knn_preservation": q.astype(np.float32)})
    ds = Dataset.open(path)
    assert ds.artifacts("layouts")["blobs"]["rows"] == N
    b = store.build_map(ds, "blobs", memory=64 * 1000, chunk_rows=3000, progress=False)
    assert b.built and b.windows > 20
    mem = FrameRenderer(ds, "blobs", store="never")
    old = store.CHUNK_ROWS
    store.CHUNK_ROWS = 5000  # colourings gathered and counted in chunks too
    try:
        st = FrameRenderer(ds, "blobs", store="always")
        for c in ("label", "confidence", "correct", "knn_preservation", "prediction"):
            st.colouring(c)
    finally:
        store.CHUNK_ROWS = old
    return dict(path=path, ds=ds, mem=mem, st=st, build=b, xy=xy, blob=blob)


def test_stored_order_and_pyramid_equal_in_memory(pair):
    mem, st = pair["mem"], pair["st"]
    assert type(st.pyramid).__name__ == "StoredPyramid"
    for a in ("codes", "ids", "xs", "ys"):
        np.testing.assert_array_equal(np.asarray(getattr(st.index, a)), getattr(mem.index, a))
    assert st.index.bounds == mem.index.bounds
    for lv in range(mem.index.levels + 1):
        np.testing.assert_array_equal(np.asarray(st.index.level_starts(lv)),
                                      mem.index.level_starts(lv))
        for u, v in zip(mem.pyramid.centroids(lv), st.pyramid.centroids(lv)):
            np.testing.assert_array_equal(u, np.asarray(v))
    # the stored colourings are the in-memory ones, in spatial order
    for c in ("label", "confidence", "correct", "knn_preservation"):
        a, b = mem.colouring(c), st.colouring(c)
        assert (a.kind, a.categories, a.span) == (b.kind, tuple(b.categories), b.span)
        np.testing.assert_array_equal(np.asarray(b.values), a.values)


VIEWS = [(1, 0.5, 0.5), (3, 0.3, 0.6), (16, 0.2, 0.45), (60, 0.4, 0.4), (400, 0.7, 0.3)]


@pytest.mark.parametrize("color", [None, "label", "confidence", "correct", "knn_preservation",
                                   "cluster"])
def test_frames_bit_identical(pair, color):
    mem, st = pair["mem"], pair["st"]
    if color == "cluster":  # a column set on the renderer: coloured in memory over the map
        cl = (pair["blob"] % 5).astype(np.int64)
        mem.set_column("cluster", cl)
        st.set_column("cluster", cl)
    (x0, x1), (y0, y1) = mem.default_range()
    n = 0
    for z, fx, fy in VIEWS:
        cx, cy = x0 + fx * (x1 - x0), y0 + fy * (y1 - y0)
        hw, hh = (x1 - x0) / z / 2, (y1 - y0) / z / 2
        for mode in ("auto", "pyramid", "exact"):
            for where in (None, {"label": ["1", "4"]}):
                kw = dict(x_range=(cx - hw, cx + hw), y_range=(cy - hh, cy + hh), width=160,
                          height=120, color_by=color, mode=mode, where=where)
                a, b = mem.render(**kw), st.render(**kw)
                assert (a.mode, a.level, a.points) == (b.mode, b.level, b.points)
                assert a.png == b.png, kw
                if where and mode == "pyramid" and a.level is not None:
                    # filtered on label: from the pyramid when coloured by density or label
                    assert a.mode == ("pyramid" if color in (None, "label") else "exact")
                n += 1
    assert n == 30


def test_filtered_pyramid_frames_bit_identical_without_a_mask(pair):
    """Frames filtered on one categorical column, coloured by density or by that column, with
    many points in view ("auto" picks the pyramid): the same bytes in memory and from the
    map, and the map's renderer never builds the filter mask of its n points; bad values
    still raise."""
    from bigembed.errors import InputError
    from bigembed.view.frames import FrameRenderer

    ds = pair["ds"]
    mem = FrameRenderer(ds, "blobs", store="never", exact_budget=2_000)
    st = FrameRenderer(ds, "blobs", store="always", exact_budget=2_000)
    (x0, x1), (y0, y1) = mem.default_range()
    n = 0
    for where, colors in (({"label": ["1", "4"]}, (None, "label")),
                          ({"label": ["0"]}, (None,)),
                          ({"prediction": ["2", "3", "5"]}, (None, "prediction")),
                          ({"label": []}, ("label",))):
        for z, fx, fy in VIEWS[:2]:
            cx, cy = x0 + fx * (x1 - x0), y0 + fy * (y1 - y0)
            hw, hh = (x1 - x0) / z / 2, (y1 - y0) / z / 2
            for color in colors:
                kw = dict(x_range=(cx - hw, cx + hw), y_range=(cy - hh, cy + hh), width=160,
                          height=120, color_by=color, where=where)
                a, b = mem.render(**kw), st.render(**kw)
                assert a.mode == b.mode == "pyramid", kw
                assert (a.level, a.points) == (b.level, b.points)
                assert a.png == b.png, kw
                n += 1
    assert n == 12 and not st._filters and not mem._filters
    # levels of more than CACHED_LEVEL_CELLS cells (a billion points' finer levels) are
    # binned in place from the memory-mapped pairs: the same aggregates, the same frames
    from bigembed.view import store

    old = store.CACHED_LEVEL_CELLS
    store.CACHED_LEVEL_CELLS = 0
    try:
        for color in (None, "label"):
            kw = dict(width=160, height=120, color_by=color, where={"label": ["1", "4"]})
            a, b = mem.aggregate(x_range=(x0, x1), y_range=(y0, y1), **kw), \
                st.aggregate(x_range=(x0, x1), y_range=(y0, y1), **kw)
            assert a[1:] == b[1:] and a[1] == "pyramid"
            np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
            assert mem.render(**kw).png == st.render(**kw).png
    finally:
        store.CACHED_LEVEL_CELLS = old
    assert not st._filters
    kw = dict(width=80, height=60, color_by="label")
    for bad in ({"label": ["1", "99"]}, {"prediction": ["x"]}):
        with pytest.raises(InputError, match="has no value"):
            st.render(where=bad, **kw)
    assert not st._filters
    # colouring by another column: exact, from the mask (as before)
    f = st.render(where={"label": ["1"]}, width=80, height=60, color_by="prediction")
    assert f.mode == "exact" and len(st._filters) == 1


def test_hover_tap_and_filter_equal(pair):
    mem, st = pair["mem"], pair["st"]
    xy = pair["xy"]
    for i in (0, 7, 8, 1234, N - 1):
        np.testing.assert_array_equal(mem.xy([i]), st.xy([i]))
        x, y = xy[i]
        assert mem.pick(x, y, 0.5) == st.pick(x, y, 0.5)
        np.testing.assert_array_equal(mem.neighbors_2d(i, 12), st.neighbors_2d(i, 12))
    for where in ({"label": ["2"]}, {"label": ["0", "6"], "correct": ["False"]}):
        np.testing.assert_array_equal(mem.filter_mask(where), st.filter_mask(where))
    from bigembed.errors import InputError

    with pytest.raises(InputError, match="no value '99'"):
        st.filter_mask({"label": ["99"]})


def test_opened_again_without_rebuilding(pair):
    from bigembed.view import store
    from bigembed.view.frames import FrameRenderer

    ds = pair["ds"]
    p = pair["st"].store.path
    before = (p / "map.json").stat().st_mtime_ns
    t0 = time.perf_counter()
    again = FrameRenderer(ds, "blobs")  # "auto": the map is there, so it is used
    opened = time.perf_counter() - t0
    assert again.store is not None and again.store.path == p
    assert (p / "map.json").stat().st_mtime_ns == before
    assert not store.build_map(ds, "blobs").built
    assert opened < 5.0  # nothing rebuilt (a generous bound: a shared machine)
    info = json.loads((p / "map.json").read_text())
    assert info["rows"] == N and info["windows"] == pair["build"].windows
    # the colourings stored by the first renderer are opened, not built again
    cols = sorted(q.name.split(".")[1] for q in p.glob("col.*"))
    assert "label" in cols and "confidence" in cols
    np.testing.assert_array_equal(np.asarray(again.colouring("label").values),
                                  np.asarray(pair["st"].colouring("label").values))


def test_whole_layout_frame_kept(pair):
    """The frame of the whole layout is kept in the stored map: a new renderer (a new page or
    notebook kernel) reads it without rendering; its bytes are those a render gives; other
    views, filters and columns set in memory are not kept; a damaged file is rendered again."""
    from bigembed.view.frames import FrameRenderer

    st = pair["st"]
    kw = dict(width=150, height=110, color_by="label")
    first = st.render(**kw)
    fresh = st.render(cache=False, **kw)
    assert first.png == fresh.png
    frames = st.store.path / "frames"
    kept = sorted(frames.glob("*.frame"))
    assert len(kept) >= 1

    other = FrameRenderer(pair["ds"], "blobs")
    assert other.store is not None

    def no_render(*a, **k):
        raise AssertionError("rendered instead of read")

    other._plan = no_render
    got = other.render(**kw)
    assert got.png == fresh.png and (got.mode, got.level, got.points) == (
        fresh.mode, fresh.level, fresh.points)
    with pytest.raises(AssertionError, match="rendered"):  # another size: not kept yet
        other.render(width=151, height=110, color_by="label")
    del other._plan

    n = len(list(frames.glob("*.frame")))
    (x0, x1), (y0, y1) = st.default_range()
    st.render(where={"label": ["1"]}, **kw)
    st.render(x_range=(x0, (x0 + x1) / 2), y_range=(y0, y1), **kw)
    st.set_column("kept_test", (pair["blob"] % 3).astype(np.int64))
    st.render(width=150, height=110, color_by="kept_test")
    assert len(list(frames.glob("*.frame"))) == n
    st.render(width=150, height=110)  # density: a key of its own
    assert len(list(frames.glob("*.frame"))) == n + 1

    path = [p for p in frames.glob("*.frame") if p not in kept and p.stat().st_size][0]
    path.write_bytes(path.read_bytes()[:-7])  # damaged: rendered and kept again
    again = FrameRenderer(pair["ds"], "blobs").render(width=150, height=110)
    assert again.png == st.render(width=150, height=110, cache=False).png
    assert path.read_bytes().endswith(again.png)


_KILLED = r'''
import sys
from bigembed.view import store
store.build_map(sys.argv[1], "synth", memory=1 << 16, chunk_rows=4096, progress=False)
'''


def test_killed_build_leaves_nothing_trusted(tmp_path):
    from bigembed.dataset.gc import collect_garbage, find_orphans
    from bigembed.dataset.reader import Dataset
    from bigembed.ingest.synth import synth_layout
    from bigembed.view import store

    path = tmp_path / "lo"
    synth_layout(path, n=150_000, clusters=8, batch_rows=50_000, progress=False)
    ds = Dataset.open(path)
    maps = path / "cache" / "map"
    env = dict(os.environ, BIGEMBED_NO_PROGRESS="1")
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(path)], env=env)
    try:
        # kill it once its temporary holds sorted points (a window written, more to come)
        for _ in range(600):
            tmps = list(maps.glob(".*tmp-*")) if maps.is_dir() else []
            if tmps and (tmps[0] / "xs.npy").is_file() and (tmps[0] / "xs.npy").stat().st_size > 4096:
                break
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the build finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert store.open_map(ds, "synth") is None  # nothing the server would trust
    assert not list(maps.glob("synth.*"))
    orphans = [o for o in find_orphans(path) if "cache" in o.path]
    assert orphans and not any(o.live for o in orphans)
    collect_garbage(path)
    assert not list(maps.glob(".*tmp-*"))
    b = store.build_map(ds, "synth", memory=1 << 20, progress=False)
    assert b.built and store.open_map(ds, "synth").n == 150_000


_CAPPED = r'''
import json, resource, sys
import numpy as np
from bigembed.view import store
from bigembed.view.frames import FrameRenderer
store.build_map(sys.argv[2], "synth", memory=1 << 20, chunk_rows=65536, progress=False)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
b = store.build_map(sys.argv[1], "synth", memory=int(sys.argv[3]), chunk_rows=65536,
                    progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
r = FrameRenderer(sys.argv[1], "synth")
img = r.render(width=64, height=64, color_by="label")
print(json.dumps({"grew_kb": peak - base, "windows": b.windows, "disk": b.bytes_on_disk,
                  "mode": img.mode}))
'''


def test_build_under_a_memory_cap_below_the_data(tmp_path):
    """1M points (8 MB of coordinates in, 20 MB of sorted arrays out) built with windows of
    1 MB: the process grows by far less than the data (a whole-array sort would need it all)."""
    from bigembed.ingest.synth import synth_layout

    big, small = tmp_path / "big", tmp_path / "small"
    n = 1_000_000
    synth_layout(big, n=n, clusters=20, batch_rows=250_000, progress=False)
    synth_layout(small, n=20_000, clusters=5, progress=False)  # warms the kernels first
    env = dict(os.environ, BIGEMBED_NO_PROGRESS="1")
    out = subprocess.run([sys.executable, "-c", _CAPPED, str(big), str(small), str(1 << 20)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    data = n * 8 + n * 20  # coordinates in + sorted arrays and inverse permutation out
    assert got["windows"] >= 20
    assert got["grew_kb"] * 1024 < data / 4, got
    assert got["disk"] > n * 20 and got["mode"] in ("exact", "pyramid")


def test_layout_only_dataset(tmp_path):
    """`bigembed synth --layout-only`: rows, a label and a layout, no vectors; rendering works,
    what needs vectors says there are none (exit 2, one line)."""
    from bigembed.dataset.reader import Dataset
    from bigembed.view.frames import FrameRenderer

    from conftest import assert_clean_error, run_cli

    path = tmp_path / "lo"
    r = run_cli("synth", path, "--n", "5000", "--layout-only")
    assert r.returncode == 0, r.stderr
    ds = Dataset.open(path)
    assert ds.rows == 5000 and not ds.spaces and ds.meta_columns() == ["id", "label"]
    f = FrameRenderer(ds)
    assert f.render(width=50, height=40, color_by="label").points > 0
    r = run_cli("neighbors", path, "--id", "3")
    assert r.returncode == 2
    assert_clean_error(r, "has no vectors")
    r = run_cli("synth", tmp_path / "lo2", "--n", "10", "--layout-only", "--dim", "4")
    assert r.returncode == 2
    assert_clean_error(r, "--dim")
    assert not (tmp_path / "lo2").exists()
