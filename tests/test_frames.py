"""The pure render path: Z-order index, exact frames against Datashader, pyramid frames,
the torch binning kernel against its numpy reference, picking and 2-D neighbours."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from bigembed.errors import InputError
from bigembed.kernels.raster import bin_points_reference
from bigembed.view.frames import FrameRenderer
from bigembed.view.spatial import SpatialIndex


@pytest.fixture(scope="module")
def pts():
    rng = np.random.default_rng(7)
    n = 60_000
    x = np.r_[rng.normal(0, 1, n // 2), rng.normal(4, 0.3, n // 2)].astype(np.float32)
    y = np.r_[rng.normal(0, 2, n // 2), rng.normal(-3, 0.5, n // 2)].astype(np.float32)
    # duplicates and points exactly on the extremes
    x[:50] = x[50]
    y[:50] = y[50]
    lab = rng.integers(0, 5, n)
    val = rng.normal(size=n)
    val[::97] = np.nan
    correct = rng.random(n) > 0.2
    q = rng.random(n).astype(np.float32)
    return dict(x=x, y=y, label=lab, val=val, correct=correct, knn_preservation=q)


@pytest.fixture(scope="module", params=["numba", "datashader"])
def fr(pts, request):
    """Both CPU paths: numba kernels over the Z-order runs (the default) and Datashader's
    Canvas.points on the gathered points."""
    cols = {k: v for k, v in pts.items() if k not in ("x", "y")}
    return FrameRenderer.from_arrays(pts["x"], pts["y"], columns=cols, backend=request.param,
                                     exact_budget=10_000)


def _ds_agg(pts, color, x_range, y_range, w, h):
    """Datashader called directly on the whole dataframe (the trusted reference)."""
    import datashader as dsh

    df = pd.DataFrame({"x": pts["x"], "y": pts["y"]})
    cv = dsh.Canvas(plot_width=w, plot_height=h, x_range=x_range, y_range=y_range)
    if color is None:
        return cv.points(df, "x", "y", agg=dsh.count())
    if color == "label":
        df["label"] = pd.Categorical(pts["label"].astype(str), categories=[str(i) for i in range(5)])
        return cv.points(df, "x", "y", agg=dsh.count_cat("label"))
    if color == "correct":
        df["v"] = 1.0 - pts["correct"].astype(np.float64)
    else:
        df["v"] = pts[color].astype(np.float64)
    return cv.points(df, "x", "y", agg=dsh.mean("v"))


VIEWS = [((-4.0, 6.0), (-8.0, 7.0), 200, 150),      # everything
         ((0.2, 0.9), (-0.5, 0.3), 120, 90),         # zoomed in
         ((3.95, 4.05), (-3.05, -2.95), 64, 64),     # deep zoom in the dense blob
         ((100.0, 101.0), (100.0, 101.0), 10, 10)]   # nothing in view


@pytest.mark.parametrize("color", [None, "label", "val", "correct", "knn_preservation"])
@pytest.mark.parametrize("view", VIEWS)
def test_exact_frame_equals_datashader(fr, pts, color, view):
    xr_, yr_, w, h = view
    agg, mode, level, _ = fr.aggregate(x_range=xr_, y_range=yr_, width=w, height=h,
                                       color_by=color, mode="exact")
    ref = _ds_agg(pts, color, xr_, yr_, w, h)
    assert mode == "exact"
    np.testing.assert_array_equal(np.isnan(np.asarray(agg, float)), np.isnan(np.asarray(ref, float)))
    np.testing.assert_allclose(np.nan_to_num(np.asarray(agg, float)),
                               np.nan_to_num(np.asarray(ref, float)), rtol=1e-9, atol=1e-12)
    # The PNG is the image Datashader itself makes: tf.shade + tf.dynspread + to_pil.
    from PIL import Image

    png = fr.render(x_range=xr_, y_range=yr_, width=w, height=h, color_by=color,
                    mode="exact").png
    got = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))
    want = np.asarray(fr.shade_reference(ref, color).to_pil().convert("RGBA"))
    assert got.shape == (h, w, 4)
    if color == "label":
        # categorical frames mix colours in float64 (Datashader: float32): at most one level
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("color", [None, "label"])
def test_filtered_frame_equals_datashader_on_filtered_rows(fr, pts, color):
    where = {"label": ["1", "3"], "correct": ["False"]}
    keep = np.isin(pts["label"], [1, 3]) & ~pts["correct"]
    sub = {k: v[keep] for k, v in pts.items()}
    xr_, yr_ = (-4.0, 6.0), (-8.0, 7.0)
    agg, mode, _, n = fr.aggregate(x_range=xr_, y_range=yr_, width=120, height=90,
                                   color_by=color, where=where)
    assert mode == "exact" and n <= keep.sum()
    ref = _ds_agg(sub, color, xr_, yr_, 120, 90)
    np.testing.assert_array_equal(np.asarray(agg), np.asarray(ref))
    assert fr.render(x_range=xr_, y_range=yr_, width=50, height=40, color_by=color,
                     where=where).png[:4] == b"\x89PNG"
    for bad, frag in (({"nope": ["1"]}, "nope"), ({"label": ["99"]}, "99"),
                      ({"val": ["1"]}, "numeric")):
        with pytest.raises(InputError, match=frag):
            fr.render(x_range=xr_, y_range=yr_, width=10, height=10, where=bad)


def test_zoomed_frame_touches_only_visible_points(fr, pts):
    xr_, yr_ = (3.95, 4.05), (-3.05, -2.95)
    agg, mode, _, touched = fr.aggregate(x_range=xr_, y_range=yr_, width=64, height=64)
    inside = ((pts["x"] >= xr_[0]) & (pts["x"] <= xr_[1]) & (pts["y"] >= yr_[0])
              & (pts["y"] <= yr_[1])).sum()
    assert mode == "exact"
    assert inside <= touched <= max(4 * inside, 200)
    assert touched < len(pts["x"]) / 20
    assert int(np.asarray(agg).sum()) == inside


@pytest.mark.parametrize("color", [None, "label", "val"])
def test_pyramid_frame_close_to_exact(fr, pts, color):
    xr_, yr_ = (-4.0, 6.0), (-8.0, 7.0)
    w, h = 100, 80
    agg, mode, level, cells = fr.aggregate(x_range=xr_, y_range=yr_, width=w, height=h,
                                           color_by=color)
    assert mode == "pyramid" and level is not None
    assert cells < len(pts["x"])  # aggregated cells, not points
    ref = np.asarray(_ds_agg(pts, color, xr_, yr_, w, h), float)
    a = np.asarray(agg, float)
    if color == "val":
        both = np.isfinite(a) & np.isfinite(ref)
        assert both.sum() > 0.9 * np.isfinite(ref).sum()
        assert np.corrcoef(a[both], ref[both])[0, 1] > 0.5
        return
    # Every point is counted once; it lands within a pixel of where Datashader puts it.
    assert a.sum() == pytest.approx(ref.sum())
    if a.ndim == 3:
        a, ref = a.sum(2), ref.sum(2)
    # Points move by less than a pixel: compare at the scale of a 3 x 3 neighbourhood.
    from scipy.ndimage import uniform_filter

    sa, sr = uniform_filter(a, 3), uniform_filter(ref, 3)
    assert np.corrcoef(sa.ravel(), sr.ravel())[0, 1] > 0.97
    assert np.abs(sa - sr).sum() < 0.15 * sr.sum()


def _pyramid_error(a, ref):
    """How far a pyramid aggregate is from the exact one at the scale of a 3 x 3
    neighbourhood (points move by less than a pixel): (correlation, share of counts moved)."""
    from scipy.ndimage import uniform_filter

    sa, sr = uniform_filter(a, 3), uniform_filter(ref, 3)
    return np.corrcoef(sa.ravel(), sr.ravel())[0, 1], np.abs(sa - sr).sum() / sr.sum()


@pytest.mark.parametrize("color", [None, "label"])
def test_filtered_pyramid_frame_close_to_exact_filtered(fr, pts, color):
    """A filter on one categorical column, coloured by density or that column, is drawn from
    the pyramid's per-cell category counts: every matching point counted once, in its
    category, within a pixel of the exact filtered frame (no further than the unfiltered
    pyramid frame is from its exact frame); no filter mask is made."""
    from PIL import Image

    where = {"label": ["1", "3"]}
    kw = dict(x_range=(-4.0, 6.0), y_range=(-8.0, 7.0), width=100, height=80, color_by=color)
    fr._filters.clear()
    agg, mode, level, items = fr.aggregate(where=where, **kw)
    assert mode == "pyramid" and level is not None and items < len(pts["x"])
    assert not fr._filters  # no mask of the n points for a pyramid frame
    ex, emode, *_ = fr.aggregate(where=where, mode="exact", **kw)
    un, umode, ulevel, uitems = fr.aggregate(**kw)
    unex, *_ = fr.aggregate(mode="exact", **kw)
    assert emode == "exact" and umode == "pyramid" and ulevel == level
    a, e, u, ue = (np.asarray(v, float) for v in (agg, ex, un, unex))
    inside = ((pts["x"] >= -4) & (pts["x"] <= 6) & (pts["y"] >= -8) & (pts["y"] <= 7))
    assert e.sum() == np.isin(pts["label"], [1, 3])[inside].sum() > 0
    if a.ndim == 3:
        # per category the same totals; the categories filtered out are empty
        np.testing.assert_array_equal(a.sum((0, 1)), e.sum((0, 1)))
        assert a[..., [0, 2, 4]].sum() == 0
        a, e, u, ue = a.sum(2), e.sum(2), u.sum(2), ue.sum(2)
    assert a.sum() == e.sum()
    corr, moved = _pyramid_error(a, e)
    ucorr, umoved = _pyramid_error(u, ue)
    assert corr > 0.97 and moved < 0.15
    assert moved <= max(1.5 * umoved, umoved + 0.02)  # (fewer points: a little noisier)
    if fr.backend.name == "numba":  # items: the cells visited, as unfiltered
        assert items == uitems
    # the frame's PNG is Datashader's shading of that aggregate
    fr._filters.clear()  # (the exact frame above made the mask)
    f = fr.render(where=where, **kw)
    assert f.mode == "pyramid" and not fr._filters
    got = np.asarray(Image.open(io.BytesIO(f.png)).convert("RGBA")).astype(int)
    want = np.asarray(fr.shade_reference(agg, color).to_pil().convert("RGBA")).astype(int)
    assert np.abs(got - want).max() <= (1 if color else 0)
    # values are checked against the colouring's categories, still without a mask
    for bad, frag in (({"label": ["1", "99"]}, "no value '99'"), ({"nope": ["1"]}, "nope")):
        with pytest.raises(InputError, match=frag):
            fr.render(where=bad, **kw)
    assert not fr._filters
    # a filter on one column coloured by another, several columns, a mean: exact, as before
    for c2, w2 in (("label", {"correct": ["False"]}), (None, {"label": ["1"], "correct":
                                                                ["True"]}), ("val", where)):
        assert fr.render(where=w2, **dict(kw, color_by=c2)).mode == "exact"


@pytest.mark.parametrize("color", [None, "label", "val", "correct"])
def test_fast_shading_equals_tf_shade_on_pyramid_frames(fr, color):
    agg, mode, *_ = fr.aggregate(x_range=(-4.0, 6.0), y_range=(-8.0, 7.0), width=100,
                                 height=80, color_by=color, mode="pyramid")
    assert mode == "pyramid"
    np.testing.assert_array_equal(np.asarray(fr.shade(agg, color).data),
                                  np.asarray(fr.shade_reference(agg, color).data))


def test_sparse_categorical_pyramid_frame_matches_tf_shade(fr):
    from PIL import Image

    kw = dict(x_range=(-4.0, 6.0), y_range=(-8.0, 7.0), width=100, height=80, color_by="label")
    agg, mode, *_ = fr.aggregate(mode="pyramid", **kw)
    f = fr.render(mode="pyramid", **kw)
    assert mode == f.mode == "pyramid"
    got = np.asarray(Image.open(io.BytesIO(f.png)).convert("RGBA")).astype(int)
    want = np.asarray(fr.shade_reference(agg, "label").to_pil().convert("RGBA")).astype(int)
    assert np.abs(got - want).max() <= 1


def test_eq_hist_matches_datashader_on_wide_ranges():
    import datashader.transfer_functions as tf

    from bigembed.view.shade import eq_hist_levels

    rng = np.random.default_rng(2)
    for d in (rng.integers(0, 5, 1000), rng.integers(0, 10**7, 5000),  # exact; binned
              np.zeros(10, np.int64), rng.random(3000) * 1e6):         # one level; floats
        ref, _ = tf.eq_hist(d.copy())
        levels, index = eq_hist_levels(d)
        np.testing.assert_allclose(levels[index], ref, rtol=0, atol=0)


def test_render_png_and_legend(fr):
    png = fr.render_png(x_range=(-4, 6), y_range=(-8, 7), width=300, height=200, color_by="label")
    from PIL import Image

    assert Image.open(io.BytesIO(png)).size == (300, 200)
    leg = fr.legend("label")
    assert leg["kind"] == "categorical" and [i["name"] for i in leg["items"]] == list("01234")
    assert fr.legend("val")["kind"] == "mean"
    assert fr.legend("correct")["span"] == [0.0, 1.0]
    assert fr.legend(None)["kind"] == "density"


@pytest.mark.parametrize("kw, frag", [
    (dict(x_range=(1, 0), y_range=(0, 1), width=10, height=10), "x_range"),
    (dict(x_range=(0, float("nan")), y_range=(0, 1), width=10, height=10), "x_range"),
    (dict(x_range=(0, 1), y_range=(0, float("inf")), width=10, height=10), "y_range"),
    (dict(x_range=(0, 1), y_range=(0, 1), width=0, height=10), "width"),
    (dict(x_range=(0, 1), y_range=(0, 1), width=10, height=10**6), "height"),
    (dict(x_range=(0, 1), y_range=(0, 1), width=10, height=10, color_by="nope"), "nope"),
    (dict(x_range="ab", y_range=(0, 1), width=10, height=10), "x_range"),
    (dict(x_range=(1.0, 1.0 + 1e-15), y_range=(0, 1), width=10, height=10), "x_range"),
    (dict(x_range=(-1e308, 1e308), y_range=(0, 1), width=10, height=10), "x_range"),
])
def test_bad_frame_arguments(fr, kw, frag):
    with pytest.raises(InputError, match=frag):
        fr.render_png(**kw)


def test_adversarial_layouts():
    # all points identical, one point, zero points
    for x in (np.full(1000, 2.5, np.float32), np.array([1.0], np.float32), np.empty(0, np.float32)):
        r = FrameRenderer.from_arrays(x, x.copy())
        f = r.render(width=32, height=16)
        assert f.png[:8] == b"\x89PNG\r\n\x1a\n"
        agg, *_ = r.aggregate(x_range=(-10, 10), y_range=(-10, 10), width=20, height=20)
        assert int(np.asarray(agg).sum()) == len(x)
    with pytest.raises(InputError, match="finite"):
        FrameRenderer.from_arrays(np.array([0.0, np.nan]), np.array([0.0, 1.0]))


def test_spatial_index_matches_brute_force(pts):
    idx = SpatialIndex(pts["x"], pts["y"])
    rng = np.random.default_rng(0)
    for _ in range(20):
        x0, y0 = rng.uniform(-3, 5), rng.uniform(-6, 4)
        w, h = rng.uniform(0.001, 3, 2)
        pos = idx.box((x0, x0 + w), (y0, y0 + h))
        want = np.flatnonzero((pts["x"] >= x0) & (pts["x"] <= x0 + w) & (pts["y"] >= y0)
                              & (pts["y"] <= y0 + h))
        np.testing.assert_array_equal(np.sort(idx.ids[pos]), want)
    for _ in range(20):
        qx, qy = rng.uniform(-3, 5), rng.uniform(-6, 4)
        ids, d = idx.nearest(qx, qy, k=7)
        dd = np.hypot(pts["x"].astype(float) - qx, pts["y"].astype(float) - qy)
        np.testing.assert_allclose(d, np.sort(dd)[:7], rtol=1e-6)
    # a query far outside finds the nearest anyway; radius limits
    ids, d = idx.nearest(1e4, 1e4, k=3)
    assert len(ids) == 3
    ids, d = idx.nearest(1e4, 1e4, k=3, radius=1.0)
    assert len(ids) == 0


def test_pick_and_2d_neighbours(fr, pts):
    i = 12345
    x, y = float(pts["x"][i]), float(pts["y"][i])
    got = fr.pick(x, y, 1e-3)
    assert got is not None and pts["x"][got] == pts["x"][i] and pts["y"][got] == pts["y"][i]
    assert fr.pick(1e3, 1e3, 1.0) is None
    nb = fr.neighbors_2d(i, 10)
    d = np.hypot(pts["x"].astype(float) - x, pts["y"].astype(float) - y)
    d[i] = np.inf
    np.testing.assert_allclose(np.sort(d[nb]), np.sort(d)[:10], rtol=1e-6)
    assert i not in nb
    np.testing.assert_allclose(fr.xy([i, 0]), [[x, y], [pts["x"][0], pts["y"][0]]])
    # duplicates: point 0..49 share a location; each one's 2-D neighbours are the others
    nb0 = fr.neighbors_2d(0, 49)
    assert set(nb0.tolist()) == set(range(1, 50))


# -- kernel: torch (CPU device) against the numpy reference and Datashader ----------------------


def test_raster_kernel_reference_matches_datashader(pts):
    import datashader as dsh

    xr_, yr_ = (-2.0, 4.2), (-5.0, 3.0)
    x = pts["x"].copy()
    x[:5] = 4.2  # on the upper edge: goes in the last pixel, as in Datashader
    ref = bin_points_reference(x, pts["y"], x_range=xr_, y_range=yr_, width=97, height=61)
    df = pd.DataFrame({"x": x, "y": pts["y"]})
    want = dsh.Canvas(97, 61, x_range=xr_, y_range=yr_).points(df, "x", "y", agg=dsh.count())
    np.testing.assert_array_equal(ref, np.asarray(want))


def test_raster_kernel_torch_cpu_matches_reference(pts):
    torch = pytest.importorskip("torch")
    from bigembed.kernels.raster import bin_points_torch

    kw = dict(x_range=(-2.0, 4.2), y_range=(-5.0, 3.0), width=97, height=61)
    x, y = pts["x"], pts["y"]
    w = np.abs(pts["val"]).astype(np.float64)
    w[~np.isfinite(w)] = 0
    for extra_ref, extra_t in [
        ({}, {}),
        (dict(weights=w), dict(weights=torch.as_tensor(w))),
        (dict(categories=pts["label"], n_categories=5),
         dict(categories=torch.as_tensor(pts["label"]), n_categories=5)),
    ]:
        ref = bin_points_reference(x, y, **kw, **extra_ref)
        got = bin_points_torch(torch.as_tensor(x), torch.as_tensor(y), **kw, **extra_t)
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)


@pytest.mark.parametrize("color", [None, "label", "val"])
def test_torch_cpu_backend_frames_match_datashader(pts, color):
    pytest.importorskip("torch")
    cols = {k: v for k, v in pts.items() if k not in ("x", "y")}
    a = FrameRenderer.from_arrays(pts["x"], pts["y"], columns=cols, backend="torch-cpu")
    b = FrameRenderer.from_arrays(pts["x"], pts["y"], columns=cols, backend="datashader")
    for mode in ("exact", "pyramid"):
        for where in (None, {"label": ["1", "3"]}):  # (filtered pyramid: gathered pairs)
            kw = dict(x_range=(-4.0, 6.0), y_range=(-8.0, 7.0), width=90, height=70,
                      color_by=color, mode=mode, where=where)
            ga, ma, *_ = a.aggregate(**kw)
            gb, mb, *_ = b.aggregate(**kw)
            pyr = mode == "pyramid" and (where is None or color != "val")
            assert ma == mb == ("pyramid" if pyr else "exact")
            ga, gb = np.asarray(ga, float), np.asarray(gb, float)
            np.testing.assert_allclose(np.nan_to_num(ga), np.nan_to_num(gb), rtol=1e-6,
                                       atol=1e-9)


def test_run_positions_torch_equals_numpy():
    torch = pytest.importorskip("torch")
    from bigembed.kernels.raster import run_positions_torch

    for runs in ([[0, 0]], [[3, 7], [10, 11], [20, 20], [25, 30]], []):
        r = np.asarray(runs, np.int64).reshape(-1, 2)
        np.testing.assert_array_equal(run_positions_torch(torch.as_tensor(r)).numpy(),
                                      SpatialIndex.positions(r))


@pytest.mark.parametrize("color", [None, "label"])
def test_torch_cpu_filtered_frame_equals_numba(pts, color):
    pytest.importorskip("torch")
    cols = {k: v for k, v in pts.items() if k not in ("x", "y")}
    a = FrameRenderer.from_arrays(pts["x"], pts["y"], columns=cols, backend="torch-cpu")
    b = FrameRenderer.from_arrays(pts["x"], pts["y"], columns=cols, backend="numba")
    kw = dict(x_range=(0.2, 0.9), y_range=(-0.5, 0.3), width=60, height=40, color_by=color,
              where={"label": ["1", "3"]})
    ga, ma, _, na = a.aggregate(**kw)
    gb, mb, _, nb = b.aggregate(**kw)
    assert ma == mb == "exact" and na >= nb  # torch counts the candidates it gathered
    np.testing.assert_array_equal(np.asarray(ga), np.asarray(gb))


@pytest.mark.gpu
def test_torch_cuda_backend_matches_datashader(pts):
    a = FrameRenderer.from_arrays(pts["x"], pts["y"], columns={"label": pts["label"]},
                                  backend="torch-cuda")
    b = FrameRenderer.from_arrays(pts["x"], pts["y"], columns={"label": pts["label"]},
                                  backend="datashader")
    for color in (None, "label"):
        kw = dict(x_range=(-4.0, 6.0), y_range=(-8.0, 7.0), width=90, height=70, color_by=color,
                  mode="exact")
        np.testing.assert_allclose(np.asarray(a.aggregate(**kw)[0], float),
                                   np.asarray(b.aggregate(**kw)[0], float))


@pytest.mark.parametrize("fill", [0.0, 0.0005, 0.02, 0.3, 0.9])
def test_dynspread_equals_datashader(fill):
    """The spreading decision (neighbour share per radius) and the spread image are
    Datashader's own, on empty, sparse and dense images."""
    import datashader.transfer_functions as tf

    from bigembed.kernels.raster import neighbour_share
    from bigembed.view import shade as sh

    rng = np.random.default_rng(int(fill * 1e4))
    h, w = 90, 120
    a = np.zeros((h, w), np.uint32)
    on = rng.random((h, w)) < fill
    a[on] = rng.integers(1 << 24, 1 << 32, on.sum(), dtype=np.uint64).astype(np.uint32)
    img = tf.Image(a, coords={"y": np.arange(h), "x": np.arange(w)}, dims=("y", "x"))
    from datashader.transfer_functions import _rgb_density

    from bigembed.kernels.raster import spreads

    nz = np.flatnonzero(a)
    for r in (1, 2, 4):
        assert neighbour_share(a, r) == _rgb_density(a, r)
        for th in (0.0, 0.3, 0.5, 0.9, 1.0):  # the early-stopping decision, same answer
            assert spreads(a, nz, r, th) == (_rgb_density(a, r) > th)
    for th, mx in ((0.5, 2), (0.9, 3), (0.0, 1)):
        np.testing.assert_array_equal(sh.dynspread(img, threshold=th, max_px=mx).data,
                                      tf.dynspread(img, threshold=th, max_px=mx).data)
