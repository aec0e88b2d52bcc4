"""Spaces from several checkpoints, from a training loop, and added to an existing dataset."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import assert_clean_error, run_cli

from bigembed import Dataset, InputError

torch = pytest.importorskip("torch")

from bigembed.compare import compare  # noqa: E402
from bigembed.extract import Recorder, extract  # noqa: E402
from bigembed.models.digits import DigitsData, _build_cnn, load_model  # noqa: E402

N = 600


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small batches on a shared 2-core machine: one thread avoids OpenMP contention stalls.
    The demo CNN comes from the shared model cache (trained once per machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Two state dicts of the demo CNN: freshly initialised ('early') and trained ('final')."""
    d = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(5)
    torch.save(_build_cnn().state_dict(), d / "early.pt")
    torch.save({"state_dict": load_model().state_dict(), "step": 900}, d / "final.pt")
    return d


def vectors(path, space):
    return np.array(Dataset.open(path, verify="full").space(space).vectors)


def alone(path, state_file, n=N, **kw):
    """A checkpoint run on its own: the model built by hand, the state dict loaded by hand."""
    m = _build_cnn()
    sd = torch.load(state_file, weights_only=True)
    m.load_state_dict(sd.get("state_dict", sd))
    kw.setdefault("batch_size", 128)
    return extract(model=m, data=DigitsData(n), out=path, layers=["fc1"], **kw)


def test_weights_give_the_vectors_of_each_checkpoint_alone(tmp_path, ckpts):
    files = [ckpts / "early.pt", ckpts / "final.pt"]
    r = extract(model="digits", data=DigitsData(N), out=tmp_path / "d", layers="fc1",
                weights=files, batch_size=128)
    assert r.spaces == ("fc1@early", "fc1@final") and r.rows == N and not r.cached
    ds = Dataset.open(tmp_path / "d", verify="full")
    assert sorted(ds.spaces) == ["fc1@early", "fc1@final"]
    meta = ds.meta
    for t in ("early", "final"):
        for c in ("prediction", "confidence", "loss", "correct"):
            assert f"{c}@{t}" in meta.columns
    assert "label" in meta.columns and "prediction" not in meta.columns
    for t, f in zip(("early", "final"), files):
        alone(tmp_path / f"alone-{t}", f)
        np.testing.assert_array_equal(vectors(tmp_path / "d", f"fc1@{t}"),
                                      vectors(tmp_path / f"alone-{t}", "fc1"))
        ref = Dataset.open(tmp_path / f"alone-{t}").meta
        np.testing.assert_array_equal(meta[f"prediction@{t}"], ref["prediction"])
        np.testing.assert_allclose(meta[f"loss@{t}"], ref["loss"], rtol=1e-6)
    # The trained checkpoint is right far more often than the untrained one.
    assert meta["correct@final"].mean() > 0.8 > meta["correct@early"].mean()
    # Running it again finds everything there.
    again = extract(model="digits", data=DigitsData(N), out=tmp_path / "d", layers="fc1",
                    weights=files, batch_size=128)
    assert again.cached and again.rows_computed == 0
    # The comparison reads each checkpoint's predictions: flips between them are counted.
    c = compare(ds, a="fc1@early", b="fc1@final", k=10)
    flips = c.summary["prediction_flips"]
    assert sum(v["n"] for v in flips.values()) == N
    assert flips["wrong->right"]["n"] > flips["right->wrong"]["n"]


def test_cli_weights_tags_and_a_checkpoint_that_does_not_fit(tmp_path, ckpts):
    out = tmp_path / "d"
    p = run_cli("extract", "--model", "digits", "--n", 300, "--layers", "fc1", "--out", out,
                "--weights", f"{ckpts / 'early.pt'},{ckpts / 'final.pt'}", "--tag", "s0,s900",
                "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["spaces"] == ["fc1@s0", "fc1@s900"]
    # A state dict of another architecture: refused before anything runs, nothing written.
    bad = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), bad)
    p = run_cli("extract", "--model", "digits", "--n", 300, "--layers", "fc1", "--out",
                tmp_path / "new", "--weights", f"{ckpts / 'early.pt'},{bad}")
    assert_clean_error(p, str(bad), "does not fit", "missing")
    assert not (tmp_path / "new").exists()
    # Same-shaped layer, wrong size: the shape is named.
    sd = load_model().state_dict()
    sd["fc1.weight"] = torch.zeros(32, 512)
    torch.save(sd, tmp_path / "narrow.pt")
    kw = dict(model="digits", data=DigitsData(300), layers="fc1", out=tmp_path / "new")
    for extra, frag in (({"weights": tmp_path / "narrow.pt"}, r"fc1.weight: \(32, 512\)"),
                        ({"weights": tmp_path / "missing.pt"}, "does not exist"),
                        ({"weights": [bad, ckpts / "early.pt"], "tag": "a"},
                         "one per weights file"),
                        ({"weights": [ckpts / "early.pt"], "tag": "x@y"}, "'@'"),
                        ({"weights": [ckpts / "early.pt", tmp_path / "x" / "early.pt"]},
                         "does not exist")):
        with pytest.raises(InputError, match=frag):
            extract(**kw, **extra)
    os.makedirs(tmp_path / "x")
    torch.save(load_model().state_dict(), tmp_path / "x" / "early.pt")
    with pytest.raises(InputError, match="share a name"):
        extract(**kw, weights=[ckpts / "early.pt", tmp_path / "x" / "early.pt"])
    assert not (tmp_path / "new").exists()


def test_adding_spaces_to_an_existing_dataset(tmp_path, ckpts):
    out = tmp_path / "d"
    extract(model="digits", data=DigitsData(N), out=out, layers="fc1", batch_size=128)
    before = Dataset.open(out).meta
    fc1 = vectors(out, "fc1")
    # Another layer of the same model: added; its scores are the ones already there.
    r = extract(model="digits", data=DigitsData(N), out=out, layers="conv2", batch_size=128)
    assert r.spaces == ("conv2",) and r.rows_computed == N
    ds = Dataset.open(out, verify="full")
    assert sorted(ds.spaces) == ["conv2", "fc1"]
    np.testing.assert_array_equal(vectors(out, "fc1"), fc1)
    assert list(ds.meta.columns) == list(before.columns)
    assert not any((out / "cache").glob("extract-*"))  # the staging area is gone
    # Another model's scores need a tag; with it they join as new columns.
    with pytest.raises(InputError, match="--tag"):
        alone(out, ckpts / "early.pt")
    r = alone(out, ckpts / "early.pt", tag="init")
    assert r.spaces == ("fc1@init",)
    meta = Dataset.open(out).meta
    assert "prediction@init" in meta.columns
    np.testing.assert_array_equal(meta["prediction"], before["prediction"])
    # A space that is there already, the wrong row count, other labels: refused, no change.
    manifest = (out / "manifest.json").read_bytes()
    assert alone(out, ckpts / "early.pt", tag="init", batch_size=64).cached  # same again
    with pytest.raises(InputError, match=r"already has space\(s\) \['fc1@init'\]"):
        alone(out, ckpts / "final.pt", tag="init")
    with pytest.raises(InputError, match=f"holds 500 instances but dataset .* has {N}"):
        alone(out, ckpts / "final.pt", n=500, tag="small")
    xr, yr = DigitsData(N).batch(np.arange(N)[::-1].copy())  # the same digits, reversed
    other = torch.utils.data.TensorDataset(torch.as_tensor(xr), torch.as_tensor(yr))
    with pytest.raises(InputError, match="label.*same data in the same order"):
        m = load_model()
        extract(model=m, data=other, out=out, layers=["fc2"], tag="x", batch_size=128)
    assert (out / "manifest.json").read_bytes() == manifest
    assert not any((out / "cache").glob("extract-*"))
    assert sorted(Dataset.open(out, verify="full").spaces) == ["conv2", "fc1", "fc1@init"]
    p = run_cli("extract", "--model", "digits", "--n", 400, "--layers", "fc2", "--out", out)
    assert_clean_error(p, "holds 400 instances", f"has {N}")
    assert (out / "manifest.json").read_bytes() == manifest


def test_ingest_into_an_existing_dataset_checks_the_row_count(tmp_path, small_ds, rng):
    np.save(tmp_path / "ok.npy", rng.normal(size=(2000, 4)).astype(np.float32))
    np.save(tmp_path / "short.npy", rng.normal(size=(1999, 4)).astype(np.float32))
    manifest = (small_ds / "manifest.json").read_bytes()
    p = run_cli("ingest", tmp_path / "short.npy", "--out", small_ds, "--space", "other")
    assert_clean_error(p, "1999 rows", "2000")
    assert p.returncode == 2 and (small_ds / "manifest.json").read_bytes() == manifest
    run_cli("ingest", tmp_path / "ok.npy", "--out", small_ds, "--space", "other", check=True)
    ds = Dataset.open(small_ds, verify="full")
    assert sorted(ds.spaces) == ["default", "other"]
    np.testing.assert_array_equal(np.array(ds.space("other").vectors),
                                  np.load(tmp_path / "ok.npy"))


def test_recorder_snapshots_a_training_loop_and_leaves_the_model_alone(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                                torch.nn.Linear(16, 3))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    probe = torch.utils.data.TensorDataset(x[:200], y[:200])
    rec = Recorder(tmp_path / "run", probe, layers=["0", "3"])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    model[2].eval()  # a submodule frozen in eval stays so
    expect = []
    for step in range(3):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        with torch.no_grad():
            expect.append(model[0](x[:200]).numpy())
        rng_state = torch.get_rng_state()
        rec.snapshot(model, tag=f"step{step}")
        assert model.training and not model[2].training and model[0].training
        assert all(torch.equal(p.grad, gr) for p, gr in zip(model.parameters(), grads))
        assert torch.equal(torch.get_rng_state(), rng_state)
        opt.step()
    ds = Dataset.open(tmp_path / "run", verify="full")
    assert rec.spaces("0") == ["0@step0", "0@step1", "0@step2"]
    assert sorted(ds.spaces) == sorted(rec.spaces())
    assert ds.rows == 200 and "prediction@step2" in ds.meta.columns
    # Each snapshot holds what the model computed at that step, and the steps differ.
    for step in range(3):
        np.testing.assert_allclose(vectors(tmp_path / "run", f"0@step{step}"), expect[step],
                                   rtol=1e-5, atol=1e-6)
    assert not np.allclose(expect[0], expect[2])
    # The same tag again, now with other weights: refused, the recorded one is kept.
    with pytest.raises(InputError, match="already has space"):
        rec.snapshot(model, tag="step2")
    np.testing.assert_allclose(vectors(tmp_path / "run", "0@step2"), expect[2], rtol=1e-5,
                               atol=1e-6)
