"""One conformance suite per stage, run against every registered backend (openTSNE's
``KNNIndexTestMixin`` is the model): the same checks, whichever backend answers.

A backend this machine cannot run is still tested where it has a CPU twin (the torch kernels
run on the CPU device by name); otherwise it is skipped with the registry's reason. Every
backend must implement its stage's interface, and asking for one that cannot run by name must
say how to install it.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.manifold import trustworthiness
from sklearn.neighbors import NearestNeighbors

from bigembed import registry
from bigembed.errors import BackendUnavailable, InputError
from bigembed.search.exact import exact_knn

STAGES = sorted(registry.STAGE_MODULES)
#: backends that also run on the CPU device when asked by option (the GPU path's CPU twin)
CPU_TWINS = {("knn", "torch"): {"device": "cpu"}, ("reduce", "torch"): {"device": "cpu"},
             ("raster", "torch-cuda"): {"device": "cpu"}}


def _backends(stage):
    return [(stage, name) for name in registry.stage(stage).names()]


def _make(stage: str, name: str):
    """The backend object, or the CPU twin of a GPU backend, or a skip with the reason."""
    st = registry.stage(stage)
    b = st.backends[name]
    why = b.unavailable_reason()
    if why is None:
        return st.create(name)[1]
    twin = CPU_TWINS.get((stage, name))
    if twin and all(not registry.module_missing(m) for m in b.requires):
        obj = b.factory(**twin)
        assert isinstance(obj, st.interface)
        return obj
    pytest.skip(f"{stage} backend {name!r} cannot run here: {why}")


# -- every stage ------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
def test_stage_declares_an_interface_and_backends(stage):
    st = registry.stage(stage)
    assert st.names() and st.choices()[0] == "auto"
    assert isinstance(st.interface, type) and st.interface.__doc__
    for b in st.backends.values():
        assert b.description and b.install, (stage, b.name)


@pytest.mark.parametrize("stage,name", [p for s in STAGES for p in _backends(s)])
def test_backend_implements_the_interface(stage, name):
    st = registry.stage(stage)
    b = st.backends[name]
    if b.unavailable_reason() is None:
        _, obj = st.create(name)
        assert isinstance(obj, st.interface)
    else:  # by name: a clear error with the install hint, never a bare ImportError
        with pytest.raises(BackendUnavailable) as e:
            st.create(name)
        assert b.install in str(e.value) and repr(name) in str(e.value)


@pytest.mark.parametrize("stage", STAGES)
def test_auto_picks_a_usable_backend_and_unknown_names_are_refused(stage):
    st = registry.stage(stage)
    usable = st.available()
    if usable:
        assert st.resolve("auto").unavailable_reason() is None
    with pytest.raises(InputError, match=f"^{st.parameter} must be one of"):
        st.resolve("no-such-backend")


@pytest.mark.parametrize("command,stage,flag", [
    ("reduce", "reduce", "--backend"), ("index", "knn", "--backend"),
    ("neighbors", "knn", "--backend"), ("serve", "raster", "--backend"),
])
def test_cli_choices_come_from_the_registry(command, stage, flag):
    from bigembed.commands.cli import build_parser

    sub = build_parser().parse_args([command, "x"] if command != "neighbors" else
                                    [command, "x", "--id", "0"])._commands[command]
    action = next(a for a in sub._actions if flag in a.option_strings)
    assert list(action.choices) == registry.stage(stage).choices()
    for name in registry.stage(stage).names():
        assert name in action.help


# -- knn: the search backends -----------------------------------------------------------------


@pytest.fixture(scope="module")
def vectors():
    """Clustered vectors with exact duplicates and an all-zero row: ties on purpose."""
    rng = np.random.default_rng(7)
    centres = rng.normal(0, 3, (8, 12))
    x = (centres[rng.integers(0, 8, 1500)] + rng.standard_normal((1500, 12))).astype(np.float32)
    x[100:105] = x[0]
    x[200] = 0.0
    return x


@pytest.mark.parametrize("name", registry.stage("knn").names())
def test_knn_backend_exact_search_matches_scikit_learn(name, vectors):
    import faiss

    obj = _make("knn", name)
    x = vectors
    q = np.concatenate([x[:40], x[100:102] + 1e-3, x[200:201]])
    searcher = obj.exact_searcher(lambda: x, "l2")
    if searcher is None:
        index = faiss.IndexFlatL2(x.shape[1])
        searcher = obj.to_device(index)
        searcher.add(x)
    d, i = searcher.search(q, 10)
    td, _ = NearestNeighbors(n_neighbors=10, algorithm="brute").fit(x).kneighbors(q)
    assert d.shape == i.shape == (len(q), 10) and (i >= 0).all() and (i < len(x)).all()
    # squared L2, nearest first; ids may differ only among ties at equal distance
    np.testing.assert_allclose(np.sqrt(np.maximum(d, 0)), td, rtol=1e-3, atol=2e-3)
    got = np.sqrt(np.maximum(((q[:, None, :] - x[i]) ** 2).sum(-1), 0))
    np.testing.assert_allclose(got, td, rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("name", registry.stage("knn").names())
def test_knn_backend_inner_product(name, vectors):
    import faiss

    obj = _make("knn", name)
    x = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    x = x.astype(np.float32)
    searcher = obj.exact_searcher(lambda: x, "ip")
    if searcher is None:
        index = faiss.IndexFlatIP(x.shape[1])
        searcher = obj.to_device(index)
        searcher.add(x)
    d, i = searcher.search(x[:30], 5)
    td, _ = exact_knn(x[:30], x, 5, "ip")
    np.testing.assert_allclose(d, td, rtol=1e-3, atol=2e-3)  # inner product, largest first
    assert (np.diff(d, axis=1) <= 1e-5).all()


@pytest.mark.parametrize("name", registry.stage("knn").names())
def test_knn_backend_searches_an_ivf_index(name, vectors):
    import faiss

    obj = _make("knn", name)
    x = vectors
    quantizer = faiss.IndexFlatL2(x.shape[1])
    index = faiss.IndexIVFFlat(quantizer, x.shape[1], 16)
    index.train(x)
    index.nprobe = 16  # all lists: exact
    work = obj.to_device(index)
    work.add(x)
    d, i = work.search(x[:50], 5)
    td, _ = exact_knn(x[:50], x, 5, "l2")
    np.testing.assert_allclose(d, td, rtol=1e-3, atol=1e-2)


# -- reduce: the layout backends --------------------------------------------------------------


@pytest.fixture(scope="module")
def blobs3():
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 6, (3, 10))
    labels = rng.integers(0, 3, 300)
    x = (centres[labels] + rng.standard_normal((300, 10))).astype(np.float32)
    d, i = exact_knn(x, x, 16, "l2")
    from bigembed.search.exact import drop_self

    d, i = drop_self(d, i, np.arange(len(x)), 15)
    return x, np.sqrt(np.maximum(d, 0)).astype(np.float32), i


def _init(x):
    from bigembed.reduce.run import initial_layout

    return initial_layout(x, seed=0)


@pytest.mark.parametrize("method", ["umap", "tsne", "pca"])
@pytest.mark.parametrize("name", registry.stage("reduce").names())
def test_layout_backend_method(name, method, blobs3):
    st = registry.stage("reduce")
    b = st.backends[name]
    obj = _make("reduce", name)
    x, dist, ind = blobs3
    if not b.does(method):  # the contract for a method it lacks: a clear error
        with pytest.raises(BackendUnavailable):
            getattr(obj, method)(indices=ind, distances=dist, x=x, init=_init(x),
                                 perplexity=30, n_iter=100, seed=0)
        with pytest.raises(InputError, match=f"has no {method}"):
            st.resolve(name, method=method)
        return
    if b.unavailable_reason(method) is not None and (name, method) != ("torch", "umap"):
        pytest.skip(b.unavailable_reason(method))
    if method == "pca":
        xy = obj.pca(vectors=x, seed=0)
    elif method == "umap":
        xy = obj.umap(indices=ind, distances=dist, x=x, init=_init(x), n_neighbors=15,
                      min_dist=0.1, n_epochs=100, seed=0)
    else:
        xy = obj.tsne(indices=ind, distances=dist, x=x, init=_init(x), perplexity=20,
                      n_iter=300, seed=0)
    xy = np.asarray(xy)
    assert xy.shape == (len(x), 2) and xy.dtype == np.float32 and np.isfinite(xy).all()
    assert trustworthiness(x, xy, n_neighbors=10) > 0.9
    assert isinstance(obj.fit_rows, int) and obj.fit_rows > 0
    assert isinstance(obj.fit_info(method, len(x)), dict)


# -- extract: where the model runs ------------------------------------------------------------


@pytest.mark.parametrize("name", registry.stage("extract").names())
def test_extract_device_runs_a_model_like_plain_torch(name, tmp_path):
    torch = pytest.importorskip("torch")
    obj = _make("extract", name)
    assert isinstance(obj.device, torch.device)
    assert isinstance(obj.default_workers, int) and obj.default_workers >= 0
    obj.free_memory()
    from bigembed import Dataset
    from bigembed.extract import extract

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = torch.randn(50, 6)
    data = torch.utils.data.TensorDataset(x, torch.randint(0, 3, (50,)))
    r = extract(model=model, data=data, layers=["0", "2"], out=tmp_path / "d",
                device=name.removeprefix("torch-"), batch_size=16, progress=False)
    ds = Dataset.open(r.path)
    with torch.no_grad():
        h = model[0](x)
        logits = model(x)
    np.testing.assert_allclose(ds.space("0").vectors, h.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.space("2").vectors, logits.numpy(), rtol=1e-5, atol=1e-5)
    assert (ds.meta["prediction"].to_numpy() == logits.argmax(1).numpy()).all()


# -- raster: what bins a frame's points -------------------------------------------------------


RASTER_LABELS = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def raster_points():
    """A layout with every point of an integer grid (pixel edges of the views below, the
    upper edges included) repeated 1-3 times, a blob, far outliers; a categorical column, a
    float column with NaNs and one that is all NaN."""
    rng = np.random.default_rng(5)
    gx, gy = np.meshgrid(np.arange(-1, 12), np.arange(-1, 12))
    rep = rng.integers(1, 4, gx.size)
    x = np.r_[np.repeat(gx.ravel(), rep), rng.normal(5, 2.5, 3000), [-1e3, 1e3]]
    y = np.r_[np.repeat(gy.ravel(), rep), rng.normal(5, 2.5, 3000), [1e3, -1e3]]
    n = len(x)
    val = rng.normal(size=n)
    val[::7] = np.nan
    return dict(x=x.astype(np.float32), y=y.astype(np.float32),
                label=rng.choice(np.array(RASTER_LABELS), n), val=val,
                allnan=np.full(n, np.nan))


RASTER_VIEWS = [((0.0, 10.0), (0.0, 10.0), 10, 10),    # pixel edges on the grid points
                ((0.0, 10.0), (0.0, 10.0), 7, 3),      # edges between them
                ((-1.0, 11.0), (-1.0, 11.0), 48, 40),  # the grid and the blob
                ((4.5, 5.5), (4.5, 5.5), 16, 16),      # zoomed in
                ((50.0, 60.0), (50.0, 60.0), 8, 8)]    # nothing in view
RASTER_COLOURS = [None, "label", "val", "allnan"]


def _raster(name, pts, **kw):
    from bigembed.view.frames import FrameRenderer

    cols = {k: v for k, v in pts.items() if k not in ("x", "y")}
    return FrameRenderer.from_arrays(pts["x"], pts["y"], columns=cols,
                                     backend=_make("raster", name), **kw)


def _ds_points(x, y, color, cols, view, weights=None):
    """Datashader's own aggregate of points (x, y), each weighted by ``weights`` (None: 1):
    count / count per category / mean of ``cols[color]``; with weights ``cols[color]`` is
    (sum, count) of the values per point for a mean and the category per point otherwise."""
    import datashader as dsh
    import pandas as pd

    (xr_, yr_, w, h) = view
    cv = dsh.Canvas(plot_width=w, plot_height=h, x_range=xr_, y_range=yr_)
    df = pd.DataFrame({"x": x, "y": y, "w": np.ones(len(x)) if weights is None else weights})
    if color is None:
        if weights is None:
            return cv.points(df, "x", "y", agg=dsh.count())
        # sums of whole counts, NaN where empty: as counts (tf.shade treats 0 as empty then)
        return cv.points(df, "x", "y", agg=dsh.sum("w")).fillna(0).astype(np.uint32)
    v = cols[color]
    if isinstance(v, tuple):  # mean of cells: sum of sums over sum of counts
        df["s"], df["m"] = v
        tot = cv.points(df, "x", "y", agg=dsh.sum("s"))
        num = cv.points(df, "x", "y", agg=dsh.sum("m"))
        return tot / num.where(num > 0)
    if v.dtype.kind in "OUSi":  # labels, or category codes (of pyramid cells)
        df["c"] = (pd.Categorical.from_codes(v, categories=RASTER_LABELS) if v.dtype.kind == "i"
                   else pd.Categorical(v, categories=RASTER_LABELS))
        if weights is None:
            return cv.points(df, "x", "y", agg=dsh.count_cat("c"))
        return cv.points(df, "x", "y", agg=dsh.by("c", dsh.sum("w"))).fillna(0).astype(np.uint32)
    df["v"] = v
    return cv.points(df, "x", "y", agg=dsh.mean("v"))


def _same(got, want, rtol=1e-9):
    got, want = np.asarray(got, float), np.asarray(want, float)
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(np.nan_to_num(got), np.nan_to_num(want), rtol=rtol, atol=1e-12)


def _image(png):
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA")).astype(int)


def _check_image(fr, png, ref_agg, color):
    """The frame is the image Datashader itself shades from its own aggregate (categorical
    colours are mixed in float64 where Datashader uses float32: at most one level)."""
    got = _image(png)
    want = np.asarray(fr.shade_reference(ref_agg, color).to_pil().convert("RGBA")).astype(int)
    assert np.abs(got - want).max() <= (1 if color == "label" else 0)


@pytest.mark.parametrize("color", RASTER_COLOURS)
@pytest.mark.parametrize("name", registry.stage("raster").names())
def test_raster_backend_exact_frames_equal_datashader(name, color, raster_points):
    fr = _raster(name, raster_points)
    pts = raster_points
    for view in RASTER_VIEWS:
        xr_, yr_, w, h = view
        kw = dict(x_range=xr_, y_range=yr_, width=w, height=h, color_by=color, mode="exact")
        agg, mode, level, _ = fr.aggregate(**kw)
        ref = _ds_points(pts["x"], pts["y"], color, pts, view)
        assert (mode, level) == ("exact", None)
        _same(agg, ref)
        f = fr.render(**kw)
        assert f.mode == "exact" and _image(f.png).shape == (h, w, 4)
        _check_image(fr, f.png, ref, color)
    # a filter bins only the matching points
    keep = np.isin(pts["label"], ["b", "d"])
    sub = {k: v[keep] for k, v in pts.items()}
    view = RASTER_VIEWS[2]
    agg, mode, *_ = fr.aggregate(x_range=view[0], y_range=view[1], width=view[2],
                                 height=view[3], color_by=color, where={"label": ["b", "d"]})
    assert mode == "exact"
    _same(agg, _ds_points(sub["x"], sub["y"], color, sub, view))


@pytest.mark.parametrize("color", RASTER_COLOURS)
@pytest.mark.parametrize("name", registry.stage("raster").names())
def test_raster_backend_pyramid_frames_equal_datashader_on_the_cells(name, color,
                                                                      raster_points):
    """A pyramid frame is Datashader's aggregate of the level's cells as weighted points at
    their centroids; every backend makes the same one."""
    fr = _raster(name, raster_points, exact_budget=10)
    (x0, x1), (y0, y1) = fr.index.bounds
    view = ((x0, x1), (y0, y1), 30, 20)  # every cell of the level is in view
    kw = dict(x_range=view[0], y_range=view[1], width=30, height=20, color_by=color)
    agg, mode, level, _ = fr.aggregate(**kw)
    assert mode == "pyramid" and level is not None
    c = fr.colouring(color)
    mx, my, cnt, extra = fr.pyramid.cells(level, c)
    if c.kind == "categorical":
        cell, cat, w, _ = extra
        assert list(c.categories) == RASTER_LABELS
        cols = {color: cat}
        ref = _ds_points(mx[cell], my[cell], color, cols, view, weights=w)
    elif c.kind == "mean":
        ref = _ds_points(mx, my, color, {color: extra}, view, weights=cnt)
    else:
        ref = _ds_points(mx, my, None, {}, view, weights=cnt)
    assert float(np.asarray(cnt).sum()) == len(raster_points["x"])
    _same(agg, ref, rtol=1e-6)  # float32 centroids and weights, float64 sums
    f = fr.render(**kw)
    assert f.mode == "pyramid" and f.level == level
    _check_image(fr, f.png, ref, color)


@pytest.mark.parametrize("color", RASTER_COLOURS)
def test_raster_backends_render_the_same_frames(color, raster_points):
    names = registry.stage("raster").names()
    made = []
    for name in names:
        try:
            made.append((name, _raster(name, raster_points, exact_budget=500)))
        except pytest.skip.Exception:
            continue
    assert len(made) >= 2
    for view in RASTER_VIEWS:
        kw = dict(x_range=view[0], y_range=view[1], width=view[2], height=view[3],
                  color_by=color)
        frames = [(name, fr.render(**kw)) for name, fr in made]
        first = frames[0][1]
        for name, f in frames[1:]:
            assert (f.mode, f.level) == (first.mode, first.level), name
            d = np.abs(_image(f.png) - _image(first.png)).max()
            assert d <= (1 if color == "label" else 0), (name, view, d)
