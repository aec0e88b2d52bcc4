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
             ("raster", "torch-cuda"): None}


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
