"""The heavy stages on a real Dask cluster: one LocalCluster (2 worker processes on 127.0.0.1)
for the whole module, results checked against the single-process path on the same data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

pytest.importorskip("distributed")
torch = pytest.importorskip("torch")

import bigembed  # noqa: E402
from bigembed import Dataset, DatasetError  # noqa: E402
from bigembed.errors import InputError  # noqa: E402

USER_MODULE = textwrap.dedent('''
    """A model and data a user would write, importable on every worker ('cx_user:...')."""
    import os, time
    import torch
    import torch.nn as nn

    SLOW_FLAG = os.path.join(os.path.dirname(__file__), "SLOW")


    class Net(nn.Module):
        def __init__(self, fail_at=None):
            super().__init__()
            torch.manual_seed(0)
            self.embed = nn.Linear(6, 20)
            self.hidden = nn.Sequential(nn.ReLU(), nn.Linear(20, 12))
            self.head = nn.Linear(12, 3)
            self.fail_at, self.calls = fail_at, 0

        def forward(self, x):
            self.calls += 1
            if self.fail_at is not None and self.calls - 1 == self.fail_at:
                raise RuntimeError("boom")
            return self.head(self.hidden(self.embed(x)))


    def net():
        return Net()


    class Data(torch.utils.data.Dataset):
        """2,000 seeded rows with labels; slow while the SLOW file exists (to be killed)."""

        def __init__(self, n=2000):
            g = torch.Generator().manual_seed(1)
            self.x = torch.randn(n, 6, generator=g)
            self.y = torch.arange(n) % 3
            self.fingerprint = f"cx-data-{n}"

        def __len__(self):
            return len(self.x)

        def __getitems__(self, ids):
            if os.path.exists(SLOW_FLAG):
                time.sleep(0.25)
            return [(self.x[i], self.y[i]) for i in ids]

        def __getitem__(self, i):
            return self.x[i], self.y[i]


    def data():
        return Data()
''')

STATS_MODULE = textwrap.dedent('''
    """A group statistic's per-shard map and its reduction (numpy only: cheap on a worker)."""
    import numpy as np


    def label_sums(block, ids, *, labels, n_labels):
        lab = labels[ids]
        sums = np.zeros((n_labels, block.shape[1]))
        np.add.at(sums, lab, block.astype(np.float64))
        return sums, np.bincount(lab, minlength=n_labels)


    def add(a, b):
        return a[0] + b[0], a[1] + b[1]
''')

EXTRACT = dict(model="cx_user:net", data="cx_user:data", layers="embed,hidden",
               shard_rows=256, batch_size=64)


@pytest.fixture(scope="module")
def user_mod(tmp_path_factory):
    d = tmp_path_factory.mktemp("cxmods")
    (d / "cx_user.py").write_text(USER_MODULE)
    (d / "cx_stats.py").write_text(STATS_MODULE)
    sys.path.insert(0, str(d))  # before the workers start: they inherit the path
    yield d
    sys.path.remove(str(d))


@pytest.fixture(scope="module")
def client(user_mod):
    """The module's one LocalCluster (starting one costs seconds)."""
    from bigembed.distributed.cluster import connect

    import importlib

    c, local = connect("local:2")
    # The workers import torch and the extraction code while this process makes the
    # reference extraction (the first task would otherwise wait for it).
    warm = [c.submit(importlib.import_module, "bigembed.extract.run", workers=[w], pure=False)
            for w in c.scheduler_info()["workers"]]
    try:
        yield c
        del warm
    finally:
        c.close()
        local.close()


@pytest.fixture
def on_cluster(client):
    with bigembed.use_cluster(client):
        yield client


def vectors(path, space):
    return np.array(Dataset.open(path, verify="full").space(space).vectors)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, user_mod, client):
    """The single-process extraction every cluster run is compared with."""
    from bigembed.extract.run import extract

    out = tmp_path_factory.mktemp("ref") / "d"
    extract(out=out, **EXTRACT)
    ds = Dataset.open(out, verify="full")
    return {"embed": vectors(out, "embed"), "hidden": vectors(out, "hidden"),
            "meta": ds.meta, "path": out}


# --------------------------------------------------------------------------------------------


def test_extract_on_the_cluster_matches_one_process(tmp_path, on_cluster, reference):
    from bigembed.extract.run import extract

    r = extract(out=tmp_path / "d", **EXTRACT)
    assert r.rows == 2000 and r.shards == 8 and r.timings["workers"] == 2
    for space in ("embed", "hidden"):
        assert np.array_equal(vectors(tmp_path / "d", space), reference[space])
    meta = Dataset.open(tmp_path / "d").meta
    assert meta["id"].tolist() == list(range(2000))
    for col in ("label", "prediction", "confidence", "loss"):
        assert np.array_equal(meta[col].to_numpy(), reference["meta"][col].to_numpy()), col
    m = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert m["extract"]["status"] == "complete" and m["extract"]["summary"]["cluster"]
    # Every chunk came from a worker process, not from this one.
    assert not (tmp_path / "d" / "cache" / "extract").exists()


def test_a_killed_run_resumes_on_the_cluster(tmp_path, on_cluster, reference, user_mod):
    import cx_user

    from bigembed.extract.run import ExtractError, extract

    kw = {k: v for k, v in EXTRACT.items() if k != "model"}
    with bigembed.use_cluster(None), pytest.raises(ExtractError):
        extract(model=cx_user.Net(fail_at=13), out=tmp_path / "d", **kw)  # in this process
    m = json.loads((tmp_path / "d" / "manifest.json").read_text())
    done = len(m["extract"]["chunks"])
    assert 0 < done < 8
    r = extract(out=tmp_path / "d", **EXTRACT)  # same model by name: same weights, resumes
    assert r.rows_resumed == done * 256 and r.rows_computed == 2000 - done * 256
    assert np.array_equal(vectors(tmp_path / "d", "hidden"), reference["hidden"])


def test_a_worker_killed_mid_extraction_leaves_every_row_once(tmp_path, on_cluster,
                                                             reference, user_mod):
    from bigembed.extract.run import extract

    flag = user_mod / "SLOW"
    flag.touch()
    box: dict = {}

    def run():
        try:
            box["result"] = extract(out=tmp_path / "d", **EXTRACT)
        except BaseException as e:  # handed to the test thread
            box["error"] = e

    t = threading.Thread(target=run)
    t.start()
    pids = on_cluster.run(os.getpid)
    victim = None
    deadline = time.monotonic() + 60
    while victim is None and time.monotonic() < deadline:
        busy = [w for w, tasks in on_cluster.processing().items()
                if any("extract" in str(k) for k in tasks)]
        # Kill a worker in the middle of a chunk: some chunks done, this one running.
        if busy and (tmp_path / "d" / "spaces" / "embed").is_dir() and any(
                (tmp_path / "d" / "spaces" / "embed").iterdir()):
            victim = pids[busy[0]]
        else:
            time.sleep(0.05)
    assert victim is not None, "no chunk was ever seen running"
    os.kill(victim, signal.SIGKILL)
    flag.unlink()
    t.join(timeout=180)
    assert not t.is_alive()
    assert "error" not in box, box.get("error")
    assert victim not in on_cluster.run(os.getpid).values()
    ds = Dataset.open(tmp_path / "d", verify="full")
    assert ds.rows == 2000 and ds.meta["id"].tolist() == list(range(2000))
    starts = [s["start"] for s in ds.manifest["spaces"]["embed"]["shards"]]
    assert starts == list(range(0, 2000, 256))  # each chunk listed once, in order
    for space in ("embed", "hidden"):
        assert np.array_equal(vectors(tmp_path / "d", space), reference[space])
    assert np.array_equal(ds.meta["label"].to_numpy(), reference["meta"]["label"].to_numpy())
    on_cluster.wait_for_workers(2, timeout=120)  # the nanny restarts it: later tests see 2


def test_ingest_of_many_files_matches_one_process(tmp_path, client, monkeypatch, rng):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bigembed.dataset import format as fmt
    from bigembed.ingest.run import ingest

    monkeypatch.setattr(fmt, "SHARD_BYTES", 1024 * 16 * 4)  # 1,024-row shards of 16-d
    sizes = [1500, 700, 900]
    files, arrays = [], []
    for i, n in enumerate(sizes):  # Parquet with a metadata column, and the same as .npy
        x = rng.standard_normal((n, 16)).astype(np.float32)
        f = tmp_path / f"part{i}.parquet"
        pq.write_table(pa.table({"vec": pa.FixedSizeListArray.from_arrays(
            pa.array(x.reshape(-1)), 16), "tag": [f"t{i}-{j}" for j in range(n)]}), f,
            row_group_size=256)
        files.append(f)
        np.save(tmp_path / f"part{i}.npy", x)
        arrays.append(tmp_path / f"part{i}.npy")
    one = ingest(files, out=tmp_path / "one", column="vec")
    with bigembed.use_cluster(client):
        many = ingest(files, out=tmp_path / "many", column="vec")
    assert (many.rows, many.shards) == (one.rows, one.shards) == (3100, 4)
    a = Dataset.open(tmp_path / "one", verify="full")
    b = Dataset.open(tmp_path / "many", verify="full")
    sa, sb = a.manifest["spaces"]["default"], b.manifest["spaces"]["default"]
    assert [s["xxh3_64"] for s in sa["shards"]] == [s["xxh3_64"] for s in sb["shards"]]
    assert b.meta.equals(a.meta) and b.meta["tag"][1500] == "t1-0"
    # A second space (from .npy) on the existing dataset: one commit, the first untouched.
    with bigembed.use_cluster(client):
        ingest(arrays, out=tmp_path / "many", space="again")
    c = Dataset.open(tmp_path / "many", verify="full")
    assert np.array_equal(c.space("again").vectors, a.space("default").vectors)
    assert c.manifest["spaces"]["default"]["shards"] == sb["shards"]
    # NaN rows are refused, naming them, and nothing is added.
    bad = rng.standard_normal((700, 16)).astype(np.float32)
    bad[[5, 650]] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with bigembed.use_cluster(client), pytest.raises(InputError, match=r"2 of 3100 rows.*"
                                                     r"\[1505, 2150\]"):
        ingest([arrays[0], tmp_path / "bad.npy", arrays[2]], out=tmp_path / "many",
               space="bad")
    assert set(Dataset.open(tmp_path / "many").manifest["spaces"]) == {"default", "again"}


@pytest.fixture(scope="module")
def two_spaces(tmp_path_factory, reference):
    """A copy of the reference extraction (two spaces, labels, predictions)."""
    import shutil

    d = tmp_path_factory.mktemp("graphs") / "d"
    shutil.copytree(reference["path"], d)
    return d


def test_knn_graph_and_compare_on_the_cluster(two_spaces, client):
    from bigembed.compare.run import compare
    from bigembed.search.graph import knn_graph

    one = knn_graph(two_spaces, space="embed", k=10, method="exact")
    cmp_one = compare(two_spaces, a="embed", b="hidden", k=10, graph_method="exact")
    with bigembed.use_cluster(client):
        exact = knn_graph(two_spaces, space="embed", k=10, method="exact", force=True)
        ivf = knn_graph(two_spaces, space="embed", k=10, method="ivf", target_recall=0.9,
                        force=True)
        cmp = compare(two_spaces, a="embed", b="hidden", k=10, graph_method="exact",
                      force=True)
    assert np.array_equal(exact.indices, one.indices)
    assert np.array_equal(exact.distances, one.distances)
    # The approximate graph keeps the recall its index promises, checked here on every row.
    true = one.indices
    found = (ivf.indices[:, :, None] == true[:, None, :]).any(1).mean()
    assert ivf.record["recall"] >= 0.9 - 0.03 and found >= 0.9 - 0.03
    assert np.array_equal(cmp.overlap, cmp_one.overlap)
    assert cmp.summary == cmp_one.summary
    graphs = Dataset.open(two_spaces).path / "graphs"
    assert not [p for p in graphs.iterdir() if p.name.startswith(".")]  # staging removed


def test_rows_past_fit_rows_are_placed_by_the_workers(two_spaces, client):
    from bigembed.dataset.layouts import load_layout
    from bigembed.reduce.run import reduce

    kw = dict(space="hidden", method="tsne", fit_rows=300, n_epochs=100, quality=False)
    one = reduce(two_spaces, **kw)
    with bigembed.use_cluster(client):
        many = reduce(two_spaces, force=True, **kw)
    ds = Dataset.open(two_spaces)
    a = load_layout(ds, name=one.name).xy
    b = load_layout(ds, name=many.name).xy
    assert ds.manifest["layouts"][many.name]["fit"]["sampled"] is True
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)


def test_a_path_the_workers_cannot_see_is_refused_before_writing(tmp_path, on_cluster,
                                                                  two_spaces):
    from bigembed.extract.run import extract
    from bigembed.search.graph import knn_graph

    # /proc/self/fd/N names a directory only in the process holding descriptor N: this one.
    fd = os.open(tmp_path, os.O_RDONLY)
    hidden = os.dup2(fd, 977)
    os.close(fd)
    try:
        here = f"/proc/self/fd/{hidden}"
        with pytest.raises(DatasetError, match=r"not visible to (\d) of \1 cluster workers.*"
                                               r"shared filesystem"):
            extract(out=f"{here}/d", **EXTRACT)
        assert list(tmp_path.iterdir()) == []
        import shutil

        shutil.copytree(two_spaces, tmp_path / "ds")
        before = (tmp_path / "ds" / "manifest.json").read_bytes()
        with pytest.raises(DatasetError, match="not visible"):
            knn_graph(f"{here}/ds", space="embed", k=5, force=True)
        assert (tmp_path / "ds" / "manifest.json").read_bytes() == before
    finally:
        os.close(hidden)


def test_no_dask_without_a_cluster_and_a_clear_cli_error_for_a_dead_scheduler(small_ds):
    """One fresh process: a stage without --cluster imports no Dask; then the CLI with a
    scheduler address nobody answers at exits 2 with one line, having written nothing."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = textwrap.dedent(f"""
        import sys, bigembed
        from bigembed.search.graph import knn_graph
        from bigembed.commands.cli import main
        knn_graph({str(small_ds)!r}, k=5)
        print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))
        rc = main(["index", {str(small_ds)!r}, "--graph", "5", "--cluster",
                   "tcp://127.0.0.1:{port}"])
        rc2 = main(["reduce", {str(small_ds)!r}, "--cluster", "local:x"])
        print(rc, rc2)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=180, env=dict(os.environ, BIGEMBED_NO_PROGRESS="1",
                                             BIGEMBED_CLUSTER_TIMEOUT="2"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[:2] == ["[]", "2 2"]
    assert "Traceback" not in p.stderr, p.stderr
    for line in (f"bigembed index: error: --cluster tcp://127.0.0.1:{port}: no Dask scheduler "
                 f"answered", "Nothing was written",
                 "bigembed reduce: error: --cluster local:x: local:N needs N"):
        assert line in p.stderr, p.stderr
    assert not Dataset.open(small_ds).artifacts("indexes")


def test_map_shards_reduces_on_the_client_as_here(two_spaces, client):
    from cx_stats import add, label_sums

    from bigembed.distributed.shards import map_shards

    ds = Dataset.open(two_spaces)
    labels = ds.meta["label"].to_numpy().astype(np.int64)
    kw = dict(space="embed", fn=label_sums, combine=add, labels=labels, n_labels=3)
    here = map_shards(two_spaces, **kw)
    with bigembed.use_cluster(client):
        there = map_shards(two_spaces, **kw)
    x = ds.space("embed").vectors.astype(np.float64)
    want = np.stack([x[labels == c].sum(0) for c in range(3)])
    assert len(ds.manifest["spaces"]["embed"]["shards"]) == 8
    np.testing.assert_allclose(here[0], want, rtol=1e-12)
    assert np.array_equal(there[0], here[0]) and np.array_equal(there[1], np.bincount(labels))
